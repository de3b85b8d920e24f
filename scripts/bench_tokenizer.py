"""Throughput of the core-TF BertTokenizer vs tensorflow_text on the fashion catalog titles.

Usage: .venv/bin/python scripts/bench_tokenizer.py [--catalog PATH] [--batch-size 256] [--repeats 5]

Both tokenizers run inside a tf.function with the same [None] string signature and the same
[CLS]/[SEP] packing to max_seq_length, so the figures compare what a transform graph would pay.
"""
import argparse
import csv
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from components.preprocess.tokenizer import BertTokenizer  # noqa: E402
from common.features import INPUT_WORD_IDS_KEY  # noqa: E402

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-products" / "products.csv"
DEFAULT_VOCAB = REPO_ROOT / "pretrained" / "bert_tiny" / "assets" / "vocab.txt"


def reference_fn(vocab_file: str, max_seq_length: int):
    import tensorflow_text as text

    init = tf.lookup.TextFileInitializer(
        vocab_file, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
    table = tf.lookup.StaticVocabularyTable(init, num_oov_buckets=1)
    tokenizer = text.BertTokenizer(table, lower_case=True, token_out_type=tf.int64)
    cls_id, sep_id = table.lookup(tf.constant(["[CLS]", "[SEP]"])).numpy()

    def tokenize(titles):
        ids = tokenizer.tokenize(titles).merge_dims(-2, -1)[:, : max_seq_length - 2]
        ids, _ = text.combine_segments([ids], cls_id, sep_id)
        word_ids, _ = text.pad_model_inputs(ids, max_seq_length)
        return word_ids

    return tokenize


def measure(fns, batches, repeats):
    """Best pass time of each fn; passes interleaved so that load from other processes hits both."""
    for fn in fns:
        fn(batches[0])  # trace and initialise tables outside the timing
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--vocab", default=str(DEFAULT_VOCAB))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    with open(args.catalog, newline="", encoding="utf-8") as f:
        titles = [row["title"] for row in csv.DictReader(f)]
    batches = [tf.constant(titles[i: i + args.batch_size]) for i in range(0, len(titles), args.batch_size)]
    signature = [tf.TensorSpec([None], tf.string)]

    start = time.perf_counter()
    core = BertTokenizer(args.vocab, args.max_seq_length)
    build_s = time.perf_counter() - start
    core_fn = tf.function(lambda t: core(t)[INPUT_WORD_IDS_KEY], input_signature=signature)
    ref_fn = tf.function(reference_fn(args.vocab, args.max_seq_length), input_signature=signature)

    same = all(np.array_equal(core_fn(b).numpy(), ref_fn(b).numpy()) for b in batches)
    core_s, ref_s = measure([core_fn, ref_fn], batches, args.repeats)
    n = len(titles)
    print(f"{n} titles, batches of {args.batch_size}, max_seq_length {args.max_seq_length}, "
          f"best of {args.repeats} passes, {os.cpu_count()} CPUs; identical ids: {same}")
    print(f"core-TF BertTokenizer : {n / core_s:10,.0f} titles/s  ({core_s * 1e3:7.1f} ms per pass; "
          f"construction {build_s:.1f} s)")
    print(f"tensorflow_text       : {n / ref_s:10,.0f} titles/s  ({ref_s * 1e3:7.1f} ms per pass)")
    print(f"ratio core/tf_text    : {ref_s / core_s:10.2f}")


if __name__ == "__main__":
    main()
