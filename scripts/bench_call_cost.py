"""What one model call costs by its size: the served model's signature called on N products, on the
cores given, as the local server's batch thread calls it (serving/servables.py Servable.run).

    .venv/bin/python scripts/bench_call_cost.py --model SERVING_BASE/hanet/1 --cpus 0

Prints each call size's median and fastest time, and its time per product. It says what batching
buys on a machine and what a single-product request waits behind a call of N (docs/serving.md).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from scripts.bench_serving import DEFAULT_CATALOG, _cpu_list, load_products  # noqa: E402
from common.features import IMAGE_BYTES_KEY, SERVING_SIGNATURE, TITLE_KEY  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a pushed version's directory (SERVING_BASE/hanet/N)")
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG), help="products to send (title and image columns)")
    parser.add_argument("--cpus", help="the cores to run on, as taskset's list (0, 0-1); default: all")
    parser.add_argument("--sizes", default="1,2,4,6,8,16,32", help="call sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=7, help="calls of each size")
    args = parser.parse_args()
    if args.cpus:  # before TensorFlow starts: it sizes its thread pools by the cores it may use
        os.sched_setaffinity(0, _cpu_list(args.cpus))
    from serving.servables import Servable

    sizes = [int(size) for size in args.sizes.split(",")]
    servable = Servable("model", 1, args.model)
    products = load_products(pathlib.Path(args.catalog), max(sizes))
    titles = np.array([title.encode() for title, _ in products], dtype=object)
    images = np.array([image for _, image in products], dtype=object)

    def call(size: int) -> float:
        start = time.perf_counter()
        servable.run(SERVING_SIGNATURE, {TITLE_KEY: titles[:size], IMAGE_BYTES_KEY: images[:size]})
        return time.perf_counter() - start

    for size in (1, max(sizes)):  # the first calls of a shape trace and warm up
        call(size)
    print(f"cores: {len(os.sched_getaffinity(0))}; {'size':>5}{'median ms':>11}{'fastest ms':>12}{'ms a product':>14}")
    for size in sizes:
        times = [call(size) for _ in range(args.repeats)]
        print(f"{'':>9}{size:>5}{np.median(times) * 1000:>11.1f}{min(times) * 1000:>12.1f}"
              f"{np.median(times) * 1000 / size:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
