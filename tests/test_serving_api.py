"""`python -m pipeline serve` as a user runs it, queried over REST and gRPC as TF Serving would be:
answers equal the SavedModel's own, TF Serving's JSON shapes and errors, new versions picked up."""
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from components.push import push
from pipeline.__main__ import main
from serving.client import ClientError, GrpcClient, RestClient
from tests.conftest import FASHION_DIR, REPO_ROOT
from common import features

WATCH = ("CASIO G-Shock Men Black Digital Watch G-7710-1DR G223", (FASHION_DIR / "images" / "17429.jpg"))
HANDBAG = ("Kiara Women Graphiti White Handbag", (FASHION_DIR / "images" / "21510.jpg"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _products():
    return [(title, path.read_bytes()) for title, path in (WATCH, HANDBAG)]


def _wait_for(predicate, what: str, server: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited ({server.returncode}) while waiting for {what}"
        try:
            if predicate():
                return
        except (requests.ConnectionError, ClientError):
            pass
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def endpoint(text_models, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving"))
    push(text_models["trained"], base)
    rest_port, grpc_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model-base", base, "--port", str(rest_port),
         "--grpc-port", str(grpc_port), "--poll-seconds", "0.2"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    url = f"http://127.0.0.1:{rest_port}"
    try:
        _wait_for(lambda: requests.get(f"{url}/v1/models/hanet", timeout=5).status_code == 200, "version 1", server)
        yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "base": base, "server": server}
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def in_process(text_models):
    """The same SavedModel called in this process: what every endpoint must answer."""
    signature = tf.saved_model.load(text_models["trained"]).signatures[features.SERVING_SIGNATURE]
    products = _products()
    out = signature(title=tf.constant([t for t, _ in products]), image_bytes=tf.constant([i for _, i in products]))
    return [c.decode() for c in out["classes"].numpy()[:, 0]], out["scores"].numpy()


def test_model_status_is_tf_servings_json(endpoint):
    response = requests.get(f"{endpoint['url']}/v1/models/hanet")
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    missing = requests.get(f"{endpoint['url']}/v1/models/other")
    assert missing.status_code == 404 and missing.json() == {"error": "Could not find any versions of model other"}


def test_metadata_lists_the_signatures_with_their_tensors(endpoint):
    document = requests.get(f"{endpoint['url']}/v1/models/hanet/metadata").json()
    assert document["model_spec"] == {"name": "hanet", "signature_name": "", "version": "1"}
    signatures = document["metadata"]["signature_def"]["signature_def"]
    assert {features.SERVING_SIGNATURE, features.TF_EXAMPLE_SIGNATURE, features.TRANSFORMED_SIGNATURE} <= set(signatures)
    serving = signatures[features.SERVING_SIGNATURE]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert {k: v["dtype"] for k, v in serving["inputs"].items()} == {"title": "DT_STRING", "image_bytes": "DT_STRING"}
    assert serving["inputs"]["title"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    # Classes and scores always; the model may answer more (logits, stream weights, needs_review).
    assert {features.OUTPUT_CLASSES_KEY, features.OUTPUT_SCORES_KEY} <= set(serving["outputs"])


def test_rest_predictions_equal_the_savedmodels_in_row_and_columnar_form(endpoint, in_process):
    classes, scores = in_process
    products = _products()
    encoded = [{"b64": base64.b64encode(image).decode()} for _, image in products]
    row = requests.post(
        f"{endpoint['url']}/v1/models/hanet:predict",
        json={"instances": [{"title": t, "image_bytes": e} for (t, _), e in zip(products, encoded)]},
    ).json()["predictions"]
    columnar = requests.post(
        f"{endpoint['url']}/v1/models/hanet/versions/1:predict",
        json={"signature_name": "serving_default", "inputs": {"title": [t for t, _ in products], "image_bytes": encoded}},
    ).json()["outputs"]
    assert [p["classes"][0] for p in row] == [c[0] for c in columnar["classes"]] == classes
    np.testing.assert_allclose([p["scores"] for p in row], scores, rtol=1e-6)
    np.testing.assert_allclose(columnar["scores"], scores, rtol=1e-6)
    assert classes == ["Watches", "Handbags"]  # the trained text model reads the titles


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("hanet:predict", b"{not json", 400, "JSON Parse error"),
        ("hanet:predict", b'{"instances": [{"title": "x"}]}', 400, "must only have keys: image_bytes,title"),
        ("hanet:predict", b'{"signature_name": "nope", "instances": [1]}', 400, 'Serving signature name: "nope" not found'),
        ("hanet:predict", b'{"instances": [{"title": ["x"], "image_bytes": "y"}]}', 400, "input 'title' has shape [1, 1], but the signature takes [-1]"),
        ("hanet/versions/9:predict", b'{"instances": [1]}', 404, "Servable not found for request: Specific(hanet, 9)"),
        ("hanet:classify", b'{"examples": []}', 501, ":predict only"),
    ],
)
def test_malformed_requests_get_tf_servings_status_and_a_message_naming_the_problem(endpoint, path, body, status, message):
    response = requests.post(f"{endpoint['url']}/v1/models/{path}", data=body)
    assert response.status_code == status
    assert message in response.json()["error"]


# Hostile requests are the client's fault, answered 400 / INVALID_ARGUMENT with a message
# about the input; none may surface a Python exception's class, which tells the client nothing it can fix.
PYTHON_ERRORS = ("KeyError", "MemoryError", "RecursionError", "UnicodeEncodeError", "DecodeError",
                 "ValueError", "Traceback", "internal error", "<class")
DEEP_TITLE = b'{"instances": [{"title": %s"Shirt"%s, "image_bytes": "x"}]}'


def _says_only_about_the_input(message: str, *expected) -> None:
    """`message` holds every one of `expected` (a tuple: any one of it) and no Python exception's name."""
    assert all(any(e in message for e in (x if isinstance(x, tuple) else (x,))) for x in expected), message
    assert not any(e in message for e in PYTHON_ERRORS), message


@pytest.mark.parametrize(
    "body, headers, message",
    [
        (b'{"instances": [{"title": "\\ud800", "image_bytes": "x"}]}', {}, "is not valid Unicode: a lone surrogate \\ud800"),
        (b"[" * 100_000, {}, "JSON Parse error: the document nests arrays or objects too deeply"),
        # Python's JSON reader gives up first (its recursion limit), or the tensor's rank check does.
        (DEEP_TITLE % (b"[" * 990, b"]" * 990), {}, ("nests arrays or objects too deeply", "lists nested 990 levels deep")),
        (DEEP_TITLE % (b"[" * 65, b"]" * 65), {}, "lists nested 65 levels deep, more than the 64 dimensions"),
        (b'{"instances": [{"title": "x", "image_bytes": "x", "n": ' + b"7" * 4301 + b"}]}", {},
         "JSON Parse error: a number has more than 4300 digits"),
        (b'{"instances": [{"title": "x", "image_bytes": "x"}]}', {"Content-Encoding": "gzip"},
         "the request body is not valid gzip data"),
        (b'{"instances": [{"title": "x", "image_bytes": "x"}]}', {"Content-Encoding": "br"},
         "Content-Encoding 'br' is not supported"),
        (b'{"instances": [' + b",".join([b'{"title": "x", "image_bytes": "x"}'] * 1001) + b"]}", {},
         "Task size 1001 is larger than maximum input batch size 1000"),
    ],
    ids=["lone-surrogate", "100000-brackets", "990-levels-in-title", "65-levels-in-title", "4301-digits",
         "gzip-header-plain-body", "unknown-encoding", "over-the-instance-cap"],
)
def test_hostile_rest_bodies_are_the_clients_fault(endpoint, body, headers, message):
    response = requests.post(f"{endpoint['url']}/v1/models/hanet:predict", data=body, headers=headers, timeout=60)
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("application/json")
    _says_only_about_the_input(response.json()["error"], message)


def test_a_gzip_body_is_read(endpoint):
    import gzip

    title, image = WATCH
    body = {"instances": [{"title": title, "image_bytes": {"b64": base64.b64encode(image.read_bytes()).decode()}}]}
    response = requests.post(f"{endpoint['url']}/v1/models/hanet:predict", data=gzip.compress(json.dumps(body).encode()),
                             headers={"Content-Encoding": "gzip"}, timeout=60)
    assert response.status_code == 200 and response.json()["predictions"][0]["classes"][0] == "Watches"


def _tensor(dtype, dims, **values):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


def _peak_memory_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


@pytest.mark.parametrize(
    "title, message",
    [
        (_tensor(types_pb2.DT_VARIANT, [1]), "input 'title' is DT_VARIANT, but the signature takes DT_STRING"),
        (_tensor(types_pb2.DT_RESOURCE, [1]), "input 'title' is DT_RESOURCE, but the signature takes DT_STRING"),
        (_tensor(types_pb2.DT_STRING, [10**13], string_val=[b"x"]), "Task size 10000000000000 is larger than maximum input batch size 1000"),
        (_tensor(types_pb2.DT_STRING, [1, 50_000_000], string_val=[b"x"]), "input 'title' has shape [1, 50000000], but the signature takes [-1]"),
        (_tensor(types_pb2.DT_STRING, [-5]), "input 'title' has shape [-5]: a dimension cannot be negative"),
        (_tensor(types_pb2.DT_STRING, [3], string_val=[b"a", b"b"]), "input 'title' has shape [3] (3 values), but holds 2 values"),
    ],
    ids=["DT_VARIANT", "DT_RESOURCE", "shape-1e13-one-value", "shape-1x5e7-one-value", "negative-dimension", "too-few-values"],
)
def test_hostile_grpc_tensors_are_refused_before_anything_is_allocated(endpoint, title, message):
    request = GrpcClient(endpoint["grpc"]).predict_request(_products()[:1])
    request.inputs["title"].CopyFrom(title)
    peak = _peak_memory_mb(endpoint["server"].pid)
    with grpc.insecure_channel(endpoint["grpc"]) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _says_only_about_the_input(raised.value.details(), message)
    assert _peak_memory_mb(endpoint["server"].pid) - peak < 50  # MB: nothing the size of the declared shape


def test_grpc_bytes_that_are_no_request_are_invalid_argument(endpoint):
    with grpc.insecure_channel(endpoint["grpc"]) as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as raised:
            predict(b"\xff\xff\xff\xff", timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _says_only_about_the_input(raised.value.details(), "does not parse", "tensorflow.serving.PredictRequest")


def test_grpc_predictions_equal_the_savedmodels(endpoint, in_process):
    classes, scores = in_process
    client = GrpcClient(endpoint["grpc"], "hanet")
    try:
        predictions = client.predict(_products())
        status = client.status()
    finally:
        client.close()
    assert [p.classes[0][0] for p in predictions] == classes
    np.testing.assert_allclose([[s for _, s in p.classes] for p in predictions], scores, rtol=1e-6)
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
    with pytest.raises(ClientError, match="NOT_FOUND: Servable not found for request: Latest\\(other\\)"):
        GrpcClient(endpoint["grpc"], "other").predict(_products())


@pytest.mark.parametrize("transport", ["--endpoint", "--grpc"])
def test_predict_command_prints_the_top_classes(endpoint, transport, capsys):
    where = endpoint["url"] if transport == "--endpoint" else endpoint["grpc"]
    title, image = WATCH
    assert main(["predict", transport, where, "--model-name", "hanet", "--title", title, "--image", str(image), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[0] == "Watches" and 0 < float(lines[0].split()[-1]) <= 1
    assert len(lines[1].split()) == 2  # the second class and its score
    # Then one "name: value" line per other output of the signature, whichever the model has.
    extras = dict(line.split(": ", 1) for line in lines[2:])
    assert set(extras) <= {features.OUTPUT_LOGITS_KEY, features.OUTPUT_TEXT_WEIGHT_KEY,
                           features.OUTPUT_IMAGE_WEIGHT_KEY, features.OUTPUT_NEEDS_REVIEW_KEY}
    if features.OUTPUT_LOGITS_KEY in extras:
        assert len(extras[features.OUTPUT_LOGITS_KEY].split(", ")) == 2  # one per class printed


def test_a_newly_pushed_version_is_served_once_loaded(endpoint, text_models):
    push(text_models["untrained"], endpoint["base"])
    rest = RestClient(endpoint["url"], "hanet")

    def version_2_serves():
        states = {s["version"]: s["state"] for s in rest.status()["model_version_status"]}
        return states.get("2") == "AVAILABLE" and states.get("1") == "END"

    _wait_for(version_2_serves, "version 2 to replace version 1", endpoint["server"])
    untrained = tf.saved_model.load(text_models["untrained"]).signatures[features.SERVING_SIGNATURE]
    title, image = WATCH
    expected = untrained(title=tf.constant([title]), image_bytes=tf.constant([image.read_bytes()]))
    (prediction,) = rest.predict([(title, image.read_bytes())])
    assert prediction.classes[0][0] == expected["classes"].numpy()[0, 0].decode() != "Watches"
    with pytest.raises(ClientError, match="404: Servable not found for request: Specific\\(hanet, 1\\)"):
        RestClient(endpoint["url"], "hanet", version=1).predict([(title, image.read_bytes())])


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving(endpoint, tmp_path):
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    push(str(broken), endpoint["base"])
    rest = RestClient(endpoint["url"], "hanet")

    def version_3_failed():
        return any(s["version"] == "3" and s["state"] == "END" for s in rest.status()["model_version_status"])

    _wait_for(version_3_failed, "version 3 to fail loading", endpoint["server"])
    status = {s["version"]: s for s in rest.status()["model_version_status"]}
    assert status["3"]["status"]["error_code"] != "OK" and status["3"]["status"]["error_message"]
    assert status["2"]["state"] == "AVAILABLE"
    title, image = WATCH
    assert rest.predict([(title, image.read_bytes())])  # still answered, by version 2


def test_removing_the_serving_version_rolls_back_to_the_newest_remaining_one(endpoint, text_models):
    # Versions 1 (trained), 2 (untrained, serving) and 3 (broken) are on disk: remove 3, then 2.
    rest = RestClient(endpoint["url"], "hanet")
    title, image = WATCH
    model_dir = os.path.join(endpoint["base"], "hanet")
    shutil.rmtree(os.path.join(model_dir, "3"))
    assert rest.predict([(title, image.read_bytes())])[0].classes[0][0] != "Watches"  # still version 2
    shutil.rmtree(os.path.join(model_dir, "2"))
    answers = []

    def version_1_serves():
        try:
            answers.append(rest.predict([(title, image.read_bytes())])[0].classes[0][0])
        except ClientError as e:
            answers.append(str(e))
        states = {s["version"]: s["state"] for s in rest.status()["model_version_status"]}
        return states.get("1") == "AVAILABLE" and states.get("2") == "END"

    _wait_for(version_1_serves, "version 1 to serve again", endpoint["server"], timeout=60)
    assert rest.predict([(title, image.read_bytes())])[0].classes[0][0] == "Watches"  # the trained version 1
    # Version 2 answered from memory until version 1 was loaded: no request failed meanwhile.
    assert not [a for a in answers if "Servable not found" in a or "answered" in a], answers


def test_serve_fails_in_one_line_when_its_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "serve", "--model-base", str(tmp_path), "--port", str(port), "--no-grpc"],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=300,
        )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot listen on 127.0.0.1") and "in use" in done.stderr
