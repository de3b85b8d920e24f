"""`benchmark`: the paper's Tables 1–3 on a catalog, every model on the same split and encoders.

    preprocess once → train | validation | eval → frozen-encoder feature cache once
        → every model × every seed (choices on validation) → results.md, results.json

It runs on a 2-core CPU with the local encoders (frozen encoders: one forward pass per product, then
heads train in seconds); at the paper's scale the same command runs on a GPU with the production
encoders by flags alone (--bert-handle, --image-weights imagenet --image-variant b0, --text-pooling
pooled, --image-size 224), the cache and the heads streaming from TFRecords.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

from pipeline import cli, config

RESULTS_MARKDOWN = "results.md"
RESULTS_JSON = "results.json"
PREPROCESS_DIR = "preprocess"


def register(commands) -> None:
    local = config.local_params()
    parser = commands.add_parser("benchmark", help="reproduce the paper's Tables 1-3 on a catalog")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--out", default="benchmark", help="results, splits, feature cache (reused if present)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--models", default="", help="comma-separated fusions (default: every model of the paper)")
    # Unset head-training flags take trainer.ablation.AblationConfig's defaults.
    parser.add_argument("--learning-rates", default=None, help="candidates, chosen on validation")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None, help="early stopping on validation top-1")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--validation-fraction", type=float, default=0.125, help="of the train split")
    parser.add_argument("--eval-fraction", type=float, default=local.eval_fraction)
    parser.add_argument("--bert-handle", default=local.bert_handle)
    parser.add_argument("--text-pooling", default=local.text_pooling)
    parser.add_argument("--image-weights", default=local.image_weights)
    parser.add_argument("--image-variant", default=local.image_variant)
    parser.add_argument("--image-size", type=int, default=224, help="the paper's EfficientNet-B0 input")
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--fusion-width", type=int, default=512)
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], help="a Beam pipeline option")
    parser.set_defaults(func=main)


def _ablation():
    from trainer import ablation

    return ablation


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise cli.UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def main(args: argparse.Namespace) -> None:
    from trainer.model import ModelConfig

    ablation = _ablation()
    cli.check_local_inputs(args.catalog, args.bert_handle, args.image_weights)
    try:
        given = {
            "learning_rates": args.learning_rates and _floats(args.learning_rates, "--learning-rates"),
            "max_epochs": args.max_epochs,
            "patience": args.patience,
            "batch_size": args.batch_size,
        }
        ablation_config = ablation.AblationConfig(
            models=tuple(m for m in args.models.split(",") if m) or ablation.PAPER_MODELS,
            seeds=tuple(range(args.seeds)),
            **{k: v for k, v in given.items() if v is not None},
        )
        model_config = ModelConfig(
            bert_handle=args.bert_handle,
            text_pooling=args.text_pooling,
            image_weights=args.image_weights or None,
            image_variant=args.image_variant,
            image_size=args.image_size,
            max_seq_length=args.max_seq_length,
            fusion_width=args.fusion_width,
        )
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    summary, markdown = run_benchmark(args, ablation_config, model_config)
    print(markdown)
    print(f"wrote {os.path.join(args.out, RESULTS_MARKDOWN)} and {os.path.join(args.out, RESULTS_JSON)}")


def _preprocess(args: argparse.Namespace, model_config, out: str) -> dict:
    """The preprocess stage once, into OUT/preprocess/ (the standalone command's layout); reused if done."""
    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import METRICS_FILE, preprocess_to_dir

    metrics_file = os.path.join(out, PREPROCESS_DIR, METRICS_FILE)
    if not os.path.exists(metrics_file):
        preprocess_to_dir(
            catalog=os.path.abspath(args.catalog) if "://" not in args.catalog else args.catalog,
            columns=CatalogColumns(label=args.label_column),
            output_dir=os.path.join(out, PREPROCESS_DIR),
            bert_handle=model_config.bert_handle,
            max_seq_length=model_config.max_seq_length,
            image_size=model_config.image_size,
            eval_fraction=args.eval_fraction,
            beam_args=args.beam_args,
        )
    with open(metrics_file) as f:
        return json.load(f)


def run_benchmark(args: argparse.Namespace, ablation_config, model_config) -> tuple[dict, str]:
    import tensorflow as tf
    import tensorflow_transform as tft

    from components.preprocess import job as preprocess_job
    from common import features
    from trainer import ablation_report, features_cache
    from common.labels import num_classes

    ablation = _ablation()
    out = os.path.abspath(args.out)
    started = time.monotonic()
    preprocess_metrics = _preprocess(args, model_config, out)
    preprocess_seconds = time.monotonic() - started

    examples_dir = os.path.join(out, "examples")
    if not os.path.exists(os.path.join(examples_dir, "split_sizes.json")):
        ablation.split_validation(
            os.path.join(out, PREPROCESS_DIR, preprocess_job.EXAMPLES_DIR), examples_dir, args.validation_fraction
        )
    transform_graph_dir = os.path.join(out, PREPROCESS_DIR, preprocess_job.TRANSFORM_GRAPH_DIR)
    started = time.monotonic()
    metadata = features_cache.cache_features(
        examples_dir=examples_dir,
        transform_graph_dir=transform_graph_dir,
        cache_dir=os.path.join(out, "feature_cache"),
        model_config=model_config,
        splits=(features.TRAIN_SPLIT, ablation.VALIDATION_SPLIT, features.EVAL_SPLIT),
    )
    cache_seconds = time.monotonic() - started

    started = time.monotonic()
    classes = num_classes(tft.TFTransformOutput(transform_graph_dir))
    raw = ablation.run_ablation(
        os.path.join(out, "feature_cache"), model_config, classes, ablation_config,
        log=lambda line: print(line, flush=True),
    )
    ablation_seconds = time.monotonic() - started
    summary = ablation.summarize(raw)
    sizes = metadata["split_sizes"]
    context = {
        "catalog": args.catalog,
        "label_column": args.label_column,
        "facts": {
            "command": "`python -m pipeline benchmark " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["benchmark"]
                                                                  else sys.argv[1:]) + "`",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                       f"{'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}, "
                       f"Python {platform.python_version()}, TensorFlow {tf.__version__}",
            "catalog rows": f"{preprocess_metrics['rows_in']} in, quarantined "
                            f"{sum(preprocess_metrics['quarantined'].values())}, "
                            f"{preprocess_metrics['label_vocabulary_size']} labels in the train vocabulary "
                            f"(+1 out-of-vocabulary class)",
            "splits": f"train {sizes[features.TRAIN_SPLIT]}, validation {sizes[ablation.VALIDATION_SPLIT]} "
                      f"(choices only), eval {sizes[features.EVAL_SPLIT]} (reported once per seed)",
            "encoders (frozen)": f"text `{model_config.bert_handle}` ({model_config.text_pooling} pooling, "
                                 f"{metadata['text_dim']}-d, {model_config.max_seq_length} tokens); image "
                                 f"EfficientNet-{model_config.image_variant} `{model_config.image_weights}` "
                                 f"({metadata['image_dim']}-d, {model_config.image_size}px)",
            "heads": f"AdamW (weight decay {ablation_config.weight_decay}, 10% warm-up), batch "
                     f"{ablation_config.batch_size}, ≤{ablation_config.max_epochs} epochs with early stopping "
                     f"(patience {ablation_config.patience}) on validation top-1; learning rate per model from "
                     f"{list(ablation_config.learning_rates)} on validation with seed {ablation_config.seeds[0]}; "
                     f"fusion width {model_config.fusion_width}",
            "time": f"preprocess {preprocess_seconds:.0f} s, feature cache {cache_seconds:.0f} s, "
                    f"all models × seeds {ablation_seconds:.0f} s (including the learning-rate selection)",
        },
    }
    markdown = ablation_report.render(summary, context)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RESULTS_MARKDOWN), "w") as f:
        f.write(markdown + "\n")
    ablation.write_json(os.path.join(out, RESULTS_JSON), {
        "summary": summary, "raw": raw, "context": context, "config": dataclasses.asdict(ablation_config),
        "model_config": dataclasses.asdict(model_config),
    })
    return summary, markdown
