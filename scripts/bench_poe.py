"""The evaluate stage's tfidf_image_poe fit (common/poe.py through trainer.features_cache.fit_poe, the
code the stage runs), timed on a finished run's artifacts, with each number of BLAS threads asked for.

    .venv/bin/python scripts/bench_poe.py work/pipeline_root/RUN [--blas-threads 1,0]

RUN is a run-local run's directory (it holds preprocess/examples, preprocess/transform_graph and
train/poe_features). 0 threads: the BLAS library's default. Prints, per setting, the fit's CPU and wall
seconds, the Cs chosen on validation and the eval top-1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import tensorflow_transform as tft  # noqa: E402

from common import features, poe  # noqa: E402
from common.labels import label_names  # noqa: E402
from trainer import features_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--blas-threads", default="1,0", help="comma-separated; 0 is the library's default")
    args = parser.parse_args()
    paths = {name: os.path.join(args.run_dir, *parts) for name, parts in
             (("examples", ("preprocess", "examples")), ("graph", ("preprocess", "transform_graph")),
              ("poe", ("train", "poe_features")))}
    missing = [p for p in paths.values() if not os.path.isdir(p)]
    if missing:
        sys.exit(f"bench_poe: {args.run_dir} is not a finished run's directory: no {missing[0]}")
    _, _, labels, ids = features_cache.poe_split(paths["poe"], paths["examples"], features.EVAL_SPLIT)
    num_classes = len(label_names(tft.TFTransformOutput(paths["graph"])))  # as the evaluate stage counts them
    print(f"{len(ids)} eval products, {num_classes} classes")
    for threads in (int(t) for t in args.blas_threads.split(",")):
        poe.FIT_BLAS_THREADS = threads or None
        cpu, wall = time.process_time(), time.perf_counter()
        fitted = features_cache.fit_poe(paths["poe"], paths["examples"], paths["graph"], num_classes)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        top1 = float(np.mean(fitted.top_classes(ids)[:, 0] == labels))
        print(f"BLAS threads {threads or 'default'}: {cpu:.1f} CPU s, {wall:.1f} s wall (fit {fitted.fit_seconds:.1f} s), "
              f"text C {fitted.choices['text_c']:g}, image C {fitted.choices['image_c']:g}, validation top-1 "
              f"{fitted.choices['validation_top1_accuracy']:.4f}, eval top-1 {top1:.4f}", flush=True)


if __name__ == "__main__":
    main()
