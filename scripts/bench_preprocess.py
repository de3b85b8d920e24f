"""Throughput and peak memory of the preprocess stage vs a bare loop doing the same per-product work.

Usage: .venv/bin/python scripts/bench_preprocess.py [--scales 1,4] [--image-size 224] [--max-seq-length 64]
           [--bert-handle DIR] [--processes N] [--beam-arg=--direct_running_mode=in_memory ...]

For each scale s, a catalog of s copies of the fashion catalog (copies get new ids, images stay where
they are) goes through
  - the preprocess stage, run as a user runs it: `python -m components.preprocess` (default runner:
    the DirectRunner with one worker process per core), and
  - a bare loop: a process per core, each reading rows and doing the same decode + check + resize +
    JPEG re-encode + tokenize (row_checks.to_product, then the preprocessing_fn's tokenizer and
    resize_image in one tf.function per batch) and writing GZIP TFRecords; no grouping by id, no
    split, no vocabulary, no quarantine file.
Both run as child processes, timed from launch to exit (interpreter start and imports included);
CPU time is that of the child and all its descendants (user + system); peak memory is the highest sum
of resident memory over the child and all its descendants, sampled every 0.1 s. With --repeats, the
runs alternate and the fastest of each is reported. The last line per command is the marginal rate
between the smallest and the largest scale: rows/s once started, with the fixed cost (imports,
worker start, TFT tracing) taken out.
"""
from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import pathlib
import sys
import tempfile
import threading

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchtools import REPO_ROOT, run_measured, write_scaled_catalog  # noqa: E402  (beside this script)

sys.path.insert(0, str(REPO_ROOT))

DEFAULT_CATALOG = REPO_ROOT.parent / "shared" / "data" / "fashion-products" / "products.csv"
DEFAULT_BERT = REPO_ROOT / "pretrained" / "bert_tiny"
LABEL_COLUMN = "articleType"
LOOP_BATCH = 64


# ---- the bare loop (runs in its own child process) -----------------------------------------


def _loop_worker(task):
    """One batch of rows → transformed examples appended to this process's own TFRecord file."""
    rows, options = task
    state = _loop_state(options)
    import tensorflow as tf

    from components.preprocess import row_checks
    from components.preprocess.catalog import CatalogColumns, CatalogRow

    columns = CatalogColumns(label=LABEL_COLUMN)
    products = []
    for source, number, fields in rows:
        product = row_checks.to_product(CatalogRow(source, number, fields), columns, row_checks.DEFAULT_MAX_IMAGE_PIXELS)
        if isinstance(product, row_checks.RawProduct):
            products.append(product)
    if not products:
        return len(rows), 0
    out = state["fn"](tf.constant([p.title for p in products]), tf.constant([p.image_bytes for p in products]))
    out = {k: v.numpy() for k, v in out.items()}
    for i in range(len(products)):
        feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=v[i])) for k, v in out.items() if k != "image"}
        feature["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[out["image"][i]]))
        state["writer"].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    state["writer"].flush()
    return len(rows), len(products)


_STATE: dict = {}


def _loop_state(options):
    if not _STATE:
        import tensorflow as tf

        from components.preprocess.tokenizer import BertTokenizer
        from components.preprocess.transform import resize_image

        tokenizer = BertTokenizer(options["vocab_file"], options["max_seq_length"])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
        def fn(titles, images):
            out = dict(tokenizer(titles))
            out["image"] = resize_image(images, options["image_size"])
            return out

        _STATE["fn"] = fn
        path = os.path.join(options["output_dir"], f"part-{os.getpid()}.tfrecord.gz")
        _STATE["writer"] = tf.io.TFRecordWriter(path, options="GZIP")
        atexit.register(_STATE["writer"].close)
    return _STATE


def bare_loop(catalog: str, output_dir: str, options: dict, processes: int) -> None:
    from components.preprocess.catalog import read_rows

    # The pool would read the whole catalog ahead into its task queue: at most two batches per
    # process are in flight instead.
    in_flight = threading.BoundedSemaphore(2 * processes)

    def batches():
        batch = []
        for row in read_rows(catalog, lambda: open(catalog, "rb")):
            batch.append((row.source, row.row_number, dict(row.fields)))
            if len(batch) == LOOP_BATCH:
                in_flight.acquire()
                yield batch, options
                batch = []
        if batch:
            in_flight.acquire()
            yield batch, options

    rows = kept = 0
    # spawn: every worker starts its own TensorFlow, as a Beam worker process does.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for n_rows, n_kept in pool.imap_unordered(_loop_worker, batches()):
            in_flight.release()
            rows, kept = rows + n_rows, kept + n_kept
        pool.close()
        pool.join()
    print(json.dumps({"rows_in": rows, "kept": kept}))


# ---- the driver -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    parser.add_argument("--scales", default="1,4")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--bert-handle", default=str(DEFAULT_BERT))
    parser.add_argument("--processes", type=int, default=os.cpu_count(), help="bare loop worker processes")
    parser.add_argument("--beam-arg", action="append", default=[], help="extra Beam option for the stage")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bare-loop", nargs=2, metavar=("CATALOG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from components.preprocess.job import QUARANTINE_FILE  # noqa: F401  (fails early if the project is broken)

    vocab_file = str(pathlib.Path(args.bert_handle) / "assets" / "vocab.txt")
    if args.bare_loop:
        options = {"vocab_file": vocab_file, "max_seq_length": args.max_seq_length, "image_size": args.image_size,
                   "output_dir": args.bare_loop[1]}
        bare_loop(args.bare_loop[0], args.bare_loop[1], options, args.processes)
        return

    print(f"cores: {os.cpu_count()}, image size {args.image_size}, max_seq_length {args.max_seq_length}, "
          f"stage options: {args.beam_arg or 'defaults'}, best of {args.repeats}")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    best: dict[tuple[str, int], tuple[float, float, int]] = {}
    sizes = {}
    for scale in (int(s) for s in args.scales.split(",")):
        catalog = work / f"catalog-x{scale}.csv"
        rows = sizes[scale] = write_scaled_catalog(pathlib.Path(args.catalog), scale, catalog)
        for repeat in range(args.repeats):
            stage_out = work / f"stage-x{scale}-{repeat}"
            measured = run_measured([
                sys.executable, "-m", "components.preprocess", "--catalog", str(catalog), "--label-column",
                LABEL_COLUMN, "--output-dir", str(stage_out), "--bert-handle", args.bert_handle,
                "--image-size", str(args.image_size), "--max-seq-length", str(args.max_seq_length), *args.beam_arg,
            ])
            metrics = json.loads((stage_out / "metrics.json").read_text())
            assert metrics["rows_in"] == rows == sum(metrics["kept"].values()), metrics
            _report("preprocess stage", scale, rows, measured, best)
            if args.skip_loop:
                continue
            loop_out = work / f"loop-x{scale}-{repeat}"
            loop_out.mkdir()
            measured = run_measured([
                sys.executable, __file__, "--bare-loop", str(catalog), str(loop_out), "--bert-handle",
                args.bert_handle, "--image-size", str(args.image_size), "--max-seq-length", str(args.max_seq_length),
                "--processes", str(args.processes),
            ])
            assert json.loads(measured[3].strip().splitlines()[-1])["kept"] == rows
            _report(f"bare loop ({args.processes} processes)", scale, rows, measured, best)
    print("best:")
    for (name, scale), (wall, cpu, peak) in best.items():
        print(f"  {name:32s} x{scale}: {sizes[scale]:6d} rows {wall:7.1f} s {sizes[scale] / wall:7.1f} rows/s "
              f"CPU {cpu:7.1f} s  peak memory {peak / 2**20:6.0f} MiB")
    low, high = min(sizes), max(sizes)
    if high > low:
        for name in dict.fromkeys(name for name, _ in best):
            extra_rows, extra_wall = sizes[high] - sizes[low], best[name, high][0] - best[name, low][0]
            extra_cpu = best[name, high][1] - best[name, low][1]
            print(f"  {name:32s} marginal x{low}→x{high}: {extra_rows / extra_wall:7.1f} rows/s, "
                  f"{1000 * extra_cpu / extra_rows:.2f} CPU ms per row")
    print(f"outputs under {work}")


def _report(name, scale, rows, measured, best):
    wall, cpu, peak, _ = measured
    print(f"x{scale}: {rows} rows  {name}: {wall:7.1f} s  {rows / wall:7.1f} rows/s  CPU {cpu:7.1f} s  "
          f"peak memory {peak / 2**20:6.0f} MiB", flush=True)
    if (name, scale) not in best or wall < best[name, scale][0]:
        best[name, scale] = (wall, cpu, max(peak, best.get((name, scale), (0, 0, 0))[2]))


if __name__ == "__main__":
    main()
