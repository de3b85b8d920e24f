"""Server-side batching and the scheduler's protections, against the real server object (serve_async)
in this process so the model calls can be counted: concurrent requests merged into one call, large
requests split and refused over the cap, cancelled requests' work dropped, a bad request in a merged
batch failing alone, unexpected errors answered without details; and the BatchingParameters file."""
import asyncio
import base64
import concurrent.futures
import threading

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf

from serving import batching
from serving.batching import (
    BatchingOptions,
    BatchingParametersError,
    BatchScheduler,
    load_batching_options,
    parse_batching_parameters,
)
from serving.client import GrpcClient
from serving.errors import INTERNAL_ERROR_MESSAGE
from tests.conftest import FASHION_DIR, REPO_ROOT
from tests.serving_helpers import Server, loaded_manager, wait_until
from common import features

TITLES = ["CASIO G-Shock Men Black Digital Watch", "Kiara Women Graphiti White Handbag", "Fastrack Men Sunglasses"]
IMAGE = (FASHION_DIR / "images" / "17429.jpg").read_bytes()


@pytest.fixture(scope="module")
def manager(text_models, tmp_path_factory):
    """Version 1 (the trained text model), loaded once for every server of this module."""
    return loaded_manager(text_models["trained"], str(tmp_path_factory.mktemp("serving")))


def _instances(count: int, image: bytes = IMAGE) -> list[dict]:
    encoded = {"b64": base64.b64encode(image).decode()}
    return [{features.TITLE_KEY: TITLES[i % len(TITLES)], features.IMAGE_BYTES_KEY: encoded} for i in range(count)]


def _grpc_request(count: int):
    return GrpcClient("unused").predict_request([(TITLES[i % len(TITLES)], IMAGE) for i in range(count)])


def _concurrently(calls) -> list:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


@pytest.fixture(scope="module")
def expected(text_models):
    """The SavedModel's own answer for TITLES, top class first."""
    signature = tf.saved_model.load(text_models["trained"]).signatures[features.SERVING_SIGNATURE]
    out = signature(title=tf.constant(TITLES), image_bytes=tf.constant([IMAGE] * len(TITLES)))
    return [c.decode() for c in out["classes"].numpy()[:, 0]]


def test_batching_merges_concurrent_requests_into_one_model_call(manager, expected):
    # One batch thread and a generous timeout: the eight requests arrive while the first batch waits.
    with Server(manager, enable_batching=True, num_batch_threads=1, batch_timeout_micros=500_000,
                max_execution_batch_size=32) as merged:
        answers = _concurrently([lambda i=i: merged.post(_instances(1 + i)[i:]) for i in range(len(TITLES))] * 3)
        batches = merged.scheduler.batches_run
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["predictions"][0]["classes"][0] for a in answers] == expected * 3
    assert merged.scheduler.instances_run == 9
    assert batches <= 2, f"9 concurrent requests took {batches} model calls"

    with Server(manager, enable_batching=False, num_batch_threads=1) as unmerged:
        _concurrently([lambda: unmerged.post(_instances(1))] * 9)
        assert unmerged.scheduler.batches_run == 9  # without batching, one call per request


def test_a_large_request_is_split_and_one_over_the_cap_is_refused(manager, expected):
    with Server(manager, max_batch_size=10, max_execution_batch_size=4) as small:
        answer = small.post(_instances(10))
        assert answer.status_code == 200
        assert [p["classes"][0] for p in answer.json()["predictions"]] == (expected * 4)[:10]
        assert small.scheduler.batches_run == 3  # 4 + 4 + 2

        refused = small.post(_instances(11))
        assert refused.status_code == 400
        assert refused.json()["error"].startswith("Task size 11 is larger than maximum input batch size 10")
        stub = GrpcClient(small.grpc)._predictions
        with pytest.raises(grpc.RpcError) as raised:
            stub.Predict(_grpc_request(11), timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Task size 11 is larger than maximum input batch size 10" in raised.value.details()
        assert small.scheduler.batches_run == 3  # refused before the model saw them


def _settled(scheduler: BatchScheduler) -> int:
    """The instances computed once no task waits and no model call runs."""
    wait_until(scheduler.idle, "the scheduler to settle")
    return scheduler.instances_run


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_the_work_of_a_request_whose_client_gave_up_is_dropped(manager, transport):
    with Server(manager, max_execution_batch_size=4, num_batch_threads=1) as slow:
        if transport == "grpc":
            stub = GrpcClient(slow.grpc)._predictions
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(_grpc_request(1000), timeout=0.5)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            with pytest.raises(requests.Timeout):
                slow.post(_instances(1000), timeout=(5, 0.5))  # the client closes its connection
        computed = _settled(slow.scheduler)
        assert computed < 1000, "the server computed the whole request of a client that had gone"
        assert slow.post(_instances(1)).status_code == 200
        assert slow.scheduler.instances_run == computed + 1


def test_a_small_request_is_answered_while_a_large_one_is_computed(manager):
    with Server(manager, max_execution_batch_size=4, num_batch_threads=1) as fair:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            large = pool.submit(fair.post, _instances(400))
            wait_until(lambda: fair.scheduler.instances_run > 0, "the large request to start")
            small = fair.post(_instances(1))
            assert small.status_code == 200
            assert not large.done(), "the small request waited for the whole large one"
            assert large.result().status_code == 200
            assert len(large.result().json()["predictions"]) == 400


def test_a_bad_request_merged_with_good_ones_fails_alone(manager, monkeypatch, expected):
    from serving.errors import InvalidArgument

    servable = manager.servable(features.MODEL_NAME)
    run, calls = servable.run, []

    def picky(signature, inputs):  # as the model fails on a photo that is not an image: the whole call fails
        calls.append(len(inputs[features.TITLE_KEY]))
        if b"BAD" in inputs[features.TITLE_KEY].tolist():
            raise InvalidArgument("Unknown image file format. One of JPEG, PNG, GIF, BMP required.")
        return run(signature, inputs)

    monkeypatch.setattr(servable, "run", picky)
    with Server(manager, enable_batching=True, num_batch_threads=1, batch_timeout_micros=500_000,
                max_execution_batch_size=32) as merged:
        answers = _concurrently([
            lambda: merged.post(_instances(1)),
            lambda: merged.post([{**_instances(1)[0], features.TITLE_KEY: "BAD"}]),
            lambda: merged.post(_instances(2)),
        ])
    assert calls[0] == 4, "the three requests were not merged"
    assert [a.status_code for a in answers] == [200, 400, 200]
    assert answers[1].json()["error"].startswith("Unknown image file format")
    assert [p["classes"][0] for p in answers[2].json()["predictions"]] == expected[:2]


def test_a_full_queue_refuses_with_unavailable(manager, monkeypatch):
    servable = manager.servable(features.MODEL_NAME)
    run, release = servable.run, threading.Event()

    def held(signature, inputs):  # every model call waits for the test: the requests below queue
        release.wait(120)
        return run(signature, inputs)

    monkeypatch.setattr(servable, "run", held)
    with Server(manager, max_execution_batch_size=1, max_enqueued_instances=2, num_batch_threads=1) as busy:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            first = pool.submit(busy.post, _instances(1))
            wait_until(lambda: busy.scheduler.batches_started == 1, "the first request to reach the model")
            waiting = [pool.submit(busy.post, _instances(1)) for _ in range(2)]
            wait_until(lambda: busy.scheduler.waiting_instances(split=False) == 2, "two requests to queue")
            refused = [busy.post(_instances(1)) for _ in range(2)]  # one running, two waiting: the queue is full
            release.set()
            answered = [first.result(), *(w.result() for w in waiting)]
    assert [a.status_code for a in answered] == [200, 200, 200]
    assert [a.status_code for a in refused] == [503, 503]
    assert "queue" in refused[0].json()["error"] and "max_enqueued_instances 2" in refused[0].json()["error"]


def test_an_unexpected_error_is_internal_without_details(manager, monkeypatch):
    servable = manager.servable(features.MODEL_NAME)

    def broken(signature, inputs):
        raise KeyError("/secret/path/of/the/server")

    monkeypatch.setattr(servable, "run", broken)
    with Server(manager) as failing:
        answer = failing.post(_instances(1))
        with pytest.raises(grpc.RpcError) as raised:
            GrpcClient(failing.grpc)._predictions.Predict(_grpc_request(1), timeout=30)
    assert answer.status_code == 500 and answer.json() == {"error": INTERNAL_ERROR_MESSAGE}
    assert raised.value.code() == grpc.StatusCode.INTERNAL and raised.value.details() == INTERNAL_ERROR_MESSAGE


def test_without_a_file_large_requests_are_split_and_batching_merges_up_to_32(monkeypatch):
    monkeypatch.setattr(batching.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert (BatchingOptions().max_batch_size, BatchingOptions().max_execution_batch_size) == (1000, 2)
    # On one core a piece of 2 costs two single-product calls and more: pieces of one.
    monkeypatch.setattr(batching.os, "sched_getaffinity", lambda pid: {3})
    assert (BatchingOptions().max_execution_batch_size, BatchingOptions().num_batch_threads) == (1, 1)
    assert load_batching_options(None, False) == BatchingOptions()
    merged = load_batching_options(None, True)
    assert merged.enable_batching and merged.max_execution_batch_size == 32 and merged.max_batch_size == 1000


def test_the_k8s_batching_parameters_are_read_as_tf_serving_reads_them():
    options = load_batching_options(str(REPO_ROOT / "k8s" / "base" / "config" / "batching_parameters.txt"), True)
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches,
            options.num_batch_threads) == (32, 5000, 64, 2)
    # No large-batch splitting in the file: as in TF Serving, a model call takes up to max_batch_size.
    assert not options.enable_large_batch_splitting and options.max_execution_batch_size == 32
    gpu = load_batching_options(str(REPO_ROOT / "k8s" / "overlays" / "gpu" / "batching_parameters.txt"), True)
    assert (gpu.max_batch_size, gpu.batch_timeout_micros, gpu.num_batch_threads) == (128, 10000, 2)
    split = BatchingOptions.from_parameters(parse_batching_parameters(
        "max_batch_size { value: 1000 }\nenable_large_batch_splitting { value: true }\n"
        "max_execution_batch_size { value: 16 }"), enable_batching=True)
    assert (split.max_batch_size, split.max_execution_batch_size) == (1000, 16)


@pytest.mark.parametrize(
    "text, message",
    [
        ("max_batch_size: 32", """:1:17 : 'max_batch_size: 32': Expected "{"."""),
        ("max_batch_size { value: 32 }\nmax_batch_size { value: 8 }", "should not have multiple"),
        ("batch_size { value: 32 }", 'has no field named "batch_size"'),
        ("num_batch_threads { value: 0 }", "num_batch_threads must be at least 1, got 0"),
        ("max_batch_size { value: 8 }\nenable_large_batch_splitting { value: true }\n"
         "max_execution_batch_size { value: 16 }", "max_execution_batch_size 16 is larger than max_batch_size 8"),
        ("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 2", "must increase"),
    ],
)
def test_a_bad_batching_parameters_file_says_where_and_why(tmp_path, text, message):
    path = tmp_path / "batching_parameters.txt"
    path.write_text(text)
    with pytest.raises(BatchingParametersError) as raised:
        load_batching_options(str(path), True)
    assert str(raised.value).startswith(str(path)) and message in str(raised.value)


def test_the_scheduler_checks_batch_dimensions():
    from serving.errors import InvalidArgument

    async def attempt(inputs):
        return await BatchScheduler(BatchingOptions()).run(("key",), lambda x: x, inputs)

    with pytest.raises(InvalidArgument, match="equal 0th-dimension size"):
        asyncio.run(attempt({"a": np.zeros(2), "b": np.zeros(3)}))
    with pytest.raises(InvalidArgument, match="is a scalar"):
        asyncio.run(attempt({"a": np.zeros(())}))


def test_the_client_with_fewest_instances_waiting_is_served_first_ties_in_turns():
    order, gate = [], threading.Event()

    def run(inputs):
        gate.wait(60)  # the first call holds the batch thread until every request is queued
        order.append(inputs["who"][0])
        return inputs

    async def main():
        scheduler = BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=1))
        sent = [("a", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 0), ("c", 0), ("a", 4), ("b", 1)]
        calls = [asyncio.create_task(scheduler.run(("key",), run, {"who": np.array([f"{c}{i}"])}, client=c))
                 for c, i in sent]
        while scheduler.waiting_instances(split=False) < len(sent) - 1:
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*calls)
        scheduler.close()

    asyncio.run(main())
    # a0 was running when the others arrived; then c (1 waiting), b (2, then 1), a (4). Round robin
    # ran b0 c0 a1 b1.
    assert order == ["a0", "c0", "b0", "b1", "a1", "a2", "a3", "a4"]


def _recorded_calls(scheduler: BatchScheduler, first: tuple, then: list[tuple],
                    cancel: tuple[int, ...] = ()) -> tuple[list[list[str]], list]:
    """Sends `first` (client, tags), holds its model call until every request of `then` is queued
    (and those at the indices `cancel` are cancelled by their callers), and returns the tags of each
    model call in order, with each answered request's answer (first's first)."""
    calls, gate = [], threading.Event()

    def run(inputs):
        gate.wait(60)
        calls.append(list(inputs["who"]))
        return inputs

    async def main():
        def send(client, tags):
            return asyncio.create_task(scheduler.run(("key",), run, {"who": np.array(tags)}, client=client))

        sent = [send(*first)]
        while scheduler.batches_started == 0:
            await asyncio.sleep(0)
        sent += [send(*request) for request in then]
        while sum(task.remaining for task in scheduler._queue) < sum(len(tags) for _, tags in then):
            await asyncio.sleep(0)
        for index in cancel:
            sent[1 + index].cancel()
            with pytest.raises(asyncio.CancelledError):
                await sent[1 + index]
        gate.set()
        answers = await asyncio.gather(*(task for i, task in enumerate(sent) if i - 1 not in cancel))
        scheduler.close()
        return answers

    answers = asyncio.run(main())
    return calls, [list(answer["who"]) for answer in answers]


def test_a_single_from_another_client_is_answered_before_the_last_piece_of_a_1000_instance_request():
    big = [f"big{i}" for i in range(1000)]
    calls, answers = _recorded_calls(BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=2)),
                                     ("big", big), [("good", ["good0"])])
    # The big request's first piece was running when the single arrived: the single is next.
    assert calls[:2] == [["big0", "big1"], ["good0"]]
    assert len(calls) == 1 + 500
    assert answers == [big, ["good0"]]  # the pieces put back together in order


def test_with_batching_each_client_takes_its_share_of_a_merged_call():
    many = [("many", [f"many{i}"]) for i in range(20)]
    big = [f"big{i}" for i in range(100)]
    options = BatchingOptions(num_batch_threads=1, max_execution_batch_size=8, enable_batching=True)
    calls, answers = _recorded_calls(BatchScheduler(options), ("many", ["first"]),
                                     [*many, ("good", ["good0"]), ("big", big)])
    # The lightest clients first (good 1 instance waiting, many 20, big 100), a round at a time: one
    # request of each client and a share of 8 // 3 = 2 instances of the split request a round,
    # until the call is full (the split request's instances stay one contiguous piece). Round robin
    # put big before many: ["good0", "big0", ..., "big4", "many0", "many1"].
    assert calls[1] == ["good0", "many0", "big0", "big1", "big2", "big3", "many1", "many2"]
    assert all(len(call) == 8 for call in calls[1:-1])
    assert sorted(sum(calls, [])) == sorted(["first", *(tags[0] for _, tags in many), "good0", *big])
    assert answers[-1] == big and answers[0] == ["first"]


def test_a_split_request_weighs_its_instances_not_yet_handed_to_the_model():
    big = [f"big{i}" for i in range(6)]
    many = [("many", [f"many{i}"]) for i in range(5)]
    calls, answers = _recorded_calls(BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=2)),
                                     ("big", big), many)
    # While its first piece ran, big had 4 instances left against many's 5: its pieces go first.
    # Counted by requests (1 against 5) it would too, but by its size (6) it would go last.
    assert calls == [["big0", "big1"], ["big2", "big3"], ["big4", "big5"], *(tags for _, tags in many)]
    assert answers[0] == big


def test_of_two_split_requests_the_one_with_fewer_instances_left_goes_first():
    first, second = [f"a{i}" for i in range(6)], [f"b{i}" for i in range(6)]
    calls, answers = _recorded_calls(BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=2)),
                                     ("a", first), [("b", second)])
    # a had 4 left after its first piece, b 6: a finishes first (round robin alternated a, b, a, b).
    assert calls == [["a0", "a1"], ["a2", "a3"], ["a4", "a5"], ["b0", "b1"], ["b2", "b3"], ["b4", "b5"]]
    assert answers == [first, second]


def test_a_single_goes_before_a_client_with_more_instances_waiting_even_if_served_more_recently():
    singles = [("flood", [f"flood{i}"]) for i in range(3)]
    big = [f"big{i}" for i in range(10)]
    calls, _ = _recorded_calls(BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=2)),
                               ("good", ["good0"]), [*singles, ("big", big), ("good", ["good1"])])
    # good was served last: round robin ran flood0, then big0-1, then good1.
    assert calls[1:4] == [["good1"], ["flood0"], ["flood1"]]
    assert calls[-1] == ["big8", "big9"]


def test_cancelled_requests_weigh_nothing():
    gone = ("x", [f"gone{i}" for i in range(50)])
    calls, _ = _recorded_calls(BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=2)),
                               ("first", ["first"]), [("y", ["y0"]), gone, ("x", ["x0"]), ("y", ["y1"])], cancel=(1,))
    # x's 50 cancelled instances are dropped, not counted: x (1 waiting) goes before y (2), which
    # sent first (round robin ran y0 x0 y1; counting the cancelled, y0 y1 x0).
    assert calls == [["first"], ["x0"], ["y0"], ["y1"]]


def test_a_client_opening_a_connection_per_request_gets_one_turn_a_round():
    calls = []

    def run(inputs):
        calls.append(str(inputs["who"][0]))
        return inputs

    async def main():
        scheduler = BatchScheduler(BatchingOptions(num_batch_threads=1, max_execution_batch_size=1))

        async def client(name, fresh_connections: bool):
            connection = object()
            for i in range(12):
                await scheduler.run(("key",), run, {"who": np.array([f"{name}{i}"])},
                                    client=object() if fresh_connections else connection)

        await asyncio.gather(*(client(f"attacker{n}-", True) for n in range(3)), client("good", False))
        scheduler.close()

    asyncio.run(main())
    good = [index for index, who in enumerate(calls) if who.startswith("good")]
    assert len(good) == 12 and len(calls) == 48
    # Each client sends its next request once answered: the good one waits for at most one
    # request of each attacker, however many connections they open.
    assert max(b - a for a, b in zip(good, good[1:])) <= 4, calls
