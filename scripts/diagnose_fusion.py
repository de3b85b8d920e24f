"""Why does a fusion head do what it does? Variants of the heads on a benchmark's feature cache,
scored on the VALIDATION split only (the eval split is never read here).

For each variant and seed it prints the best validation top-1 and, for the attention heads, the mean
weight the head gives the text stream on validation products (s_t; s_i = 1 - s_t under softmax),
plus the feature scales of the two streams.

    .venv/bin/python scripts/diagnose_fusion.py --out benchmark [--seeds 3] [--variants base,stream_norm]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import features  # noqa: E402
from trainer import ablation, features_cache, fusion  # noqa: E402
from trainer.model import ModelConfig, fusion_layer  # noqa: E402

VARIANTS = {
    "base": {},
    "stream_norm": {"stream_norm": True},
    "unscaled_key": {"scaled": False},
    "separate_scorers": {"shared_scorer": False},
    "sigmoid_hybrid": {"hybrid_normalize": "sigmoid"},
    "sum": {"combine": "sum"},
    "width_128": {"fusion_width": 128},
    "dropout_0.5": {"dropout": 0.5},
    "stream_norm_dropout_0.5": {"stream_norm": True, "dropout": 0.5},
}


def feature_scales(cache_dir: str) -> dict:
    norms = {features.TEXT_FEATURES_KEY: [], features.IMAGE_FEATURES_KEY: []}
    for batch, _ in features_cache.make_feature_dataset(cache_dir, ablation.VALIDATION_SPLIT, 512, shuffle=False):
        for key in norms:
            norms[key].append(np.linalg.norm(batch[key].numpy(), axis=-1))
    return {key: float(np.concatenate(v).mean()) for key, v in norms.items()}


def mean_text_weight(cache_dir: str, head) -> float | None:
    layer = fusion_layer(head)
    if getattr(layer, "fusion", None) not in (fusion.KEYLESS, fusion.KEY_BASED, fusion.HANET):
        return None
    weights = []
    for batch, _ in features_cache.make_feature_dataset(cache_dir, ablation.VALIDATION_SPLIT, 512, shuffle=False):
        f_t, f_i = batch[features.TEXT_FEATURES_KEY], batch[features.IMAGE_FEATURES_KEY]
        if layer.stream_norm:
            f_t, f_i = layer.text_norm(f_t), layer.image_norm(f_i)
        _, _, scores = layer.attention_scores(f_t, f_i)
        weights.append(scores.numpy()[:, 0])
    return float(np.concatenate(weights).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a `python -m pipeline benchmark` output directory")
    parser.add_argument("--models", default="concat,keyless,key_based,hanet")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    args = parser.parse_args()
    cache_dir = os.path.join(args.out, "feature_cache")
    # The encoders that built the cache; every other model option at its default.
    base_config = ModelConfig(**features_cache.read_metadata(cache_dir)["encoders"])
    ablation_config = ablation.AblationConfig(max_epochs=args.max_epochs, patience=args.patience)
    from tensorflow_transform import TFTransformOutput

    from common.labels import num_classes as count_classes

    num_classes = count_classes(TFTransformOutput(os.path.join(args.out, "preprocess", "transform_graph")))
    print(f"mean L2 norm on validation: {feature_scales(cache_dir)}")
    print("| model | variant | validation top-1 (mean ± std) | mean text weight s_t |")
    print("|---|---|---|---|")
    for model_name in args.models.split(","):
        rate = args.learning_rate
        for variant in args.variants.split(","):
            config = dataclasses.replace(base_config, **VARIANTS[variant])
            trainer = ablation.HeadTrainer(cache_dir, config, num_classes, ablation_config)
            accuracies, weights = [], []
            for seed in range(args.seeds):
                fitted = trainer.fit(model_name, seed, rate)
                accuracies.append(fitted.best_validation_accuracy)
                weights.append(mean_text_weight(cache_dir, fitted.head))
            weight = "–" if weights[0] is None else f"{np.mean(weights):.3f}"
            print(f"| {model_name} | {variant} | {100 * np.mean(accuracies):.2f} ± {100 * np.std(accuracies, ddof=1):.2f} "
                  f"| {weight} |", flush=True)


if __name__ == "__main__":
    main()
