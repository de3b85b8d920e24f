"""`python -m pipeline predict` fails in one line: nothing listening, a missing photo, a bad --top-k."""
import socket

import pytest

from pipeline.__main__ import main
from tests.conftest import FASHION_DIR

IMAGE = str(FASHION_DIR / "images" / "15970.jpg")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("transport, where", [("--endpoint", "http://127.0.0.1:{}"), ("--grpc", "127.0.0.1:{}")])
def test_an_unreachable_endpoint_is_one_line(transport, where, capsys):
    address = where.format(_closed_port())
    code = main(["predict", transport, address, "--title", "Navy Shirt", "--image", IMAGE, "--timeout", "10"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: cannot reach") and "is the server running?" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "/nonexistent/shirt.jpg"], "image /nonexistent/shirt.jpg does not exist"),
        (["--image", IMAGE, "--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line(args, message, capsys):
    assert main(["predict", "--endpoint", "http://127.0.0.1:1", "--title", "Navy Shirt", *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _answering(monkeypatch, prediction):
    from serving import client

    monkeypatch.setattr(client.RestClient, "predict", lambda self, products: [prediction])


def test_extra_outputs_are_shown_when_the_model_has_them(monkeypatch, capsys):
    from common import features
    from serving.client import Prediction

    _answering(monkeypatch, Prediction(
        [("Shirts", 0.91), ("Tshirts", 0.05), ("Tops", 0.01)],
        {features.OUTPUT_NEEDS_REVIEW_KEY: False, features.OUTPUT_TEXT_WEIGHT_KEY: 0.7125,
         features.OUTPUT_LOGITS_KEY: [4.5, 1.25, 0.5], "embedding_norm": 3.0},
    ))
    assert main(["predict", "--endpoint", "http://127.0.0.1:1", "--title", "Navy Shirt", "--image", IMAGE, "--top-k", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Shirts   0.9100", "Tshirts  0.0500",
        "text_weight: 0.7125", "needs_review: no", "logits: 4.5000, 1.2500", "embedding_norm: 3.0000",
    ]


def test_a_model_with_classes_and_scores_only_prints_them(monkeypatch, capsys):
    from serving.client import Prediction

    _answering(monkeypatch, Prediction([("Watches", 0.99)]))
    assert main(["predict", "--endpoint", "http://127.0.0.1:1", "--title", "Watch", "--image", IMAGE]) == 0
    assert capsys.readouterr().out.splitlines() == ["Watches  0.9900", "(the model returns its top 1 classes)"]
