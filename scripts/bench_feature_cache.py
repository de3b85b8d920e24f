"""The feature cache's Beam job (trainer/beam_cache.py) on the DirectRunner and on Beam's DaskRunner over a
dask.distributed LocalCluster of --workers worker processes, on the same examples: wall time, CPU seconds
of the job's whole process tree (the Dask workers included) and its peak RSS, and the speed-up.

Both run the shipped command, `python -m trainer.beam_cache`, with run-local's encoders (MiniLM-L6
mean-pooled, EfficientNet-Lite0 at 96 px, 32 tokens) unless told otherwise; the examples and transform
graph are a preprocess stage's output (`python -m components.preprocess ... --image-size 96
--max-seq-length 32`):

    .venv/bin/python scripts/bench_feature_cache.py --examples PRE/examples --transform-graph PRE/transform_graph \\
        --out /tmp/bench-cache --workers 2

The DirectRunner runs --workers threads sharing one model (the job's default on a machine of that many
cores); the DaskRunner --workers processes of one thread, each loading the encoders, the pipeline's first
step in --workers partitions and each examples file read in --pieces-per-file pieces (the DaskRunner
spreads only the first step's partitions; by default as many pieces a file as workers). Each run writes its own cache under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from scripts.benchtools import run_measured  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
GIB = 2**30


def encoder_args() -> list[str]:
    """run-local's encoders, as trainer.beam_cache's flags."""
    from common.params import local_params

    local = local_params()
    return ["--bert-handle", local.bert_handle, "--text-pooling", local.text_pooling, "--image-weights",
            local.image_weights, "--image-variant", local.image_variant, "--image-size", str(local.image_size),
            "--max-seq-length", str(local.max_seq_length)]


def run_on_dask(workers: int, job_args: list[str]) -> None:
    """In a child process: a LocalCluster of `workers` processes, the job on it, the cluster closed (its
    workers joined, so that their CPU time counts in this process's children)."""
    import distributed

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from trainer import beam_cache

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        beam_cache.main([*job_args, f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.scheduler_address}",
                         f"--dask_npartitions={workers}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", required=True)
    parser.add_argument("--transform-graph", required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the caches (replaced) and results.json")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pieces-per-file", type=int, help="default: --workers (a share of each file a partition)")
    parser.add_argument("--runners", nargs="+", default=["direct", "dask"], choices=["direct", "dask"])
    parser.add_argument("--dask-child", action="store_true", help=argparse.SUPPRESS)
    args, job_extra = parser.parse_known_args()
    args.pieces_per_file = args.pieces_per_file or args.workers

    job = ["--examples", args.examples, "--transform-graph", args.transform_graph, *encoder_args(), *job_extra]
    if args.dask_child:
        run_on_dask(args.workers, [*job, "--cache-dir", str(args.out / "dask"), "--pieces-per-file",
                                   str(args.pieces_per_file)])
        return
    args.out.mkdir(parents=True, exist_ok=True)
    commands = {
        "direct": [sys.executable, "-m", "trainer.beam_cache", *job, "--cache-dir", str(args.out / "direct"),
                   f"--direct_num_workers={args.workers}"],
        "dask": [sys.executable, str(pathlib.Path(__file__).resolve()), "--dask-child", "--examples", args.examples,
                 "--transform-graph", args.transform_graph, "--out", str(args.out), "--workers", str(args.workers),
                 "--pieces-per-file", str(args.pieces_per_file), *job_extra],
    }
    results = {}
    for runner in args.runners:
        shutil.rmtree(args.out / runner, ignore_errors=True)
        wall, cpu, peak, stdout = run_measured(commands[runner])
        sizes = json.loads(stdout.strip().splitlines()[-1])
        results[runner] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_gib": peak / GIB, "split_sizes": sizes,
                           "load_average": os.getloadavg()}
        print(f"{runner} ({args.workers} workers): {wall:.0f} s wall, {cpu:.0f} CPU s, peak {peak / GIB:.2f} GiB, "
              f"{sum(sizes.values())} products {sizes}, load average after {os.getloadavg()[0]:.1f}", flush=True)
    if {"direct", "dask"} <= results.keys():
        d, k = results["direct"], results["dask"]
        print(f"dask / direct: wall {k['wall_s'] / d['wall_s']:.2f}, CPU {k['cpu_s'] / d['cpu_s']:.2f}")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
