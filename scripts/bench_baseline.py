"""The evaluate stage's tfidf_svm baseline against the one it replaced (TF-IDF vocabularies + LinearSVC
one-vs-rest), on a catalog's own split: the preprocess stage's split of each row by a hash of its id.

    .venv/bin/python scripts/bench_baseline.py ../shared/data/fashion-products/products.csv articleType

Prints each one's eval top-1/top-5, fit seconds and peak RSS growth. Rows are read as the catalog holds
them (no image checks, so a row preprocess would quarantine is kept: both baselines see the same rows).
"""
from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import baselines, features  # noqa: E402
from common.metrics import ClassCounts, top_k_ids  # noqa: E402
from components.preprocess.job import split_of  # noqa: E402


def linear_svc_scores(train_titles, train_labels, titles, num_classes):
    """The baseline the evaluate stage had before: vocabularies in memory, dense one-vs-rest weights."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    model = make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LinearSVC(C=1.0)).fit(train_titles, train_labels)
    scores = np.full((len(titles), num_classes), -np.inf)
    scores[:, model.classes_] = model.decision_function(titles)
    return scores


def split_catalog(path: str, label_column: str, title_column: str, id_column: str, eval_fraction: float):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    parts = {features.TRAIN_SPLIT: [], features.EVAL_SPLIT: []}
    for row in rows:
        parts[split_of(row[id_column], eval_fraction)].append((row[title_column], row[label_column]))
    names = sorted({label for _, label in parts[features.TRAIN_SPLIT]})
    ids = {name: i for i, name in enumerate(names)}
    oov = len(names)  # eval labels never seen in train: a class no baseline can predict
    return {split: ([t for t, _ in pairs], np.array([ids.get(label, oov) for _, label in pairs], np.int64))
            for split, pairs in parts.items()}, len(names) + 1


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_seconds() -> float:
    """This process's CPU time: on a machine shared with other jobs, what wall time cannot show."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("catalog")
    parser.add_argument("label_column")
    parser.add_argument("--title-column", default=features.DEFAULT_TITLE_COLUMN)
    parser.add_argument("--id-column", default=features.DEFAULT_ID_COLUMN)
    parser.add_argument("--eval-fraction", type=float, default=features.DEFAULT_EVAL_FRACTION)
    parser.add_argument("--only", choices=["old", "new"], help="one of the two (peak RSS is the process's)")
    args = parser.parse_args()
    data, num_classes = split_catalog(args.catalog, args.label_column, args.title_column, args.id_column,
                                      args.eval_fraction)
    (train_titles, train_labels), (eval_titles, eval_labels) = data[features.TRAIN_SPLIT], data[features.EVAL_SPLIT]
    print(f"{args.catalog}: {len(train_titles)} train, {len(eval_titles)} eval products, {num_classes} classes")
    before = peak_rss_gib()
    fitted = {}

    def new():
        fitted["new"] = baselines.TfidfSvm(train_titles, train_labels, num_classes)
        return fitted["new"].scores(eval_titles)

    runs = {"old": lambda: linear_svc_scores(train_titles, train_labels, eval_titles, num_classes), "new": new}
    for name, run in runs.items():
        if args.only and name != args.only:
            continue
        started, cpu = time.monotonic(), cpu_seconds()
        scores = run()
        seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu
        counts = ClassCounts(num_classes)
        counts.add(eval_labels, top_k_ids(scores))
        m = counts.metrics()
        print(f"{name}: top-1 {m['top1_accuracy']:.4f} top-5 {m['top5_accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
              f"fit+score {seconds:.1f} s ({cpu:.1f} s CPU), peak RSS {peak_rss_gib():.2f} GiB (before {before:.2f})", flush=True)
        if name in fitted and fitted[name].solver == "liblinear":
            print(f"  solved exactly by liblinear (training titles × classes ≤ {baselines.EXACT_COST:,})", flush=True)
        elif name in fitted:
            f = fitted[name]
            held_out = "none held out" if f.holdout_accuracy is None else f"held-out top-1 {f.holdout_accuracy:.4f}"
            print(f"  α {f.alpha:g} chosen on {len(train_titles) // baselines.HOLDOUT_EVERY} held-out train titles "
                  f"({held_out}), {f.epochs} epochs", flush=True)


if __name__ == "__main__":
    main()
