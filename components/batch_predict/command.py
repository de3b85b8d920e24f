"""`python -m pipeline predict-catalog`: every product of a catalog through a trained model, as a Beam job.

    python -m pipeline predict-catalog --model MODEL_DIR --catalog CATALOG --output DIR [--top-k 5]
        [--label-column COLUMN] [--format jsonl|parquet] [--runner ...] [BEAM OPTION ...]

writes DIR/predictions/part-*.jsonl (or .parquet), DIR/quarantine.jsonl and DIR/metrics.json, and prints
the counts. Options this command does not know are Beam pipeline options and go to the runner unchanged.
"""
from __future__ import annotations

import argparse
import traceback

from common import cli, features
from common.params import BatchPredictParams, help_text
from components.preprocess.catalog import split_column_list


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
    # The options the batch pipeline has too: its parameters' defaults and help (common/params.py).
    defaults = BatchPredictParams()

    def same_as_pipeline(name: str, flag: str | None = None, **kwargs) -> None:
        parser.add_argument(flag or "--" + name.replace("_", "-"), dest=name, default=getattr(defaults, name),
                            help=help_text(BatchPredictParams, name).replace("%", "%%"), **kwargs)

    same_as_pipeline("top_k", type=_positive)
    parser.add_argument("--label-column", help=help_text(BatchPredictParams, "label_column"))
    same_as_pipeline("output_format", "--format", choices=features.PREDICTION_FORMATS)
    same_as_pipeline("batch_size", type=_positive)
    parser.add_argument("--large-model", action="store_true",
                        help="one copy of the model per machine, shared by the runner's worker processes")
    for name in ("id_column", "title_column", "image_column", "extra_text_columns", "text_separator"):
        same_as_pipeline(name)
    same_as_pipeline("max_image_pixels", type=_positive)
    parser.add_argument("--runner", default="DirectRunner", help="DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...")
    parser.add_argument("--traceback", action="store_true", help="on a failure of the job, print the whole traceback too")
    parser.set_defaults(func=main, takes_beam_args=True)


def main(args: argparse.Namespace) -> None:
    from components.batch_predict import job
    from components.batch_predict.model import ModelError
    from components.preprocess.catalog import CatalogError

    beam_args = [f"--runner={args.runner}", *getattr(args, "beam_args", [])]
    try:
        with cli.beam_tracebacks_dropped(not args.traceback):
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
        raise cli.UserError(f"the batch prediction job failed: {cli.one_line(e)} (--traceback shows where)") from None
    print(job.format_counts(result.metrics))
    print(f"predictions: {result.predictions_dir}")
    print(f"quarantine: {result.quarantine_file}")
    print(f"metrics: {result.metrics_file}")
