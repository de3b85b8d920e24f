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
