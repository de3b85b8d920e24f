"""Throughput and peak memory of batch prediction vs a bare loop calling the same SavedModel.

Usage: .venv/bin/python scripts/bench_batch_predict.py --model MODEL_DIR [--scales 1,4] [--batch-size 64]
           [--repeats 1] [--skip-loop] [--beam-arg=--direct_running_mode=in_memory ...]

For each scale s, a catalog of s copies of the fashion catalog (copies get new ids, images stay where
they are, referenced by absolute path; written to a temporary directory) goes through
  - the job, run as a user runs it: `python -m pipeline predict-catalog --model M --catalog C --output O`
    (default runner: the DirectRunner, a worker thread per core), with --beam-arg options added, and
  - a bare loop in one process: read the catalog rows (catalog.read_rows), read each photo file, and
    call the model's serving_default on batches of --batch-size (title, image bytes), keeping nothing;
    no checks, no grouping by id, no output files, no counts.
Both run as child processes on the same cores, timed from launch to exit (interpreter start, imports
and model loading included); CPU time is that of the child and its descendants (user + system); peak
memory is the highest sum of resident memory over the child and its descendants, sampled every 0.1 s.
With --repeats, the runs alternate and the fastest of each is reported. The marginal line per command
is the rate between the smallest and the largest scale: products/s once started, fixed costs taken out.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchtools import REPO_ROOT, run_measured, write_scaled_catalog  # noqa: E402  (beside this script)

sys.path.insert(0, str(REPO_ROOT))

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-products" / "products.csv"
LABEL_COLUMN = "articleType"


def bare_loop(catalog: str, model_dir: str, batch_size: int) -> None:
    """The model called on batches of catalog products, as directly as it can be (a child process)."""
    import tensorflow as tf

    from common import features
    from components.preprocess.catalog import read_rows, resolve_image_uri

    model = tf.saved_model.load(model_dir)  # kept alive: its signature reads the model's variables
    signature = model.signatures[features.SERVING_SIGNATURE]
    titles, images, products = [], [], 0

    def call():
        answer = signature(**{features.TITLE_KEY: tf.constant(titles), features.IMAGE_BYTES_KEY: tf.constant(images)})
        for value in answer.values():
            value.numpy()

    for row in read_rows(catalog, lambda: open(catalog, "rb")):
        with open(resolve_image_uri(catalog, row.fields["image"]), "rb") as f:
            images.append(f.read())
        titles.append(row.fields["title"])
        if len(titles) == batch_size:
            call()
            products += len(titles)
            titles, images = [], []
    if titles:
        call()
        products += len(titles)
    print(json.dumps({"predicted": products}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a SavedModel directory, e.g. a pushed version")
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam-arg", action="append", default=[], help="extra Beam option for the job")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bare-loop", metavar="CATALOG", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.bare_loop:
        bare_loop(args.bare_loop, args.model, args.batch_size)
        return

    print(f"cores: {os.cpu_count()}, model {args.model}, batch size {args.batch_size}, "
          f"job options: {args.beam_arg or 'defaults'}, best of {args.repeats}", flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-batch-predict-"))
    best: dict[tuple[str, int], tuple[float, float, int]] = {}
    sizes = {}
    for scale in (int(s) for s in args.scales.split(",")):
        catalog = work / f"catalog-x{scale}.csv"
        rows = sizes[scale] = write_scaled_catalog(pathlib.Path(args.catalog), scale, catalog)
        for repeat in range(args.repeats):
            out = work / f"job-x{scale}-{repeat}"
            measured = run_measured([
                sys.executable, "-m", "pipeline", "predict-catalog", "--model", args.model, "--catalog",
                str(catalog), "--output", str(out), "--batch-size", str(args.batch_size), *args.beam_arg,
            ])
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["rows_in"] == rows == metrics["predicted"], metrics
            _report("batch prediction job", scale, rows, measured, best)
            if args.skip_loop:
                continue
            measured = run_measured([
                sys.executable, __file__, "--bare-loop", str(catalog), "--model", args.model,
                "--batch-size", str(args.batch_size),
            ])
            assert json.loads(measured[3].strip().splitlines()[-1])["predicted"] == rows
            _report("bare loop (1 process)", scale, rows, measured, best)
    print("best:")
    for (name, scale), (wall, cpu, peak) in best.items():
        print(f"  {name:24s} x{scale}: {sizes[scale]:6d} products {wall:7.1f} s {sizes[scale] / wall:7.1f} products/s "
              f"CPU {cpu:7.1f} s  peak memory {peak / 2**20:6.0f} MiB")
    for scale in sizes:
        job, loop = best.get(("batch prediction job", scale)), best.get(("bare loop (1 process)", scale))
        if job and loop:
            print(f"  x{scale}: the job's rate is {100 * loop[0] / job[0]:.0f} % of the bare loop's")
    low, high = min(sizes), max(sizes)
    if high > low:
        for name in dict.fromkeys(name for name, _ in best):
            extra_rows, extra_wall = sizes[high] - sizes[low], best[name, high][0] - best[name, low][0]
            extra_cpu = best[name, high][1] - best[name, low][1]
            print(f"  {name:24s} marginal x{low}→x{high}: {extra_rows / extra_wall:7.1f} products/s, "
                  f"{1000 * extra_cpu / extra_rows:.2f} CPU ms per product")
    print(f"outputs under {work}")


def _report(name, scale, rows, measured, best):
    wall, cpu, peak, _ = measured
    print(f"x{scale}: {rows} products  {name}: {wall:7.1f} s  {rows / wall:7.1f} products/s  CPU {cpu:7.1f} s  "
          f"peak memory {peak / 2**20:6.0f} MiB", flush=True)
    if (name, scale) not in best or wall < best[name, scale][0]:
        best[name, scale] = (wall, cpu, max(peak, best.get((name, scale), (0, 0, 0))[2]))


if __name__ == "__main__":
    main()
