"""Shared fixtures: real data from ../shared, encoders built by the set-up command."""
import os
import pathlib

# tf-keras (Keras 2) must be chosen before the first `import tensorflow`: hub.KerasLayer,
# tf-models-official and TFT's transform layer are Keras 2 objects.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FASHION_DIR = SHARED_DATA / "fashion-products"
FASHION_CATALOG = FASHION_DIR / "products.csv"
PRETRAINED_DIR = pathlib.Path(os.environ.get("HANET_PRETRAINED_DIR", REPO_ROOT / "pretrained"))


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: run scripts/setup_encoders.sh first (see README)")
    return path


@pytest.fixture(scope="session")
def fashion_catalog() -> pathlib.Path:
    return _require(FASHION_CATALOG, "the fashion catalog of ../shared/data")


@pytest.fixture(scope="session")
def tiny_bert_handle() -> pathlib.Path:
    """A small random-init BERT in the TF-Hub encoder format, with the BERT uncased vocabulary."""
    return _require(PRETRAINED_DIR / "bert_tiny", "the tiny TF-Hub BERT encoder")


@pytest.fixture(scope="session")
def bert_vocab_file(tiny_bert_handle) -> pathlib.Path:
    return _require(tiny_bert_handle / "assets" / "vocab.txt", "the BERT uncased WordPiece vocabulary")


def write_small_catalog(path: pathlib.Path, n: int, extra_rows: list[dict] | None = None) -> pathlib.Path:
    """The first n products of the fashion catalog, images by absolute path, plus extra rows."""
    import csv

    with open(FASHION_CATALOG, newline="") as f:
        reader = csv.DictReader(f)
        rows = [row for _, row in zip(range(n), reader)]
    for row in rows:
        row["image"] = str(FASHION_DIR / row["image"])
    rows += extra_rows or []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def small_preprocessed(tmp_path_factory, bert_vocab_file):
    """48 real products (and 3 bad rows) through the real preprocess stage, once per test session."""
    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import preprocess
    from components.preprocess.transform import TransformOptions

    root = tmp_path_factory.mktemp("preprocessed")
    bad = [
        {"id": "900001", "title": "Ghost Shirt", "image": str(root / "absent.jpg"), "articleType": "Shirts"},
        {"id": "900002", "title": "   ", "image": str(FASHION_DIR / "images" / "15970.jpg"), "articleType": "Shirts"},
    ]
    catalog = write_small_catalog(root / "catalog.csv", 48, bad)
    with open(catalog) as f:
        first = f.readlines()[1]
    with open(catalog, "a") as f:
        f.write(first)  # the first product again: a duplicate id
    result = preprocess(
        catalog=str(catalog),
        columns=CatalogColumns(label="articleType"),
        options=TransformOptions(vocab_file=str(bert_vocab_file), max_seq_length=24, image_size=32),
        examples_dir=str(root / "examples"),
        transform_graph_dir=str(root / "transform_graph"),
        quarantine_file=str(root / "report" / "quarantine.jsonl"),
        metrics_file=str(root / "report" / "metrics.json"),
        # One process: for 51 rows, starting a worker per core costs more than it saves.
        beam_args=["--direct_running_mode=in_memory"],
    )
    return result
