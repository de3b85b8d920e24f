"""A synthetic catalog of N products in K classes, for measuring how the pipeline scales.

Rows are drawn from the shared catalogs (../shared/data: fashion-products and hm-products), their photos
reused by absolute path. Each product gets a unique id and a class drawn from a Zipf distribution
(exponent --zipf; every class has at least one product, the rest follow the tail), and its title is
the source title followed by a class token (`c0042`), so that the text names the class as real titles
often do:

    .venv/bin/python scripts/scale_catalog.py --products 20000 --classes 5600 --out /tmp/scale-20k.csv

Columns: id, title, image, label. Written row by row: memory does not grow with N.
"""
from __future__ import annotations

import argparse
import csv
import pathlib

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"
# (catalog directory, its title column): the rows whose titles and photos are reused.
SOURCES = (("fashion-products", "title"), ("hm-products", "title"))
LABEL_COLUMN = "label"


def source_rows(shared: pathlib.Path = SHARED) -> list[tuple[str, str]]:
    """(title, absolute image path) of every row of the shared catalogs."""
    rows = []
    for name, title_column in SOURCES:
        catalog = shared / name / "products.csv"
        with open(catalog, newline="", encoding="utf-8") as f:
            rows += [(row[title_column], str(catalog.parent / row["image"])) for row in csv.DictReader(f)]
    if not rows:
        raise SystemExit(f"no rows in the shared catalogs under {shared}")
    return rows


def class_of_each(products: int, classes: int, zipf: float, rng: np.random.Generator) -> np.ndarray:
    """[products] class ids: each class once, the rest Zipf-distributed over the classes (class 0 the
    most frequent), shuffled."""
    if not 1 <= classes <= products:
        raise SystemExit(f"--classes must be in [1, --products], got {classes} for {products} products")
    weights = 1.0 / np.arange(1, classes + 1) ** zipf
    tail = rng.choice(classes, size=products - classes, p=weights / weights.sum())
    return rng.permutation(np.concatenate([np.arange(classes), tail]))


def write_catalog(path: pathlib.Path, products: int, classes: int, zipf: float = 1.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = source_rows()
    labels = class_of_each(products, classes, zipf, rng)
    picks = rng.integers(0, len(rows), size=products)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "title", "image", LABEL_COLUMN])
        for i, (label, pick) in enumerate(zip(labels, picks)):
            title, image = rows[pick]
            writer.writerow([f"p{i:08d}", f"{title} c{label:04d}", image, f"class-{label:04d}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--zipf", type=float, default=1.0, help="the class distribution's exponent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    write_catalog(args.out, args.products, args.classes, args.zipf, args.seed)
    print(f"{args.out}: {args.products} products, {args.classes} classes")


if __name__ == "__main__":
    main()
