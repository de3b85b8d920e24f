"""Load benchmark of the serving endpoint: throughput and p50/p99 latency of `python -m pipeline serve`
over REST and gRPC, at 1 and 16 concurrent clients, one product or a batch per request, against
calling the same SavedModel's serving signature in this process.

    .venv/bin/python scripts/bench_serving.py --model WORK/serving/hanet/1 [--requests 400] [--seconds 60]

Each scenario stops after --requests requests or --seconds seconds, whichever comes first; the server
listens on 127.0.0.1 only and is stopped at the end. Products are real catalog rows (title and the
original JPEG, as a client sends them). Clients and server share this machine's cores, so the
endpoint's figures include the clients' own cost (JSON and base64 for REST).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import itertools
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

from common.features import MODEL_NAME  # noqa: E402

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


def start_server(serving_base: str, rest_port: int, grpc_port: int) -> subprocess.Popen:
    import requests

    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model-base", serving_base, "--host", HOST,
         "--port", str(rest_port), "--grpc-port", str(grpc_port)],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported serving SavedModel (e.g. SERVING_BASE/hanet/1)")
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG), help="products to send (title and image columns)")
    parser.add_argument("--products", type=int, default=64, help="distinct products cycled through")
    parser.add_argument("--clients", default="1,16", help="concurrent clients, comma-separated")
    parser.add_argument("--batches", default="1,8", help="products per request, comma-separated")
    parser.add_argument("--transports", default="in-process,rest,grpc")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests per scenario")
    parser.add_argument("--seconds", type=float, default=60, help="at most this long per scenario")
    args = parser.parse_args()

    from components.push import push
    from serving.client import GrpcClient, RestClient

    products = load_products(pathlib.Path(args.catalog), args.products)
    clients = [int(c) for c in args.clients.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    transports = args.transports.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as serving_base:
        push(args.model, serving_base)
        rest_port, grpc_port = _free_port(), _free_port()
        server = start_server(serving_base, rest_port, grpc_port) if {"rest", "grpc"} & set(transports) else None
        try:
            make = {
                "in-process": (lambda model=InProcess(args.model): model) if "in-process" in transports else None,
                "rest": lambda: RestClient(f"http://{HOST}:{rest_port}", MODEL_NAME),
                "grpc": lambda: GrpcClient(f"{HOST}:{grpc_port}", MODEL_NAME),
            }
            print(f"model {args.model}; {len(products)} catalog products; at most {args.requests} requests "
                  f"or {args.seconds:g} s per scenario; {os.cpu_count()} CPUs shared by clients and server")
            print(f"{'transport':<11}{'clients':>8}{'batch':>6}{'requests':>9}{'req/s':>9}{'products/s':>11}"
                  f"{'p50 ms':>9}{'p99 ms':>9}")
            for transport, n, batch in itertools.product(transports, clients, batches):
                figures = run_scenario(make[transport], products, n, batch, args.requests, args.seconds)
                print(f"{transport:<11}{n:>8}{batch:>6}{figures['requests']:>9}{figures['requests_per_s']:>9.1f}"
                      f"{figures['products_per_s']:>11.1f}{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}",
                      flush=True)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
