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
