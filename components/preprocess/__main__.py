"""`python -m components.preprocess`: the preprocess stage on its own, without Kubeflow.

    python -m components.preprocess --catalog CATALOG --label-column COLUMN --output-dir DIR [--runner ...]

writes DIR/examples/{train,eval}/part-*.tfrecord.gz, DIR/transform_graph/, DIR/quarantine.jsonl and
DIR/metrics.json, and prints the counts. Arguments this command does not know are Beam pipeline
options and go to the runner unchanged (e.g. `--runner DataflowRunner --project P --region R
--temp_location gs://...`). The defaults are run-local's (pipeline/config.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback

# Must precede the first `import tensorflow`, here and in the Beam worker processes (which inherit it).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.preprocess import row_checks  # noqa: E402
from components.preprocess.catalog import CatalogColumns, CatalogError, split_column_list  # noqa: E402
from common import cli  # noqa: E402
from common.params import local_params  # noqa: E402

def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    defaults = local_params()
    p = argparse.ArgumentParser(
        prog="python -m components.preprocess",
        description="Catalog → validated, split, transformed TFRecords + transform graph, quarantine and metrics.",
        epilog="Any other --option is a Beam pipeline option, passed to the runner unchanged.",
    )
    p.add_argument("--catalog", required=True, help="CSV, JSON Lines or TFRecord (tf.Example) file, URI or glob")
    p.add_argument("--label-column", required=True, help="the column holding the category")
    p.add_argument("--output-dir", required=True, help="where examples/, transform_graph/, quarantine.jsonl, metrics.json go")
    p.add_argument("--id-column", default=defaults.id_column)
    p.add_argument("--title-column", default=defaults.title_column)
    p.add_argument("--image-column", default=defaults.image_column, help="image path/URI, or the encoded image in a tf.Example")
    p.add_argument("--extra-text-columns", default=defaults.extra_text_columns,
                   help="comma-separated columns appended to the title (e.g. description)")
    p.add_argument("--text-separator", default=defaults.text_separator, help="put between the title and each extra text")
    p.add_argument("--bert-handle", default=defaults.bert_handle, help="TF-Hub BERT encoder whose vocabulary tokenizes")
    p.add_argument("--image-size", type=_positive, default=defaults.image_size)
    p.add_argument("--max-seq-length", type=_positive, default=defaults.max_seq_length)
    p.add_argument("--eval-fraction", type=_fraction, default=defaults.eval_fraction)
    p.add_argument("--label-min-count", type=_positive, default=defaults.label_min_count,
                   help="labels seen fewer times in train share the out-of-vocabulary bucket")
    p.add_argument("--max-image-pixels", type=_positive, default=row_checks.DEFAULT_MAX_IMAGE_PIXELS,
                   help="larger images (by their header) are quarantined before decoding")
    p.add_argument("--runner", default="DirectRunner",
                   help="DirectRunner (one process per core), DataflowRunner, FlinkRunner or SparkRunner")
    p.add_argument("--traceback", action="store_true", help="on a failure of the job, print the whole traceback too")
    return p


def run(args: argparse.Namespace, beam_args: list[str]):
    # The catalog is checked by the stage itself (globs, formats, columns), with its own messages.
    cli.check_local_inputs(bert_handle=args.bert_handle)
    columns = CatalogColumns(
        label=args.label_column,
        id=args.id_column,
        title=args.title_column,
        image=args.image_column,
        extra_text=split_column_list(args.extra_text_columns),
        text_separator=args.text_separator,
    )
    from components.preprocess import job

    return job.preprocess_to_dir(
        catalog=args.catalog,
        columns=columns,
        output_dir=args.output_dir,
        bert_handle=args.bert_handle,
        max_seq_length=args.max_seq_length,
        image_size=args.image_size,
        label_min_count=args.label_min_count,
        eval_fraction=args.eval_fraction,
        max_image_pixels=args.max_image_pixels,
        beam_args=[f"--runner={args.runner}", *beam_args],
    )


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parser().parse_known_args(argv)
    from components.preprocess.job import PreprocessError, format_counts

    try:
        with cli.beam_tracebacks_dropped(not args.traceback):
            result = run(args, beam_args)
    except (cli.UserError, CatalogError, PreprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        # A bad row never gets here (it is quarantined); this is the job itself failing, e.g. a catalog
        # file that cannot be read or an output that cannot be written part-way through.
        if args.traceback:
            traceback.print_exc()
        print(f"error: the preprocess job failed: {cli.one_line(e)} (--traceback shows where)", file=sys.stderr)
        return 1
    print(format_counts(result.metrics))
    print(f"examples: {result.examples_dir}\ntransform graph: {result.transform_graph_dir}")
    print(f"quarantine: {result.quarantine_file}\nmetrics: {result.metrics_file}")
    print(f"label vocabulary: {result.label_vocabulary_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
