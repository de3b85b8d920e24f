"""`python -m pipeline predict-catalog`: every product of a catalog through a trained model, as a Beam job.

    python -m pipeline predict-catalog --model MODEL_DIR --catalog CATALOG --output DIR [--top-k 5]
        [--label-column COLUMN] [--format jsonl|parquet] [--runner ...] [BEAM OPTION ...]

writes DIR/predictions/part-*.jsonl (or .parquet), DIR/quarantine.jsonl and DIR/metrics.json, and prints
the counts. Options this command does not know are Beam pipeline options and go to the runner unchanged.
"""
from __future__ import annotations

import argparse
import traceback

from common import features
from components.batch_predict import DEFAULT_BATCH_SIZE, FORMATS, JSONL
from components.preprocess import row_checks
from components.preprocess.catalog import (
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_TEXT_SEPARATOR,
    DEFAULT_TITLE_COLUMN,
    split_column_list,
)
from pipeline import cli


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def register(commands) -> None:
    parser = commands.add_parser(
        "predict-catalog",
        help="predict every product of a catalog with a trained model (a Beam job)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --option is a Beam pipeline option, passed to the runner unchanged.",
        # A Beam option must never be taken for an abbreviation of one of this command's.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model", required=True, metavar="MODEL_DIR",
        help=f"a pushed version (SERVING_BASE/{features.MODEL_NAME}/N), a model base (SERVING_BASE/"
             f"{features.MODEL_NAME}: its newest version) or a model artifact; a path or URI",
    )
    parser.add_argument("--catalog", required=True, help="CSV, JSON Lines or TFRecord (tf.Example) file, URI or glob")
    parser.add_argument("--output", required=True, metavar="DIR", help="where predictions/, quarantine.jsonl, metrics.json go")
    parser.add_argument("--top-k", type=_positive, default=features.DEFAULT_TOP_K, help="classes written per product")
    parser.add_argument("--label-column", help="a column of true classes: accuracy, top-5 and macro-F1 in metrics.json")
    parser.add_argument("--format", dest="output_format", choices=FORMATS, default=JSONL, help="of the prediction files")
    parser.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE, help="products per model call")
    parser.add_argument("--large-model", action="store_true",
                        help="one copy of the model per machine, shared by the runner's worker processes")
    parser.add_argument("--id-column", default=DEFAULT_ID_COLUMN)
    parser.add_argument("--title-column", default=DEFAULT_TITLE_COLUMN)
    parser.add_argument("--image-column", default=DEFAULT_IMAGE_COLUMN, help="image path/URI, or the encoded image in a tf.Example")
    parser.add_argument("--extra-text-columns", default="", help="comma-separated columns appended to the title, as in training")
    parser.add_argument("--text-separator", default=DEFAULT_TEXT_SEPARATOR, help="put between the title and each extra text")
    parser.add_argument("--max-image-pixels", type=_positive, default=row_checks.DEFAULT_MAX_IMAGE_PIXELS,
                        help="larger images (by their header) are quarantined before decoding")
    parser.add_argument("--runner", default="DirectRunner", help="DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...")
    parser.add_argument("--traceback", action="store_true", help="on a failure of the job, print the whole traceback too")
    parser.set_defaults(func=main, takes_beam_args=True)


def _last_line(error: BaseException) -> str:
    # A runner re-raises a worker's exception with the worker's traceback in its message; its last line
    # is the exception itself, with the failed step.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if len(lines) > 1 and ": " in lines[-1] else f"{type(error).__name__}: {lines[-1]}"


def main(args: argparse.Namespace) -> None:
    from components.batch_predict import job
    from components.batch_predict.model import ModelError
    from components.preprocess.catalog import CatalogError

    beam_args = [f"--runner={args.runner}", *getattr(args, "beam_args", [])]
    try:
        result = job.predict_catalog_to_dir(
            output_dir=args.output,
            catalog=args.catalog,
            model_dir=args.model,
            label_column=args.label_column,
            id_column=args.id_column,
            title_column=args.title_column,
            image_column=args.image_column,
            extra_text_columns=split_column_list(args.extra_text_columns),
            text_separator=args.text_separator,
            top_k=args.top_k,
            output_format=args.output_format,
            batch_size=args.batch_size,
            large_model=args.large_model,
            max_image_pixels=args.max_image_pixels,
            beam_args=beam_args,
        )
    except (CatalogError, ModelError, job.BatchPredictError) as e:
        raise cli.UserError(str(e)) from None
    except Exception as e:
        # A bad row never gets here (it is quarantined): this is the job itself failing, e.g. a catalog
        # file that stops being readable, or an output that cannot be written part-way through.
        if args.traceback:
            traceback.print_exc()
        raise cli.UserError(f"the batch prediction job failed: {_last_line(e)} (--traceback shows where)") from None
    print(job.format_counts(result.metrics))
    print(f"predictions: {result.predictions_dir}")
    print(f"quarantine: {result.quarantine_file}")
    print(f"metrics: {result.metrics_file}")
