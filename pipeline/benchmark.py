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

from common import console
from common.params import local_params
from pipeline import cli

RESULTS_MARKDOWN = "results.md"
RESULTS_JSON = "results.json"
PREPROCESS_DIR = "preprocess"
LOG_FILE = os.path.join("logs", "benchmark.log")


def register(commands) -> None:
    local = local_params()
    parser = commands.add_parser("benchmark", help="reproduce the paper's Tables 1-3 on a catalog")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--label-column", required=True)
    parser.add_argument("--extra-text-columns", default="", help="comma-separated columns joined to the title")
    parser.add_argument("--out", default="benchmark", help="results, splits, feature cache (reused if present)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--models", default="", help="comma-separated fusions (default: every model of the paper)")
    parser.add_argument("--tune", default="frozen,top", help="comma-separated tune modes: frozen, top")
    # Unset training flags take trainer.ablation.AblationConfig's defaults.
    parser.add_argument("--learning-rates", default=None, help="heads' candidates, chosen on validation")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--patience", type=int, default=None, help="early stopping on validation top-1")
    parser.add_argument("--top-learning-rates", default=None, help="fine-tuning candidates of tune top, for every model "
                        "(default: 3e-4 for the unimodal models, 1e-4 for the fusions)")
    parser.add_argument("--top-epochs", type=int, default=None)
    parser.add_argument("--top-patience", type=int, default=None)
    parser.add_argument("--crossfit-folds", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baselines (tfidf_svm, tfidf_image_poe)")
    parser.add_argument("--validation-fraction", type=float, default=None, help="of the train split")
    parser.add_argument("--eval-fraction", type=float, default=local.eval_fraction)
    parser.add_argument("--bert-handle", default=local.bert_handle)
    parser.add_argument("--text-pooling", default=local.text_pooling)
    parser.add_argument("--image-weights", default=local.image_weights)
    parser.add_argument("--image-variant", default=local.image_variant)
    parser.add_argument("--image-size", type=int, default=224, help="the paper's EfficientNet-B0 input")
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], help="a Beam pipeline option")
    parser.add_argument("--verbose", action="store_true", help="print every library's output too, not only progress")
    parser.set_defaults(func=main)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags whose defaults are the trainer's (ModelConfig, HeadConfig): they import TensorFlow, tens
    of seconds, so they are added only when the benchmark is the command being run (pipeline/__main__.py)."""
    from trainer.model import ModelConfig

    parser.add_argument("--text-top-blocks", type=int, default=ModelConfig().text_top_blocks)
    parser.add_argument("--image-top-blocks", type=int, default=ModelConfig().image_top_blocks)
    cli.add_head_flags(parser)


def _ablation():
    from trainer import ablation

    return ablation


def _candidates(rates: tuple[float, ...]) -> str:
    return f"{rates[0]:g}" if len(rates) == 1 else f"chosen on validation from {', '.join(f'{r:g}' for r in rates)}"


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise cli.UserError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def main(args: argparse.Namespace) -> None:
    cli.check_local_inputs(args.catalog, args.bert_handle, args.image_weights)
    # From here TensorFlow is imported, whose C++ logs go to the log with the rest.
    with console.quiet(os.path.join(args.out, LOG_FILE), args.verbose):
        summary, markdown = run_benchmark(args, *_configs(args))
    print(markdown)
    print(f"wrote {os.path.join(args.out, RESULTS_MARKDOWN)} and {os.path.join(args.out, RESULTS_JSON)}")


def _configs(args: argparse.Namespace):
    """(AblationConfig, ModelConfig) of the command line; flags not given take AblationConfig's defaults."""
    from trainer.model import ModelConfig

    ablation = _ablation()
    try:
        top_rates = args.top_learning_rates and _floats(args.top_learning_rates, "--top-learning-rates")
        given = {
            "learning_rates": args.learning_rates and _floats(args.learning_rates, "--learning-rates"),
            "top_unimodal_learning_rates": top_rates,
            "top_fusion_learning_rates": top_rates,
            "max_epochs": args.max_epochs,
            "patience": args.patience,
            "top_epochs": args.top_epochs,
            "top_patience": args.top_patience,
            "crossfit_folds": args.crossfit_folds,
            "batch_size": args.batch_size,
            "validation_fraction": args.validation_fraction,
        }
        ablation_config = ablation.AblationConfig(
            models=tuple(m for m in args.models.split(",") if m) or ablation.PAPER_MODELS,
            seeds=tuple(range(args.seeds)),
            tunes=tuple(t for t in args.tune.split(",") if t),
            baseline=args.baseline,
            **{k: v for k, v in given.items() if v is not None},
        )
        model_config = ModelConfig(
            bert_handle=args.bert_handle,
            text_pooling=args.text_pooling,
            image_weights=args.image_weights or None,
            image_variant=args.image_variant,
            image_size=args.image_size,
            max_seq_length=args.max_seq_length,
            text_top_blocks=args.text_top_blocks,
            image_top_blocks=args.image_top_blocks,
            head=cli.head_config_from_args(args),
        )
    except ValueError as e:
        raise cli.UserError(str(e)) from None
    return ablation_config, model_config


def _preprocess(args: argparse.Namespace, model_config, out: str) -> dict:
    """The preprocess stage once, into OUT/preprocess/ (the standalone command's layout); reused if done."""
    from components.preprocess.catalog import CatalogColumns, split_column_list
    from components.preprocess.job import METRICS_FILE, preprocess_to_dir

    metrics_file = os.path.join(out, PREPROCESS_DIR, METRICS_FILE)
    if not os.path.exists(metrics_file):
        preprocess_to_dir(
            catalog=os.path.abspath(args.catalog) if "://" not in args.catalog else args.catalog,
            columns=CatalogColumns(label=args.label_column, extra_text=split_column_list(args.extra_text_columns)),
            output_dir=os.path.join(out, PREPROCESS_DIR),
            bert_handle=model_config.bert_handle,
            max_seq_length=model_config.max_seq_length,
            image_size=model_config.image_size,
            eval_fraction=args.eval_fraction,
            beam_args=args.beam_args,
        )
    with open(metrics_file) as f:
        return json.load(f)


def evaluate_models(run, models: dict) -> dict:
    """One streamed pass over the eval split for all `models` (trainer Trained, one form), each through
    the evaluate stage's EvalFigures: {model: {top1_accuracy, top5_accuracy, macro_f1, examples, ece,
    coverage_at_98, threshold_at_98, temperature}} and, with both unimodal models, "table1" per model.
    Scores are calibrated as the exported model's are: a temperature fitted on the validation split."""
    import tensorflow as tf

    from common import calibration, features
    from components.evaluate import EvalFigures, ModelCalibration
    from trainer.model import explained_model
    from trainer.stages import EVAL_BATCH_SIZE

    forms = {t.form for t in models.values()}
    if len(forms) != 1:
        raise ValueError(f"models of one pass must share a form, got {forms}")
    # No validation split: no calibration, as the exporter does.
    fitted = {name: run.calibrate(t) or calibration.Calibration() for name, t in models.items()}
    logits = {}  # the batch's logits of every model: Table 1 reads the unimodal models' beside each model's
    unimodal = all(m in models for m in features.UNIMODAL_FUSIONS)

    def stage_logits(stage: str):
        return lambda batch: {features.OUTPUT_LOGITS_KEY: logits[stage]}

    names = [str(i) for i in range(run.classes)]  # per-class tables are not reported
    figures = {name: EvalFigures(names, ModelCalibration(fitted[name]), {
        stage: (stage_logits(stage), ModelCalibration(fitted[stage])) for stage in features.UNIMODAL_FUSIONS
    } if unimodal else {}, samples_per_kind=0) for name in models}
    # With the stream weights of the heads that weigh the streams: their spread and routing AUC.
    predict = {name: tf.function(lambda inputs, m=explained_model(t.model): m(inputs, training=False))
               for name, t in models.items()}
    inputs_of = {name: list(t.model.input) for name, t in models.items()}
    needed = sorted(set().union(*inputs_of.values()))  # the lexical expert's scores are an input when one reads them
    for inputs, labels in run.dataset(forms.pop(), features.EVAL_SPLIT, EVAL_BATCH_SIZE, shuffle=False,
                                      input_names=needed):
        outputs = {name: predict[name]({k: inputs[k] for k in inputs_of[name]}) for name in models}
        logits.update({name: outputs[name]["logits"].numpy() for name in models})
        for name in models:
            out = {features.OUTPUT_LOGITS_KEY: logits[name]}
            if "stream_weights" in outputs[name]:
                weights = outputs[name]["stream_weights"].numpy()
                out[features.OUTPUT_TEXT_WEIGHT_KEY], out[features.OUTPUT_IMAGE_WEIGHT_KEY] = weights[:, 0], weights[:, 1]
                if weights.shape[1] > 2:  # the expert fusions: the lexical expert's share, part of s_t
                    out[features.OUTPUT_LEXICAL_WEIGHT_KEY] = weights[:, 2]
            figures[name].add({features.LABEL_ID_KEY: labels}, out)
    results = {}
    for name, f in figures.items():
        calibrated = f.calibration.figures()
        results[name] = {**f.counts.metrics(), **{k: calibrated[k] for k in (
            "ece", "coverage_at_98", "threshold_at_98", "temperature")}}
        if f.routing:
            results[name]["routing"] = f.routing.figures()
    if unimodal:
        results["table1"] = {name: f.agreement.table() for name, f in figures.items()}
    return results


def _facts(args: argparse.Namespace, ablation_config, model_config, metadata: dict, preprocess_metrics: dict,
           seconds: dict) -> dict:
    """The report's list of what was run, on what, and how long it took."""
    import tensorflow as tf

    sizes = metadata["split_sizes"]
    tunes = ", ".join(ablation_config.tunes)
    return {
        "command": "`python -m pipeline benchmark " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["benchmark"]
                                                              else sys.argv[1:]) + "`",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"{'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}, "
                   f"Python {platform.python_version()}, TensorFlow {tf.__version__}",
        "catalog rows": f"{preprocess_metrics['rows_in']} in, quarantined "
                        f"{sum(preprocess_metrics['quarantined'].values())}, "
                        f"{preprocess_metrics['label_vocabulary_size']} labels in the train vocabulary "
                        f"(+1 out-of-vocabulary class)",
        "splits": f"train {sizes['train']}, validation {sizes['validation']} "
                  f"(choices only), eval {sizes['eval']} (reported once per seed and tune)",
        "encoders": f"text `{model_config.bert_handle}` ({model_config.text_pooling} pooling, "
                    f"{metadata['text_dim']}-d, {model_config.max_seq_length} tokens); image "
                    f"EfficientNet-{model_config.image_variant} `{model_config.image_weights}` "
                    f"({metadata['image_dim']}-d, {model_config.image_size}px); tunes {tunes}",
        "top": f"the last {model_config.text_top_blocks} BERT block(s) and the last "
               f"{model_config.image_top_blocks} EfficientNet block(s) (+ its 1x1 head convolution) fine-tune "
               f"on cached inputs ({metadata.get('image_map_shape')} feature map), after the head's "
               f"frozen phase; AdamW, ≤{ablation_config.top_epochs} epochs, patience "
               f"{ablation_config.top_patience}, learning rate "
               f"{_candidates(ablation_config.top_unimodal_learning_rates)} for the unimodal models and "
               f"{_candidates(ablation_config.top_fusion_learning_rates)} for the feature fusions",
        "heads": f"AdamW (weight decay {ablation_config.weight_decay}, 10% warm-up), batch "
                 f"{ablation_config.batch_size}, ≤{ablation_config.max_epochs} epochs with early stopping "
                 f"(patience {ablation_config.patience}) on validation top-1; learning rate per model from "
                 f"{list(ablation_config.learning_rates)} on validation with seed {ablation_config.seeds[0]}; "
                 f"{model_config.head}; decision-level heads cross-fitted over {ablation_config.crossfit_folds} "
                 f"folds, each for the epochs its whole-split model kept (or in-sample where that won on validation)",
        "time": ", ".join(f"{phase} {value:.0f} s" for phase, value in seconds.items())
                + f"; {sum(seconds.values()) / 60:.1f} min in all",
    }


def run_benchmark(args: argparse.Namespace, ablation_config, model_config) -> tuple[dict, str]:
    from components.preprocess import job as preprocess_job
    from trainer import ablation_report

    ablation = _ablation()
    out = os.path.abspath(args.out)
    started = time.monotonic()
    console.progress("preprocess", "started")
    preprocess_metrics = _preprocess(args, model_config, out)
    seconds = {"preprocess": time.monotonic() - started}
    console.progress("preprocess", preprocess_job.format_counts(preprocess_metrics))
    console.progress("preprocess", f"finished in {seconds['preprocess']:.0f} s")
    examples_dir = os.path.join(out, PREPROCESS_DIR, preprocess_job.EXAMPLES_DIR)
    transform_graph_dir = os.path.join(out, PREPROCESS_DIR, preprocess_job.TRANSFORM_GRAPH_DIR)
    raw = ablation.run_ablation(out, examples_dir, transform_graph_dir, model_config, ablation_config,
                                evaluate_models, log=lambda line: print(line, flush=True))
    seconds.update(raw.pop("seconds"))
    summary = ablation.summarize_all(raw, ablation_config.tunes)
    context = {"catalog": args.catalog, "label_column": args.label_column,
               "facts": _facts(args, ablation_config, model_config, raw["cache"], preprocess_metrics, seconds)}
    markdown = ablation_report.render(summary, context)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RESULTS_MARKDOWN), "w") as f:
        f.write(markdown + "\n")
    ablation.write_json(os.path.join(out, RESULTS_JSON), {
        "summary": summary, "raw": raw, "context": context, "seconds": seconds,
        "config": dataclasses.asdict(ablation_config), "model_config": dataclasses.asdict(model_config),
    })
    return summary, markdown
