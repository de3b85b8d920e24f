"""Why does a fusion head do what it does? Variants of the heads on a benchmark's feature cache,
scored on the VALIDATION split only (the eval split is never read here).

For each variant and seed it prints the best validation top-1 and, for the attention heads, the mean
weight the head gives the text stream on validation products (s_t; s_i = 1 - s_t under softmax), its
standard deviation over the products and the routing AUC (how well s_t separates the products only
the text head gets right from those only the image head gets right: common/metrics.roc_auc), plus
the feature scales of the two streams.

    .venv/bin/python scripts/diagnose_fusion.py --out benchmark [--seeds 3] [--variants base,stream_norm]

The heads train through the pipeline's own training loop (trainer/train.py Run, tune "frozen"), in a
work directory of their own under OUT/diagnose/.
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
from common.metrics import roc_auc  # noqa: E402
from trainer import features_cache, recipe  # noqa: E402
from trainer.model import FROZEN, ModelConfig, fusion_layer  # noqa: E402
from trainer.train import Run, TrainConfig  # noqa: E402

VARIANTS = {
    "base": {},
    "stream_norm": {"stream_norm": True},
    "unscaled_key": {"scaled": False},
    "separate_scorers": {"shared_scorer": False},
    "sigmoid_hybrid": {"hybrid_normalize": "sigmoid"},
    "sum": {"combine": "sum"},
    "width_128": {"width": 128},
    "dropout_0.5": {"dropout": 0.5},
    "stream_norm_dropout_0.5": {"stream_norm": True, "dropout": 0.5},
    "stream_dropout_0.2": {"stream_dropout": 0.2},
    "stream_dropout_0.4": {"stream_dropout": 0.4},
}


def feature_scales(cache_dir: str) -> dict:
    norms = {features.TEXT_FEATURES_KEY: [], features.IMAGE_FEATURES_KEY: []}
    for batch, _ in features_cache.make_feature_dataset(cache_dir, features.VALIDATION_SPLIT, 512, shuffle=False):
        for key in norms:
            norms[key].append(np.linalg.norm(batch[key].numpy(), axis=-1))
    return {key: float(np.concatenate(v).mean()) for key, v in norms.items()}


def text_weights(cache_dir: str, head) -> np.ndarray | None:
    """s_t of an attention head on every validation product, in the cache's order."""
    layer = fusion_layer(head)
    if not getattr(layer, "weighs_streams", False):
        return None
    weights = []
    for batch, _ in features_cache.make_feature_dataset(cache_dir, features.VALIDATION_SPLIT, 512, shuffle=False):
        scores = layer.stream_weights(batch[features.TEXT_FEATURES_KEY], batch[features.IMAGE_FEATURES_KEY])
        weights.append(scores.numpy()[:, 0])
    return np.concatenate(weights)


def right_on_validation(cache_dir: str, model) -> np.ndarray:
    """bool [products]: whether `model` (a frozen-form model) gets each validation product right."""
    right = []
    for batch, labels in features_cache.make_feature_dataset(cache_dir, features.VALIDATION_SPLIT, 512, shuffle=False):
        inputs = {k: batch[k] for k in model.input}
        right.append(np.argmax(model(inputs, training=False).numpy(), -1) == labels.numpy())
    return np.concatenate(right)


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
    metadata = features_cache.read_metadata(cache_dir)
    # The encoders that built the cache; every other model option at its default.
    base_config = ModelConfig(**metadata["encoders"])
    head_recipe = recipe.Recipe(learning_rate=args.learning_rate, epochs=args.max_epochs, batch_size=32)
    train_config = TrainConfig(tune=FROZEN, patience=args.patience, validation_fraction=metadata["validation_fraction"])
    examples = os.path.join(args.out, "preprocess")
    print(f"mean L2 norm on validation: {feature_scales(cache_dir)}")
    # The unimodal heads of each seed: which validation products only the text (image) model gets right.
    unimodal_run = Run(examples_dir=os.path.join(examples, "examples"),
                       transform_graph_dir=os.path.join(examples, "transform_graph"),
                       work_dir=os.path.join(args.out, "diagnose", "unimodal"), model_config=base_config,
                       train_config=train_config, cache_dir=cache_dir)
    decides = []
    for seed in range(args.seeds):
        right = {name: right_on_validation(cache_dir, unimodal_run.train_feature_model(
            name, head_recipe, os.path.join(unimodal_run.work_dir, f"{name}-seed{seed}"), seed=seed).model)
            for name in (features.TEXT_ONLY, features.IMAGE_ONLY)}
        decides.append((right[features.TEXT_ONLY] & ~right[features.IMAGE_ONLY],
                        ~right[features.TEXT_ONLY] & right[features.IMAGE_ONLY]))
    print("| model | variant | validation top-1 (mean ± std) | mean text weight s_t | std of s_t | routing AUC |")
    print("|---|---|---|---|---|---|")
    for model_name in args.models.split(","):
        for variant in args.variants.split(","):
            config = dataclasses.replace(base_config, head=dataclasses.replace(base_config.head, **VARIANTS[variant]))
            run = Run(examples_dir=os.path.join(examples, "examples"),
                      transform_graph_dir=os.path.join(examples, "transform_graph"),
                      work_dir=os.path.join(args.out, "diagnose", variant), model_config=config,
                      train_config=train_config, cache_dir=cache_dir)
            accuracies, weights, aucs = [], [], []
            for seed in range(args.seeds):
                trained = run.train_feature_model(model_name, head_recipe,
                                                  os.path.join(run.work_dir, f"{model_name}-seed{seed}"), seed=seed)
                accuracies.append(trained.validation_accuracy)
                s_t = text_weights(cache_dir, trained.model)
                weights.append(s_t)
                if s_t is not None:
                    text_decides, image_decides = decides[seed]
                    aucs.append(roc_auc(s_t[text_decides], s_t[image_decides]))
            spread = np.std(accuracies, ddof=1) if len(accuracies) > 1 else 0.0
            routing = ("– | – | –" if weights[0] is None else
                       f"{np.mean([w.mean() for w in weights]):.3f} | {np.mean([w.std() for w in weights]):.3f} | "
                       f"{np.mean(aucs):.3f}")
            print(f"| {model_name} | {variant} | {100 * np.mean(accuracies):.2f} ± {100 * spread:.2f} "
                  f"| {routing} |", flush=True)


if __name__ == "__main__":
    main()
