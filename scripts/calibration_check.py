"""Calibration of exported models, before and after temperature scaling, on a preprocessed catalog:

    .venv/bin/python scripts/calibration_check.py --examples DIR/examples --transform-graph DIR/transform_graph \
        --model work/model --model work/text_model [--validation-fraction 0.125] [--json out.json]

For each model: its uncalibrated logits (the `logits` output of TRANSFORMED_SIGNATURE) on the
validation split (carved from train by the trainer's hash of the id: pass the fraction the model was
trained with, so these products were held out) → trainer.calibration.fit → the temperature and review
thresholds; then one streamed pass over the eval split gives ECE, NLL, Brier and coverage at 95/98/99 %
before and after, and what the 98 % review threshold does on eval: what the trainer and the evaluate
stage compute, for a model exported without calibration. Top-1 is the same before and after (T > 0).
Next to the ECE after calibration, its noise floor: the mean ECE of a perfectly calibrated model with
the same calibrated scores on as many products (right with probability = its score; SIMULATIONS
draws), below which an ECE says nothing. The logits are held in memory (products × classes float32).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from common import features  # noqa: E402
from common.metrics import TARGET_PRECISIONS, precision_name  # noqa: E402
from components.evaluate import ModelCalibration  # noqa: E402
from trainer import calibration as calibrations  # noqa: E402
from trainer import data  # noqa: E402

SIMULATIONS = 200


def ece_noise_floor(logits: np.ndarray, temperature: float, seed: int = 0) -> float:
    """Mean ECE over SIMULATIONS label draws where each product is right with probability its
    calibrated top-1 score (wrong: the second class)."""
    from common.metrics import CalibrationCounts
    from scipy.special import softmax

    z = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-z, -1)
    confidence = softmax(z, -1)[np.arange(len(z)), order[:, 0]]
    rng = np.random.default_rng(seed)
    eces = []
    for _ in range(SIMULATIONS):
        counts = CalibrationCounts()
        counts.add(z, np.where(rng.random(len(z)) < confidence, order[:, 0], order[:, 1]))
        eces.append(counts.ece())
    return float(np.mean(eces))


def logits_of(model_dir: str, examples_dir: str, spec: dict, split: str, validation_fraction: float):
    """(logits [n, classes], labels [n]) of one split through the model's TRANSFORMED_SIGNATURE."""
    signature = tf.saved_model.load(model_dir).signatures[features.TRANSFORMED_SIGNATURE]
    inputs = list(signature.structured_input_signature[1])
    source, keep = data.split_predicate(split, validation_fraction)
    records = data.select(data.read_records(os.path.join(examples_dir, source, "*"), shuffle=False), keep)
    logits, labels = [], []
    for batch in records.batch(256).map(lambda s: tf.io.parse_example(s, spec)):
        logits.append(signature(**{k: batch[k] for k in inputs})[features.OUTPUT_LOGITS_KEY].numpy())
        labels.append(batch[features.LABEL_ID_KEY].numpy())
    return np.concatenate(logits), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", required=True)
    parser.add_argument("--transform-graph", required=True)
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--validation-fraction", type=float, default=0.125)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    spec = tft.TFTransformOutput(args.transform_graph).transformed_feature_spec()
    spec = {k: spec[k] for k in (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY, features.ID_KEY)}
    results = {}
    for model_dir in args.model:
        z, y = logits_of(model_dir, args.examples, spec, features.VALIDATION_SPLIT, args.validation_fraction)
        fitted = calibrations.fit(z, y)
        on_eval = ModelCalibration(fitted)
        eval_logits, eval_labels = logits_of(model_dir, args.examples, spec, features.EVAL_SPLIT, args.validation_fraction)
        on_eval.add(eval_logits, eval_labels)
        figures = on_eval.figures()
        floor = ece_noise_floor(eval_logits, fitted.temperature)
        results[model_dir] = {"validation_products": len(y), "calibration": fitted.to_json(), "eval": figures,
                              "ece_noise_floor": floor}
        review = figures["review"]
        print(f"{model_dir}: validation {len(y)} products, T = {fitted.temperature:.3f}; eval {on_eval.after.examples} "
              f"products, top-1 {figures['accuracy']:.4f}")
        print(f"  {'':12} {'ECE':>7} {'NLL':>7} {'Brier':>7} {'mean c':>7} "
              + " ".join(f"{'cov@' + precision_name(p):>8}" for p in TARGET_PRECISIONS))
        for label, suffix in (("before", "_uncalibrated"), ("after", "")):
            print(f"  {label:12} {100 * figures['ece' + suffix]:6.2f}% {figures['nll' + suffix]:7.4f} "
                  f"{figures['brier' + suffix]:7.4f} {100 * figures['mean_confidence' + suffix]:6.2f}% "
                  + " ".join(f"{100 * figures[f'coverage_at_{precision_name(p)}' + suffix]:7.2f}%" for p in TARGET_PRECISIONS))
        print(f"  ECE of a perfectly calibrated model with these scores on {on_eval.after.examples} products: "
              f"{100 * floor:.2f}% (mean of {SIMULATIONS} draws)")
        threshold = "none reached" if review["threshold"] is None else f"{review['threshold']:.4f}"
        precision = "-" if review["auto_precision"] is None else f"{100 * review['auto_precision']:.2f}%"
        print(f"  review threshold (98 % on validation) {threshold}: on eval {100 * review['auto_share']:.2f}% filed "
              f"automatically at precision {precision}, {100 * review['review_share']:.2f}% to review")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
