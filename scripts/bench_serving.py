"""Load benchmark of the serving endpoint (`python -m pipeline serve`), in two modes.

    .venv/bin/python scripts/bench_serving.py --model WORK/serving/hanet/1 [--batching off,on] [--requests 400] [--seconds 60]
    .venv/bin/python scripts/bench_serving.py --model WORK/serving/hanet/1 --mode large-in-flight [--large 1000]
    .venv/bin/python scripts/bench_serving.py --model WORK/serving/hanet/1 --attack [--seconds 20] [--attackers 4]
        [--server-cpus 0 --client-cpus 0 --attacker-cpus 1]

`throughput` (the default): throughput and p50/p99 latency over REST and gRPC, at 1 and 16 concurrent
clients, one product or a batch per request, with server-side batching off and on (on: the
--batching-parameters file, by default the CPU pod's k8s/base/config/batching_parameters.txt), against
calling the same SavedModel's serving signature in this process; then, per transport and request
size, the 16-client throughput with batching divided by that without. Each scenario stops after
--requests requests or --seconds seconds, whichever comes first.

`large-in-flight`: p50/p99 of one client's single-product REST requests, first on an idle server
(--seconds), then while one request of --large products is computed; the ratio of the two p99s,
how long the large request took, and the server's resident memory before, at its peak and after.

`--attack` (`--mode attack`, once per --batching setting): p50/p99 of one good client's single-product
gRPC requests on an idle server, then while --attackers processes send each attack of the
hostile-traffic suite without pause (decompression bombs, a [1000] tensor of a few KB, 50 concurrent
singles per attacker, a gzip bomb, a body
declared as 300 MiB, slow connections, a GIF frame larger than its screen); per attack the good
client's p99 over its idle p99, what the attackers got back, the server's resident memory after it
and the machine's load average (other jobs share its cores). --server-cpus, --client-cpus and
--attacker-cpus pin the server, the good client and the attackers (taskset lists): the attackers on a
core of their own, the figures show what an attack costs the server rather than the attackers' own
CPU taken from the server and the good client.

The server listens on 127.0.0.1 only and is stopped at the end. Products are real catalog rows
(title and the original JPEG, as a client sends them). Clients and server share this machine's
cores, so the endpoint's figures include the clients' own cost (JSON and base64 for REST).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from common.features import IMAGE_BYTES_KEY, MODEL_NAME, TITLE_KEY  # noqa: E402

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-products" / "products.csv"
HOST = "127.0.0.1"


def load_products(catalog: pathlib.Path, count: int) -> list[tuple[str, bytes]]:
    with open(catalog, newline="") as f:
        rows = [row for _, row in zip(range(count), csv.DictReader(f))]
    return [(row["title"], (catalog.parent / row["image"]).read_bytes()) for row in rows]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class InProcess:
    """The SavedModel's serving signature called directly: the floor the endpoint is measured against."""

    def __init__(self, model_dir: str):
        import tensorflow as tf

        from common import features

        self._tf = tf
        self._signature = tf.saved_model.load(model_dir).signatures[features.SERVING_SIGNATURE]

    def predict(self, products):
        tf = self._tf
        outputs = self._signature(
            title=tf.constant([t for t, _ in products]), image_bytes=tf.constant([i for _, i in products])
        )
        return outputs["classes"].numpy(), outputs["scores"].numpy()


def run_scenario(make_client, products, clients: int, batch: int, max_requests: int, max_seconds: float) -> dict:
    """`clients` threads, each with its own client, send batches until the budget is spent."""
    batches = itertools.cycle([products[i : i + batch] for i in range(0, len(products) - batch + 1, batch)])
    lock = threading.Lock()
    latencies: list[float] = []
    sent = 0
    clock = {}

    def start_clock():
        clock["start"] = time.perf_counter()
        clock["deadline"] = time.monotonic() + max_seconds

    # Every client connects and sends one request first: set-up costs stay out of the figures.
    ready = threading.Barrier(clients, action=start_clock)

    def worker():
        nonlocal sent
        client = make_client()
        with lock:
            warm_up = next(batches)
        client.predict(warm_up)
        ready.wait()
        deadline = clock["deadline"]
        while True:
            with lock:
                if sent >= max_requests or time.monotonic() > deadline:
                    return
                sent += 1
                request = next(batches)
            start = time.perf_counter()
            client.predict(request)
            with lock:
                latencies.append(time.perf_counter() - start)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker) for _ in range(clients)]:
            future.result()
    elapsed = time.perf_counter() - clock["start"]
    latencies_ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "products_per_s": len(latencies) * batch / elapsed,
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
    }


def start_server(serving_base: str, rest_port: int, grpc_port: int, flags: list[str] = (),
                 cpus: str | None = None) -> subprocess.Popen:
    import requests

    server = subprocess.Popen(
        [*(["taskset", "-c", cpus] if cpus else []), sys.executable, "-m", "pipeline", "serve", "--model-base", serving_base, "--host", HOST,
         "--port", str(rest_port), "--grpc-port", str(grpc_port), *flags],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}")
        try:
            if requests.get(f"http://{HOST}:{rest_port}/v1/models/{MODEL_NAME}", timeout=5).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not load the model within 300 s")


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def latencies_until(client, product, stop, minimum: int = 0) -> list[float]:
    """Single-product requests one after another until `stop()` (and at least `minimum` of them)."""
    latencies = []
    while not stop() or len(latencies) < minimum:
        start = time.perf_counter()
        client.predict([product])
        latencies.append(time.perf_counter() - start)
    return latencies


def large_in_flight(args, products, serving_base: str, flags: list[str]) -> None:
    from serving.client import RestClient

    rest_port, grpc_port = _free_port(), _free_port()
    server = start_server(serving_base, rest_port, grpc_port, flags)
    try:
        client = RestClient(f"http://{HOST}:{rest_port}", MODEL_NAME, timeout=600)
        large = [products[i % len(products)] for i in range(args.large)]
        small = products[0]
        client.predict([small])
        resident_before, _ = memory_mb(server.pid)
        deadline = time.monotonic() + args.seconds
        idle = np.array(latencies_until(client, small, lambda: time.monotonic() > deadline)) * 1000
        done = threading.Event()
        answer = {}

        def send_large():
            start = time.perf_counter()
            try:
                answer["predictions"] = len(RestClient(f"http://{HOST}:{rest_port}", MODEL_NAME, timeout=600).predict(large))
            except Exception as e:  # reported below, with the figures
                answer["error"] = str(e)
            answer["seconds"] = time.perf_counter() - start
            done.set()

        thread = threading.Thread(target=send_large)
        thread.start()
        busy = np.array(latencies_until(client, small, done.is_set, minimum=5)) * 1000
        thread.join()
        time.sleep(2)
        resident_after, peak = memory_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"server flags: {' '.join(flags) or '(none)'}; {os.cpu_count()} CPUs shared by clients and server")
    outcome = answer.get("error") or f"{answer['predictions']} predictions"
    print(f"large request: {args.large} products in {answer['seconds']:.1f} s ({outcome})")
    print(f"{'small requests':<28}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, figures in (("idle server", idle), (f"{args.large}-product request in flight", busy)):
        print(f"{name:<28}{len(figures):>7}{np.percentile(figures, 50):>9.1f}{np.percentile(figures, 99):>9.1f}"
              f"{figures.max():>9.1f}")
    print(f"p99 in flight / idle p99: {np.percentile(busy, 99) / np.percentile(idle, 99):.2f}")
    print(f"server memory: {resident_before:.0f} MB before, {peak:.0f} MB peak, {resident_after:.0f} MB after")


def _attacks(host: str, rest_port: int, grpc_port: int, product: tuple[str, bytes]) -> dict:
    """name → a builder of one attacking client: a callable that sends its attack once and returns what it got."""
    import base64
    import gzip

    import grpc
    import requests

    from serving.client import GrpcClient
    from tests import hostile_images

    url = f"http://{host}:{rest_port}/v1/models/{MODEL_NAME}:predict"
    title, image = product

    def instance(data: bytes) -> dict:
        return {"title": title, "image_bytes": {"b64": base64.b64encode(data).decode()}}

    def rest(body: bytes, headers: dict | None = None):
        def send():
            try:
                return requests.post(url, data=body, headers=headers or {}, timeout=60).status_code
            except requests.RequestException as e:
                return type(e).__name__
        return send

    def grpc_call(request, concurrent: int = 1):
        def send():
            stub = GrpcClient(f"{host}:{grpc_port}", MODEL_NAME)._predictions
            futures = [stub.Predict.future(request, timeout=60) for _ in range(concurrent)]
            codes = []
            for future in futures:
                try:
                    future.result()
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
            return ",".join(sorted(set(codes)))
        return send

    def repeated(count: int):
        """[count] copies of the product in a few KB: TensorProto repeats its last value."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        for key, value in ((TITLE_KEY, title.encode()), (IMAGE_BYTES_KEY, image)):
            request.inputs[key].dtype = types_pb2.DT_STRING
            request.inputs[key].tensor_shape.dim.add(size=count)
            request.inputs[key].string_val.append(value)
        return request

    def raw(data: bytes, then_wait: float = 0.0):
        def send():
            with socket.create_connection((host, rest_port), timeout=30) as s:
                s.sendall(data)
                time.sleep(then_wait)
                try:
                    return (s.recv(64).split(b"\r\n")[0].decode(errors="replace") or "closed")[:24]
                except OSError as e:
                    return type(e).__name__
        return send

    def gzip_bomb():
        return gzip.compress(b'{"instances": ["' + b"a" * (200 * 2**20) + b'"]}', compresslevel=9)

    def body_of(image: bytes, count: int = 1) -> bytes:
        return json.dumps({"instances": [instance(image)] * count}).encode()

    head = (f"POST /v1/models/{MODEL_NAME}:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: {}\r\n\r\n")
    # Built when asked for: the gzip bomb alone takes seconds to compress.
    return {
        "webp-16383sq-38B": lambda: rest(body_of(hostile_images.webp_lossy())),
        "six-webp-bombs": lambda: rest(body_of(hostile_images.webp_lossy(), 6)),
        "png-20000sq-header": lambda: rest(body_of(hostile_images.png())),
        "tensor-1000-grpc": lambda: grpc_call(repeated(1000)),
        "50-concurrent-singles": lambda: grpc_call(repeated(1), concurrent=50),
        "gzip-bomb-200MiB": lambda: rest(gzip_bomb(), {"Content-Encoding": "gzip"}),
        "declared-300MiB": lambda: raw(head.format(300 * 2**20).encode()),
        "slow-body": lambda: raw(head.format(1000).encode() + b'{"instances": [', then_wait=15),
        "gif-frame-8000sq": lambda: rest(body_of(hostile_images.gif_frames([(8000, 8000)]))),
    }


ATTACKS = ("webp-16383sq-38B", "six-webp-bombs", "png-20000sq-header", "tensor-1000-grpc", "50-concurrent-singles",
           "gzip-bomb-200MiB", "declared-300MiB", "slow-body", "gif-frame-8000sq")


def run_attacker(args, products) -> None:
    """One attacking client (a process of its own, so its cost is not the good client's): sends its
    attack without pause for --seconds after printing "ready", then prints what it got, as JSON."""

    send = _attacks(HOST, args.rest_port, args.grpc_port, products[0])[args.attacker]()
    outcomes: dict[str, int] = {}
    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        outcome = str(send())
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps(outcomes), flush=True)


def _cpu_list(cpus: str) -> set[int]:
    """taskset's list form: "1", "0,2", "0-3"."""
    chosen = set()
    for part in cpus.split(","):
        first, _, last = part.partition("-")
        chosen.update(range(int(first), int(last or first) + 1))
    return chosen


def attack(args, products, serving_base: str, setting: str, flags: list[str]) -> None:
    from serving.client import GrpcClient

    rest_port, grpc_port = _free_port(), _free_port()
    server = start_server(serving_base, rest_port, grpc_port, flags, cpus=args.server_cpus)
    if args.client_cpus:  # this process: the good client
        os.sched_setaffinity(0, _cpu_list(args.client_cpus))
    try:
        good = GrpcClient(f"{HOST}:{grpc_port}", MODEL_NAME, timeout=120)
        product = products[0]
        good.predict([product])

        def measure() -> np.ndarray:
            deadline = time.monotonic() + args.seconds
            return np.array(latencies_until(good, product, lambda: time.monotonic() > deadline, minimum=5)) * 1000

        cores = (f"CPUs of {os.cpu_count()}: server {args.server_cpus or 'any'}, good client {args.client_cpus or 'any'}, "
                 f"attackers {args.attacker_cpus or 'any'}")
        print(f"batching {setting} (server flags: {' '.join(flags) or 'none'}); good client: single-product gRPC requests, {args.seconds:g} s per phase; {args.attackers} attacking "
              f"processes; {cores}; each attack paired with an idle phase just before it (the machine's load drifts)", flush=True)
        print(f"{'attack':<24}{'idle p50':>9}{'idle p99':>9}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}{'p99/idle':>9}"
              f"{'RSS MB':>8}{'load':>6}  attackers got", flush=True)
        idle_p99s, attack_p99s = [], {}
        for name in args.attacks.split(","):
            idle = measure()
            command = [*(["taskset", "-c", args.attacker_cpus] if args.attacker_cpus else []), sys.executable, __file__, "--model", args.model, "--catalog", args.catalog, "--products", "1",
                       "--attacker", name, "--rest-port", str(rest_port), "--grpc-port", str(grpc_port),
                       "--seconds", str(args.seconds)]
            attackers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.attackers)]
            try:
                for attacker in attackers:
                    assert attacker.stdout.readline().strip() == "ready", f"attacker {name} did not start"
                figures = measure()
                outcomes: dict[str, int] = {}
                for attacker in attackers:
                    for outcome, count in json.loads(attacker.communicate(timeout=180)[0].splitlines()[-1]).items():
                        outcomes[outcome] = outcomes.get(outcome, 0) + count
            finally:
                for attacker in attackers:
                    if attacker.poll() is None:
                        attacker.kill()
            got = ", ".join(f"{k} x{v}" for k, v in sorted(outcomes.items()))
            idle_p99, p99 = np.percentile(idle, 99), np.percentile(figures, 99)
            idle_p99s.append(idle_p99)
            attack_p99s[name] = p99
            print(f"{name:<24}{np.percentile(idle, 50):>9.1f}{idle_p99:>9.1f}{len(figures):>7}"
                  f"{np.percentile(figures, 50):>9.1f}{p99:>9.1f}{p99 / idle_p99:>9.2f}{memory_mb(server.pid)[0]:>8.0f}"
                  f"{os.getloadavg()[0]:>6.1f}  {got}", flush=True)
        # One idle phase's p99 can be a spike of the machine's load (seconds, with other jobs on the
        # cores): each attack's p99 over the median of every idle phase's p99 is the steadier figure.
        median = float(np.median(idle_p99s))
        print(f"idle p99 over the {len(idle_p99s)} idle phases: {min(idle_p99s):.1f}-{max(idle_p99s):.1f} ms, "
              f"median {median:.1f}; p99 / median idle p99: "
              + ", ".join(f"{name} {p99 / median:.2f}" for name, p99 in attack_p99s.items()), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported serving SavedModel (e.g. SERVING_BASE/hanet/1)")
    parser.add_argument("--mode", choices=["throughput", "large-in-flight", "attack"], default="throughput")
    parser.add_argument("--attack", action="store_const", dest="mode", const="attack", help="the same as --mode attack")
    parser.add_argument("--attackers", type=int, default=4, help="attacking clients (attack mode), each a process")
    parser.add_argument("--attacker", choices=ATTACKS, help=argparse.SUPPRESS)  # one attacking process
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="the attacks to send (attack mode), comma-separated")
    parser.add_argument("--server-cpus", help="pin the server to these CPUs (taskset list, e.g. 0; attack mode)")
    parser.add_argument("--client-cpus", help="pin the good client to these CPUs (e.g. 0; attack mode)")
    parser.add_argument("--attacker-cpus", help="pin the attackers to these CPUs (e.g. 1; attack mode)")
    parser.add_argument("--rest-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG), help="products to send (title and image columns)")
    parser.add_argument("--products", type=int, default=64, help="distinct products cycled through")
    parser.add_argument("--clients", default="1,16", help="concurrent clients, comma-separated")
    parser.add_argument("--batches", default="1,8", help="products per request, comma-separated")
    parser.add_argument("--transports", default="in-process,rest,grpc")
    parser.add_argument("--batching", default="off,on", help="server-side batching: off, on or both (comma-separated)")
    parser.add_argument("--batching-parameters", default=str(REPO_ROOT / "k8s" / "base" / "config" / "batching_parameters.txt"),
                        help="the BatchingParameters file of the server with batching on")
    parser.add_argument("--serve-flag", dest="serve_flags", action="append", default=[], metavar="FLAG",
                        help="one more flag (or its value) for `pipeline serve`, repeatable: "
                        "--serve-flag=--max-parsing-per-client --serve-flag=1")
    parser.add_argument("--large", type=int, default=1000, help="products in the large request (large-in-flight)")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests per scenario")
    parser.add_argument("--seconds", type=float, default=60, help="at most this long per scenario (the idle phase of large-in-flight)")
    args = parser.parse_args()
    unknown = set(args.attacks.split(",")) - set(ATTACKS)
    if unknown:
        parser.error(f"--attacks: unknown {', '.join(sorted(unknown))}; known: {', '.join(ATTACKS)}")
    if args.attacker:  # before the imports an attacker does not need (TensorFlow's, through push)
        run_attacker(args, load_products(pathlib.Path(args.catalog), 1))
        return

    from components.push import push
    from serving.client import GrpcClient, RestClient

    products = load_products(pathlib.Path(args.catalog), args.products)
    clients = [int(c) for c in args.clients.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    transports = args.transports.split(",")
    settings = args.batching.split(",")
    flags = {"off": [*args.serve_flags], "on": ["--enable-batching", "--batching-parameters", args.batching_parameters,
                                                *args.serve_flags]}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as serving_base:
        push(args.model, serving_base)
        if args.mode == "large-in-flight":
            for setting in settings:
                large_in_flight(args, products, serving_base, flags[setting])
            return
        if args.mode == "attack":
            for setting in settings:
                attack(args, products, serving_base, setting, flags[setting])
            return
        print(f"model {args.model}; {len(products)} catalog products; at most {args.requests} requests "
              f"or {args.seconds:g} s per scenario; {os.cpu_count()} CPUs shared by clients and server")
        print(f"{'transport':<11}{'batching':>9}{'clients':>8}{'batch':>6}{'requests':>9}{'req/s':>9}{'products/s':>11}"
              f"{'p50 ms':>9}{'p99 ms':>9}")
        throughput = {}

        def report(transport, setting, n, batch, figures):
            throughput[transport, setting, n, batch] = figures["requests_per_s"]
            print(f"{transport:<11}{setting:>9}{n:>8}{batch:>6}{figures['requests']:>9}{figures['requests_per_s']:>9.1f}"
                  f"{figures['products_per_s']:>11.1f}{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}", flush=True)

        if "in-process" in transports:
            model = InProcess(args.model)
            for n, batch in itertools.product(clients, batches):
                report("in-process", "-", n, batch, run_scenario(lambda: model, products, n, batch, args.requests, args.seconds))
        for setting in settings if {"rest", "grpc"} & set(transports) else []:
            rest_port, grpc_port = _free_port(), _free_port()
            server = start_server(serving_base, rest_port, grpc_port, flags[setting])
            try:
                make = {
                    "rest": lambda: RestClient(f"http://{HOST}:{rest_port}", MODEL_NAME),
                    "grpc": lambda: GrpcClient(f"{HOST}:{grpc_port}", MODEL_NAME),
                }
                for transport, n, batch in itertools.product([t for t in transports if t in make], clients, batches):
                    report(transport, setting, n, batch, run_scenario(make[transport], products, n, batch, args.requests, args.seconds))
            finally:
                server.terminate()
                server.wait(timeout=30)
        most = max(clients)
        for transport, batch in itertools.product(("rest", "grpc"), batches):
            if (transport, "on", most, batch) in throughput and (transport, "off", most, batch) in throughput:
                ratio = throughput[transport, "on", most, batch] / throughput[transport, "off", most, batch]
                print(f"{transport} at {most} clients, {batch} per request: batching on / off = {ratio:.2f}")


if __name__ == "__main__":
    main()
