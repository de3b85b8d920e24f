"""Hostile traffic against the real server (serve_async in this process, 127.0.0.1 only): each kind
of request an attacker sends cheaply, with the status it must get and a bound on the memory it may
leave behind; the queue's admission by instances; slow and surplus connections; version
directories that must not break the server. Loops are bounded, waits end on conditions."""
import argparse
import base64
import concurrent.futures
import gzip
import json
import os
import shutil
import socket
import threading
import time
import zlib

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import json_tensor, tensor_proto
from serving import server as server_module
from serving.client import GrpcClient
from serving.fair import FairWork, Pushback
from serving.limits import ServerLimits
from serving.servables import ServableManager, State
from tests import hostile_images
from tests.conftest import FASHION_DIR, SMALL_MODEL_IMAGE_SIZE
from tests.serving_helpers import Server, loaded_manager, wait_until
from trainer.export import _tf_example
from common import features

IMAGE = (FASHION_DIR / "images" / "17429.jpg").read_bytes()
TITLE = "CASIO G-Shock Men Black Digital Watch"
MEMORY_BOUND_MB = 100  # what any request, refused or answered, may leave behind in the server
SMALL_LIMITS = ServerLimits(max_body_bytes=2**20, header_timeout=0.5, body_timeout=1.0, max_connections=8,
                            inflate_ratio_after=2**18)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.fixture(scope="module")
def manager(text_models, tmp_path_factory):
    return loaded_manager(text_models["trained"], str(tmp_path_factory.mktemp("serving")))


@pytest.fixture(scope="module")
def served(manager):
    with Server(manager) as running:
        running.post([_instance()])  # the first call's lazy initialisation is not a request's cost
        yield running


@pytest.fixture(scope="module")
def strict(manager):
    """A server with small limits, so the body and connection attacks cost the test little."""
    with Server(manager, limits=SMALL_LIMITS) as running:
        yield running


def _instance(title: str = TITLE, image: bytes = IMAGE) -> dict:
    return {features.TITLE_KEY: title, features.IMAGE_BYTES_KEY: {"b64": base64.b64encode(image).decode()}}


def _nested(depth: int, leaf) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


# (row, body) → status and a part of the message. The memory bound holds for each.
REST_ROWS = [
    ("webp-bomb", {"instances": [_instance(image=hostile_images.webp_lossy())]}, 400,
     "image_bytes of instance 0 declares 16383x16383 pixels"),
    ("six-webp-bombs", {"instances": [_instance()] + [_instance(image=hostile_images.webp_lossy())] * 6}, 400,
     "image_bytes of instance 1 declares 16383x16383 pixels"),
    ("png-20000-squared", {"instances": [_instance(image=hostile_images.png())]}, 400,
     "declares 20000x20000 pixels"),
    *[(f"{name}-bomb", {"instances": [_instance(image=bomb)]}, 400, f"declares {w}x{h} pixels")
      for name, bomb, w, h in hostile_images.BOMBS],
    ("gif-frame-over-screen", {"instances": [_instance(image=hostile_images.gif_frames([(8000, 8000)]))]}, 400,
     "image_bytes of instance 0 is a GIF whose frames declare 64000000 pixels in all"),
    ("title-nested-64", {"instances": [{features.TITLE_KEY: _nested(64, "x"), features.IMAGE_BYTES_KEY: "x"}]}, 400,
     "instances stack to more than the 64 dimensions"),
    ("image-nested-64", {"instances": [{features.TITLE_KEY: "x", features.IMAGE_BYTES_KEY: _nested(64, {"b64": ""})}]},
     400, "instances stack to more than the 64 dimensions"),
    ("tf-example-0xff", {"signature_name": features.TF_EXAMPLE_SIGNATURE,
                         "instances": [{"b64": base64.b64encode(b"\xff\xff\xff").decode()}]}, 400,
     "record 0 is not a serialized tf.Example"),
]


@pytest.mark.parametrize("row, body, status, message", REST_ROWS, ids=[r[0] for r in REST_ROWS])
def test_a_hostile_rest_request_is_refused_and_leaves_no_memory_behind(served, row, body, status, message):
    before = _rss_mb()
    response = requests.post(served.url + ":predict", json=body, timeout=120)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert _rss_mb() - before < MEMORY_BOUND_MB
    assert served.post([_instance()]).status_code == 200  # and the server still answers


def test_an_image_the_graph_would_refuse_is_refused_before_it_waits_for_a_model_call(served, monkeypatch):
    servable = served.manager.servable(features.MODEL_NAME)
    calls = []
    run = servable.run
    monkeypatch.setattr(servable, "run", lambda *args: calls.append(args[0]) or run(*args))
    bomb = hostile_images.gif_frames([(8000, 8000)])
    response = served.post([_instance(), _instance(image=bomb)])
    assert response.status_code == 400
    assert "image_bytes of instance 1 is a GIF whose frames declare 64000000 pixels" in response.json()["error"]
    record = _tf_example(TITLE, hostile_images.webp_lossy())
    response = requests.post(served.url + ":predict", timeout=120, json={
        "signature_name": features.TF_EXAMPLE_SIGNATURE, "instances": [{"b64": base64.b64encode(record).decode()}]})
    assert response.status_code == 400 and "instance 0 declares 16383x16383 pixels" in response.json()["error"]
    assert calls == []
    assert served.post([_instance()]).status_code == 200 and calls == [features.SERVING_SIGNATURE]


def test_a_tf_example_with_byte_0xff_in_its_title_is_answered_or_refused_never_internal(served):
    record = _tf_example("Watch", IMAGE).replace(b"Watch", b"Watc\xff")  # a title that is not UTF-8
    response = requests.post(served.url + ":predict", timeout=120, json={
        "signature_name": features.TF_EXAMPLE_SIGNATURE, "instances": [{"b64": base64.b64encode(record).decode()}]})
    assert response.status_code in (200, 400), response.text


@pytest.mark.parametrize("key, value", [(features.INPUT_WORD_IDS_KEY, 2**32 + 101), (features.INPUT_WORD_IDS_KEY, 2**40 + 101)])
def test_transformed_ids_beyond_int32_are_refused_not_wrapped(served, key, value):
    signature = served.manager.servable(features.MODEL_NAME).input_specs(features.TRANSFORMED_SIGNATURE)
    length = signature[features.INPUT_WORD_IDS_KEY].shape[1]
    instance = {k: [1] + [0] * (length - 1) for k in features.BERT_INPUT_KEYS}
    instance[features.INPUT_TYPE_IDS_KEY] = [0] * length
    instance[features.IMAGE_KEY] = {"b64": base64.b64encode(hostile_images.small("JPEG", SMALL_MODEL_IMAGE_SIZE)).decode()}
    body = {"signature_name": features.TRANSFORMED_SIGNATURE, "instances": [instance]}
    assert requests.post(served.url + ":predict", json=body, timeout=120).status_code == 200
    instance[key] = [101, value] + [0] * (length - 2)
    response = requests.post(served.url + ":predict", json=body, timeout=120)
    assert response.status_code == 400 and f"{key} of instance 0 holds an id outside" in response.json()["error"]


def test_a_jpeg_bomb_as_a_transformed_image_is_refused_undecoded(served):
    signature = served.manager.servable(features.MODEL_NAME).input_specs(features.TRANSFORMED_SIGNATURE)
    length = signature[features.INPUT_WORD_IDS_KEY].shape[1]
    instance = {k: [0] * length for k in features.BERT_INPUT_KEYS}
    instance[features.IMAGE_KEY] = {"b64": base64.b64encode(hostile_images.jpeg()).decode()}
    body = {"signature_name": features.TRANSFORMED_SIGNATURE, "instances": [instance]}
    response = requests.post(served.url + ":predict", json=body, timeout=120)
    assert response.status_code == 400 and "declares 60000x60000 pixels" in response.json()["error"]


@pytest.mark.parametrize("version", ["\u0661", "\uff11", "1\u0661"])
def test_versions_in_non_ascii_digits_are_no_versions(served, version):
    for method, path in (("POST", f"/versions/{version}:predict"), ("GET", f"/versions/{version}"),
                         ("GET", f"/versions/{version}/metadata")):
        response = requests.request(method, served.url + path, json={"instances": [_instance()]}, timeout=60)
        assert response.status_code in (400, 404), (path, response.text)
        assert "Malformed request" in response.json()["error"]


@pytest.mark.parametrize("method, request_type", [
    ("/tensorflow.serving.PredictionService/Classify", classification_pb2.ClassificationRequest),
    ("/tensorflow.serving.PredictionService/Regress", regression_pb2.RegressionRequest),
    ("/tensorflow.serving.PredictionService/MultiInference", inference_pb2.MultiInferenceRequest),
    ("/tensorflow.serving.ModelService/HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest),
])
def test_grpc_methods_this_server_lacks_are_unimplemented(served, method, request_type):
    with grpc.insecure_channel(served.grpc) as channel:
        call = channel.unary_unary(method, request_serializer=request_type.SerializeToString,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as raised:
            call(request_type(), timeout=30)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_bombs_are_invalid_argument(served):
    stub = GrpcClient(served.grpc)._predictions
    request = GrpcClient("unused").predict_request([(TITLE, IMAGE), (TITLE, hostile_images.webp_lossy())])
    before = _rss_mb()
    with pytest.raises(grpc.RpcError) as raised:
        stub.Predict(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image_bytes of instance 1 declares 16383x16383" in raised.value.details()
    assert _rss_mb() - before < MEMORY_BOUND_MB


# The queue, by instances.


def _repeated_request(count: int) -> predict_pb2.PredictRequest:
    """A [count] request of one repeated product, a few kilobytes (TensorProto's last value repeats)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = features.MODEL_NAME
    for key, value in ((features.TITLE_KEY, TITLE.encode()), (features.IMAGE_BYTES_KEY, IMAGE)):
        tensor = request.inputs[key]
        tensor.dtype = types_pb2.DT_STRING
        tensor.tensor_shape.dim.add(size=count)
        tensor.string_val.append(value)
    return request


@pytest.fixture
def held(manager, monkeypatch):
    """Every model call waits until the test sets the event (then runs the real model)."""
    servable = manager.servable(features.MODEL_NAME)
    run, release = servable.run, threading.Event()

    def wait_then_run(signature, inputs):
        release.wait(120)
        return run(signature, inputs)

    monkeypatch.setattr(servable, "run", wait_then_run)
    yield release
    release.set()


def test_large_requests_cannot_lock_single_products_out(manager, held, monkeypatch):
    servable = manager.servable(features.MODEL_NAME)
    checked, check = [], servable.check_images
    monkeypatch.setattr(servable, "check_images",
                        lambda signature, inputs: checked.append(len(inputs[features.TITLE_KEY])) or check(signature, inputs))
    expanded, to_array = [], tensor_proto.to_array
    monkeypatch.setattr(tensor_proto, "to_array",
                        lambda name, proto, *args: expanded.append(proto.tensor_shape.dim[0].size) or to_array(name, proto, *args))
    with Server(manager, num_batch_threads=1) as busy:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(busy.grpc))
        large = [stub.Predict.future(_repeated_request(1000), timeout=120)]
        wait_until(lambda: busy.scheduler.waiting_instances(split=True) > 0, "the first large request to queue")
        large += [stub.Predict.future(_repeated_request(1000), timeout=120) for _ in range(9)]
        wait_until(lambda: sum(f.done() for f in large) == 9, "nine large requests to be answered")
        refused = [f for f in large if f.done()]
        assert all(f.exception().code() == grpc.StatusCode.UNAVAILABLE for f in refused)
        assert "max_enqueued_instances 1000" in refused[0].exception().details()
        # The admitted request's headers are checked a piece at a time, as each piece's call runs (held
        # here: one so far); the refused ones' never.
        wait_until(lambda: checked, "the first piece's headers to be checked")
        assert checked == [busy.scheduler.options.max_execution_batch_size]
        assert expanded == [1000, 1000]  # the refused requests' inputs were never expanded: only the admitted one's two
        singles = [stub.Predict.future(_repeated_request(1), timeout=120) for _ in range(20)]
        wait_until(lambda: busy.scheduler.waiting_instances(split=False) == 20, "the singles to queue")
        held.set()
        assert all(f.result().outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1 for f in singles)
        for future in large:
            future.cancel()


def test_a_full_queues_refusal_is_held_so_a_retrying_client_waits_and_past_the_cap_refusals_come_at_once(
        manager, held, monkeypatch):
    made = []  # the server's Pushback, to see what it holds
    monkeypatch.setattr(server_module, "refusal_pushback",
                        lambda limits: made.append(Pushback(limits.refusal_delay, limits.max_held_refusals)) or made[-1])
    with Server(manager, limits=ServerLimits(refusal_delay=600, max_held_refusals=1), num_batch_threads=1) as busy:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(busy.grpc))
        large = stub.Predict.future(_repeated_request(1000), timeout=120)
        wait_until(lambda: busy.scheduler.waiting_instances(split=True) > 0, "the large request to queue")
        retried = stub.Predict.future(_repeated_request(1000), timeout=120)
        wait_until(lambda: made[0].held == 1, "the refusal to be held")
        over = busy.post([_instance()] * 1000)  # REST too; the one place is taken, so at once
        assert over.status_code == 503 and "max_enqueued_instances 1000" in over.json()["error"]
        assert made[0].at_once == 1 and not retried.done()
        retried.cancel()  # the client gives up: its held refusal is forgotten
        wait_until(lambda: made[0].held == 0, "the cancelled refusal to be dropped")
        held.set()
        large.cancel()


def test_headers_are_checked_on_the_batch_thread_without_batching_and_before_the_queue_with_it(manager, monkeypatch):
    servable = manager.servable(features.MODEL_NAME)
    threads, check = [], servable.check_images
    monkeypatch.setattr(servable, "check_images",
                        lambda signature, inputs: threads.append(threading.current_thread().name) or check(signature, inputs))
    for batching in (False, True):
        with Server(manager, num_batch_threads=1, enable_batching=batching) as running:
            assert running.post([_instance()]).status_code == 200
    # Without batching a check before the queue waited for another client's whole model call on a
    # one-core server; with batching, unchecked requests filled every call (server.py, _queued_call).
    assert [name.startswith("batch") for name in threads] == [True, False]


def test_without_batching_200_concurrent_singles_are_queued_and_answered(manager):
    with Server(manager) as plain:
        assert not plain.scheduler.options.enable_batching
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(plain.grpc))
        futures = [stub.Predict.future(_repeated_request(1), timeout=600) for _ in range(200)]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert codes == [grpc.StatusCode.OK] * 200


def test_up_to_the_bound_concurrent_singles_are_queued_and_answered_and_over_it_refused(manager, held):
    with Server(manager, num_batch_threads=1, max_enqueued_instances=200) as bounded:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(bounded.grpc))
        futures = [stub.Predict.future(_repeated_request(1), timeout=600) for _ in range(206)]
        wait_until(lambda: sum(f.done() for f in futures) == 5, "the requests over the bound to be refused")
        assert all(f.exception().code() == grpc.StatusCode.UNAVAILABLE for f in futures if f.done())
        held.set()
        assert sum(f.exception() is None for f in futures) == 201  # one running, 200 queued


def test_a_burst_of_one_client_is_parsed_a_few_at_a_time_while_another_client_is_parsed(manager, monkeypatch):
    servable = manager.servable(features.MODEL_NAME)
    check, release, lock = servable.check_inputs, threading.Event(), threading.Lock()
    parsing, most, parsed = [0], [0], []

    def held_check(signature, inputs):  # the flood's parsing waits for the test; the other client's does not
        title = inputs[features.TITLE_KEY][0]
        if title == b"flood":
            with lock:
                parsing[0] += 1
                most[0] = max(most[0], parsing[0])
            release.wait(120)
            with lock:
                parsing[0] -= 1
        parsed.append(title)
        return check(signature, inputs)

    monkeypatch.setattr(servable, "check_inputs", held_check)

    def request(title: bytes) -> predict_pb2.PredictRequest:
        single = _repeated_request(1)
        single.inputs[features.TITLE_KEY].string_val[0] = title
        return single

    limits = ServerLimits(max_parsing_per_client=2)
    with Server(manager, limits=limits, num_batch_threads=1) as gated:
        flood = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(gated.grpc))
        # A connection of its own (channels to one target share one by default): another client.
        other = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(gated.grpc, options=[("grpc.use_local_subchannel_pool", 1)]))
        floods = [flood.Predict.future(request(b"flood"), timeout=120) for _ in range(20)]
        wait_until(lambda: parsing[0] == 2, "two of the flood to be parsed")
        answer = other.Predict(request(b"other"), timeout=120)  # parsed while the flood's two are held
        assert parsed == [b"other"] and most[0] == 2
        release.set()
        assert all(f.result().outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1 for f in floods)
    assert answer.outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1
    assert most[0] == 2 and len(parsed) == 21


@pytest.fixture
def one_slot(monkeypatch):
    """The servers started in the test share their work outside the model one job at a time (the
    clients' turns then show in the order jobs run): the FairWork of each, in a list."""
    made = []

    def request_work(executor, limits):
        made.append(FairWork(executor, slots=1, per_client=1))
        return made[-1]

    monkeypatch.setattr(server_module, "request_work", request_work)
    return made


def test_a_good_clients_request_is_parsed_within_one_round_of_a_flood_and_checked_once(manager, monkeypatch, one_slot):
    servable = manager.servable(features.MODEL_NAME)
    check_inputs, check_images = servable.check_inputs, servable.check_images
    jobs, held, release = [], threading.Event(), threading.Event()

    def logged_inputs(signature, inputs):  # the parse job's last step; the flood's first waits for the test
        jobs.append(("parse", inputs[features.TITLE_KEY][0]))
        if len(jobs) == 1:
            held.set()
            release.wait(120)
        return check_inputs(signature, inputs)

    def logged_images(signature, inputs):
        jobs.append(("check", inputs[features.TITLE_KEY][0]))
        return check_images(signature, inputs)

    monkeypatch.setattr(servable, "check_inputs", logged_inputs)
    monkeypatch.setattr(servable, "check_images", logged_images)

    def request(title: bytes) -> predict_pb2.PredictRequest:
        single = _repeated_request(1)
        single.inputs[features.TITLE_KEY].string_val[0] = title
        return single

    with Server(manager, num_batch_threads=1) as fair_server:
        (work,) = one_slot
        flood = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(fair_server.grpc))
        other = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(fair_server.grpc, options=[("grpc.use_local_subchannel_pool", 1)]))
        floods = [flood.Predict.future(request(b"flood"), timeout=120) for _ in range(30)]
        wait_until(lambda: held.is_set() and work.waiting() == 29, "the flood's first parse to hold, 29 to wait")
        answer = other.Predict.future(request(b"other"), timeout=120)
        wait_until(lambda: work.waiting() == 30, "the other client's request to wait its turn")
        release.set()
        assert answer.result().outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1
        assert all(f.result().outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1 for f in floods)
    # The other client (one job waiting) goes before the flood (29): its parse is the next job; in
    # arrival order it would have come after the flood's 29 parses. Headers are checked on the batch
    # thread as each request's model call runs, once a request.
    parses = [job for job in jobs if job[0] == "parse"]
    assert parses[:3] == [("parse", b"flood"), ("parse", b"other"), ("parse", b"flood")]
    assert len(parses) == 31 and sorted(title for kind, title in jobs if kind == "check") == [b"flood"] * 30 + [b"other"]


def test_a_gzip_body_is_inflated_in_steps_that_take_turns_with_other_clients(manager, monkeypatch, one_slot):
    jobs, held, release = [], threading.Event(), threading.Event()
    step, parse = server_module._Inflater.step, json_tensor.parse_request

    def logged_step(inflater, data):
        jobs.append("inflate")
        if len(jobs) == 1:
            held.set()
            release.wait(120)
        return step(inflater, data)

    monkeypatch.setattr(server_module._Inflater, "step", logged_step)
    monkeypatch.setattr(json_tensor, "parse_request", lambda body: jobs.append("parse") or parse(body))
    words = [f"word{i}" for i in range(5000)]
    title = " ".join(words[(i * 7919) % len(words)] for i in range(80_000))  # 0.7 MB, compresses about 4:1
    body = gzip.compress(json.dumps({"instances": [_instance(title=title)]}).encode())
    limits = ServerLimits(max_body_bytes=2**21, inflate_ratio_after=2**18)
    with Server(manager, limits=limits) as small, concurrent.futures.ThreadPoolExecutor(2) as clients:
        (work,) = one_slot
        zipped = clients.submit(requests.post, small.url + ":predict", data=body,
                                headers={"Content-Encoding": "gzip"}, timeout=120)
        wait_until(held.is_set, "the body's first inflating step to hold")
        plain = clients.submit(requests.post, small.url + ":predict", data=_PLAIN, timeout=120)
        wait_until(lambda: work.waiting() == 1, "the other client's parse to wait its turn")
        release.set()
        assert plain.result().status_code == 200
        assert zipped.result().status_code == 200, zipped.text
    # 256 KiB a step, each a turn: the other client's parse went between the body's first two.
    assert jobs[:3] == ["inflate", "parse", "inflate"] and jobs.count("inflate") >= 3


def test_a_rest_request_is_refused_before_its_body_is_read_when_no_request_fits_the_queue(manager, held):
    with Server(manager, num_batch_threads=1, max_enqueued_instances=1) as full:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(full.grpc))
        running = stub.Predict.future(_repeated_request(1), timeout=120)
        wait_until(lambda: full.scheduler.batches_started == 1, "the first single to run")
        waiting = [stub.Predict.future(_repeated_request(count), timeout=120) for count in (1, 1000)]
        wait_until(lambda: full.scheduler.waiting_instances(split=False) == 1
                   and full.scheduler.waiting_instances(split=True) == 1000, "both pools to fill")
        # Headers only: the answer comes without the body, which would otherwise be awaited (60 s).
        answer = _raw_http(full.rest_port, _post_head(full.rest_port, 1000))
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"no request fits in it now" in answer and b"Connection: close" in answer
        held.set()
        assert all(f.result().outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1
                   for f in (running, waiting[0]))
        waiting[1].cancel()


def test_a_rest_body_of_1000_instances_is_refused_by_their_count_before_they_are_decoded(manager, held, monkeypatch):
    decoded, request_tensors = [], json_tensor.request_tensors
    monkeypatch.setattr(json_tensor, "request_tensors",
                        lambda document, dtypes: decoded.append(len(document.get("instances", ()))) or request_tensors(document, dtypes))
    with Server(manager, num_batch_threads=1) as busy:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(busy.grpc))
        large = stub.Predict.future(_repeated_request(1000), timeout=120)
        wait_until(lambda: busy.scheduler.waiting_instances(split=True) > 0, "the large gRPC request to queue")
        response = busy.post([_instance()] * 1000)
        assert response.status_code == 503 and "max_enqueued_instances 1000" in response.json()["error"]
        assert decoded == []  # counted in the parsed JSON, never base64-decoded into arrays
        with concurrent.futures.ThreadPoolExecutor(1) as client:
            single = client.submit(busy.post, [_instance()])  # a single still fits its own pool
            wait_until(lambda: busy.scheduler.waiting_instances(split=False) == 1, "the single to queue")
            held.set()
            assert single.result().status_code == 200
        assert large.result().outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim[0].size == 1000
    assert decoded == [1]


def test_the_queue_bound_and_the_jobs_per_client_are_flags_of_serve(monkeypatch, tmp_path):
    from pipeline import cli
    from pipeline import serve as serve_command
    from serving import server

    started = {}
    monkeypatch.setattr(server, "serve", lambda manager, **options: started.update(options))
    parser = argparse.ArgumentParser()
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model-base", str(tmp_path), "--max-enqueued-instances", "200",
                              "--max-parsing-per-client", "3", "--refusal-delay", "0", "--max-held-refusals", "5"])
    args.func(args)
    assert started["batching"].instance_capacity == 200
    assert started["limits"].max_parsing_per_client == 3
    assert (started["limits"].refusal_delay, started["limits"].max_held_refusals) == (0, 5)
    args = parser.parse_args(["serve", "--model-base", str(tmp_path), "--refusal-delay", "-1"])
    with pytest.raises(cli.UserError, match="^refusal_delay must be at least 0, got -1.0$"):
        args.func(args)
    args = parser.parse_args(["serve", "--model-base", str(tmp_path), "--max-parsing-per-client", "0"])
    with pytest.raises(cli.UserError, match="^max_parsing_per_client must be positive, got 0$"):
        args.func(args)


# Bodies: bounded before parsing.


def _raw_http(port: int, head: bytes, body: bytes = b"", wait_for_answer: float = 30) -> bytes:
    """Sends `head` (and `body`) on a new connection; what the server answers until it closes or pauses."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_for_answer) as s:
        s.sendall(head + body)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and b"Content-Length" in data:
                    length = int(data.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    if len(data.split(b"\r\n\r\n", 1)[1]) >= length:
                        break
        except (socket.timeout, ConnectionResetError):
            pass
        return data


def _post_head(port: int, length: int, extra: str = "") -> bytes:
    return (f"POST /v1/models/hanet:predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


def test_a_body_declared_over_the_limit_is_refused_unread(strict):
    answer = _raw_http(strict.rest_port, _post_head(strict.rest_port, 300 * 2**20))
    assert answer.startswith(b"HTTP/1.1 413") and b"Content-Length" in answer


def test_expect_100_continue_over_the_limit_gets_413_and_no_continue(strict):
    answer = _raw_http(strict.rest_port, _post_head(strict.rest_port, 2**30, "Expect: 100-continue\r\n"))
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
    other = _raw_http(strict.rest_port, _post_head(strict.rest_port, 10, "Expect: something-else\r\n"))
    assert other.startswith(b"HTTP/1.1 417")
    body = json.dumps({"instances": [_instance()]}).encode()
    accepted = _raw_http(strict.rest_port, _post_head(strict.rest_port, len(body), "Expect: 100-continue\r\n"), body)
    assert accepted.startswith(b"HTTP/1.1 100 Continue") and b"HTTP/1.1 200" in accepted


def test_a_chunked_body_over_the_limit_is_refused_at_the_limit(strict):
    chunk = b"x" * 65536
    response = requests.post(strict.url + ":predict", data=iter([chunk] * 64), timeout=60)  # 4 MiB, chunked
    assert response.status_code == 413 and "larger than 1048576 bytes" in response.json()["error"]


def _compress(data: bytes, encoding: str) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _post_encoded(strict, body: bytes, encoding: str) -> requests.Response:
    return requests.post(strict.url + ":predict", data=body, headers={"Content-Encoding": encoding}, timeout=60)


def _still_answers_gzip(strict) -> None:
    small = gzip.compress(json.dumps({"instances": [_instance()]}).encode())
    assert _post_encoded(strict, small, "gzip").status_code == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_refused_by_its_ratio_after_its_first_bytes(strict, encoding):
    bomb = _compress(b'{"instances": ["' + b"a" * (200 * 2**20) + b'"]}', encoding)
    assert len(bomb) < 2**20  # within the body limit as sent
    before = _rss_mb()
    response = _post_encoded(strict, bomb, encoding)
    assert response.status_code == 413
    assert "inflates more than 100 times its compressed size" in response.json()["error"]
    assert _rss_mb() - before < MEMORY_BOUND_MB
    _still_answers_gzip(strict)


def test_a_body_that_inflates_past_the_limit_within_the_ratio_is_refused_at_the_limit(strict):
    words = [f"word{i}" for i in range(5000)]
    text = " ".join(words[(i * 7919) % len(words)] for i in range(200_000)).encode()  # 1.7 MB, compresses 4:1
    body = gzip.compress(b'{"instances": ["' + text + b'"]}')
    assert len(body) < 2**20 and len(text) > 1.5 * 2**20
    response = _post_encoded(strict, body, "gzip")
    assert response.status_code == 413 and "inflates to more than 1048576 bytes" in response.json()["error"]


def test_concatenated_gzip_members_are_one_body(strict):
    document = json.dumps({"instances": [_instance()]}).encode()
    members = b"".join(gzip.compress(document[i:i + 1000]) for i in range(0, len(document), 1000))
    answered = _post_encoded(strict, members, "gzip")
    assert answered.status_code == 200
    assert answered.json() == requests.post(strict.url + ":predict", data=document, timeout=60).json()


_PLAIN = json.dumps({"instances": [_instance()]}).encode()
# (case, body, Content-Encoding) → 400 and a part of the message.
BAD_ENCODINGS = [
    ("gzip-truncated", gzip.compress(_PLAIN)[:-100], "gzip", "truncated gzip data"),
    ("deflate-truncated", _compress(_PLAIN, "deflate")[:len(_compress(_PLAIN, "deflate")) // 2], "deflate",
     "truncated deflate data"),
    ("plain-as-gzip", _PLAIN, "gzip", "not valid gzip data"),
    ("gzip-as-deflate", gzip.compress(_PLAIN), "deflate", "not valid deflate data"),
    ("deflate-then-bytes", _compress(_PLAIN, "deflate") + b"more", "deflate", "4 bytes follow the end"),
    ("gzip-then-garbage", gzip.compress(_PLAIN) + b"garbage!" * 4, "gzip", "not valid gzip data"),
    ("brotli", _PLAIN, "br", "Content-Encoding 'br' is not supported"),
    ("two-codings", gzip.compress(gzip.compress(_PLAIN)), "gzip, gzip", "is not supported"),
]


@pytest.mark.parametrize("case, body, encoding, message", BAD_ENCODINGS, ids=[c[0] for c in BAD_ENCODINGS])
def test_a_body_not_in_its_content_encoding_is_refused(strict, case, body, encoding, message):
    before = _rss_mb()
    response = _post_encoded(strict, body, encoding)
    assert response.status_code == 400 and message in response.json()["error"]
    assert _rss_mb() - before < MEMORY_BOUND_MB


def test_a_client_gone_midway_through_a_compressed_body_leaves_nothing_behind(strict):
    bomb = _compress(b'{"instances": ["' + b"a" * (100 * 2**20) + b'"]}', "gzip")
    before = _rss_mb()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", strict.rest_port)) as s:
            s.sendall(_post_head(strict.rest_port, len(bomb), "Content-Encoding: gzip\r\n") + bomb[:len(bomb) // 2])
    _still_answers_gzip(strict)
    assert _rss_mb() - before < MEMORY_BOUND_MB


# Connections: slow clients and too many of them.


def _closed_by_server(s: socket.socket, timeout: float = 30) -> bool:
    """Whether the server closes the connection (reading nothing more from it) before `timeout`."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("sent", [b"", b"POST /v1/models/hanet:predict HTTP/1.1\r\nHost: x\r\n"],
                         ids=["idle", "slow-headers"])
def test_a_client_that_does_not_send_its_headers_in_time_is_disconnected(strict, sent):
    with socket.create_connection(("127.0.0.1", strict.rest_port)) as s:
        s.sendall(sent)
        assert _closed_by_server(s)


def test_a_client_that_does_not_send_its_body_in_time_gets_408(strict):
    with socket.create_connection(("127.0.0.1", strict.rest_port)) as s:
        s.sendall(_post_head(strict.rest_port, 1000) + b'{"instances": [')
        s.settimeout(30)
        assert s.recv(65536).startswith(b"HTTP/1.1 408")


def test_connections_over_the_cap_are_closed_at_once_and_the_cap_frees_as_they_go(strict):
    opened = [socket.create_connection(("127.0.0.1", strict.rest_port)) for _ in range(SMALL_LIMITS.max_connections)]
    try:
        with socket.create_connection(("127.0.0.1", strict.rest_port)) as surplus:
            assert _closed_by_server(surplus, timeout=SMALL_LIMITS.header_timeout / 2)
    finally:
        for s in opened:
            s.close()
    wait_until(lambda: requests.get(strict.url, timeout=5).status_code == 200, "a connection to be admitted again")


# Versions on disk.


def _copy_version(model_dir: str, base: str, name: str, variables: bool = True) -> str:
    target = os.path.join(base, name)
    shutil.copytree(model_dir, target, ignore=None if variables else shutil.ignore_patterns("variables"))
    return target


def _status(manager: ServableManager) -> dict:
    return {s.version: (s.state, s.status.error_message) for s in manager.status(features.MODEL_NAME).model_version_status}


def test_only_ascii_digit_names_that_fit_int64_are_versions_and_007_is_read_from_007(text_models, tmp_path, caplog):
    base = str(tmp_path)
    model = text_models["trained"]
    for name in ("100000000000000000000", "\u00b2", "\u0661", "abc", "-3"):
        os.makedirs(os.path.join(base, name))
        shutil.copy(os.path.join(model, "saved_model.pb"), os.path.join(base, name))
    (tmp_path / "5").write_text("a file, not a directory")
    _copy_version(model, base, "007")
    manager = ServableManager(base)
    manager.poll()
    manager.poll()  # a second poll logs nothing new
    assert manager.versions_on_disk() == [7]
    assert _status(manager) == {7: (State.AVAILABLE, "")}
    assert manager.servable(features.MODEL_NAME, 7).path == os.path.join(base, "007")
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 5 and any("100000000000000000000" in m for m in skipped)


def test_a_failed_load_is_retried_once_its_directory_changes(text_models, tmp_path):
    base = str(tmp_path)
    model = text_models["trained"]
    _copy_version(model, base, "1")
    partial = _copy_version(model, base, "2", variables=False)  # saved_model.pb copied before variables/
    manager = ServableManager(base)
    manager.poll()
    assert _status(manager)[2][0] == State.END and _status(manager)[2][1]
    manager.poll()  # unchanged: not retried
    assert _status(manager)[2][0] == State.END
    shutil.copytree(os.path.join(model, "variables"), os.path.join(partial, "variables"))
    manager.poll()
    assert _status(manager)[2] == (State.AVAILABLE, "")
    assert manager.servable(features.MODEL_NAME).version == 2


def test_a_broken_model_base_stops_neither_startup_nor_polling(text_models, tmp_path, monkeypatch):
    base = str(tmp_path)
    _copy_version(text_models["trained"], base, "1")
    manager = ServableManager(base)
    listings = []

    def failing_listdir(path):
        listings.append(path)
        raise tf.errors.PermissionDeniedError(None, None, "listing refused")

    monkeypatch.setattr(tf.io.gfile, "listdir", failing_listdir)
    assert _serves_404_while(manager), "the server did not start, or did not answer, on a base it cannot list"
    assert len(listings) > 1, "polling stopped after the first failure"
    monkeypatch.undo()
    manager.poll()
    assert _status(manager)[1][0] == State.AVAILABLE


def _serves_404_while(manager: ServableManager) -> bool:
    """serve_async started on `manager`, polling often: whether it answers a status request (404, no
    version) once a few polls have run."""
    import asyncio

    from serving import server
    from tests.serving_helpers import free_port

    port, answers = free_port(), []

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(server.serve_async(manager, rest_port=port, grpc_port=None, poll_seconds=0.05, stop=stop))

        def get():
            for _ in range(600):
                try:
                    return requests.get(f"http://127.0.0.1:{port}/v1/models/hanet", timeout=5).status_code
                except requests.ConnectionError:
                    time.sleep(0.05)

        answers.append(await asyncio.get_running_loop().run_in_executor(None, get))
        await asyncio.sleep(0.3)  # a few polls (each fails)
        stop.set()
        await task

    asyncio.run(main())
    return answers == [404]
