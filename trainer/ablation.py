"""The paper's experiments (Tables 1–3) on one catalog: every model, same split, same encoders, same budget.

    transformed examples ── hash of id ──► train (fit) | validation | eval (untouched)
    frozen encoders, once per product ──► feature cache of the three splits
    for each model: learning rate chosen on validation (first seed), early stopping on validation
    for each seed: every model trained on train, then ONE streamed pass over eval for all of them
        → top-1/top-5/macro-F1 per model, Table 1 from text_only × image_only, headroom recovered

Choices are made on the validation split only; the eval split is read once per seed, after training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras

from common.metrics import ClassCounts, UnimodalAgreement, top_k_ids
from common import features
from trainer import data, features_cache, fusion
from trainer.model import ModelConfig, head_model, load_unimodal_heads
from trainer.recipe import ADAMW, Recipe

VALIDATION_SPLIT = features.VALIDATION_SPLIT
# The models of the paper's Tables 2 and 3 (key_based is the ablation between keyless and HANet).
PAPER_MODELS = (
    fusion.IMAGE_ONLY,
    fusion.TEXT_ONLY,
    fusion.DECISION_LEVEL,
    fusion.POLICY,
    fusion.CONCAT,
    fusion.KEYLESS,
    fusion.KEY_BASED,
    fusion.HANET,
)


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    models: tuple[str, ...] = PAPER_MODELS
    seeds: tuple[int, ...] = (0, 1, 2)
    # Heads start from scratch on fixed features: learning rates far above fine-tuning's 2e-5.
    # One is chosen per model on the validation split with the first seed.
    learning_rates: tuple[float, ...] = (3e-3, 1e-2)
    max_epochs: int = 30
    patience: int = 5
    batch_size: int = 32
    weight_decay: float = 0.01

    def __post_init__(self):
        unknown = [m for m in self.models if m not in fusion.FUSIONS]
        if unknown:
            raise ValueError(f"unknown models {unknown}; expected some of {fusion.FUSIONS}")
        if not self.seeds or not self.learning_rates:
            raise ValueError("at least one seed and one learning rate are needed")

    def training_order(self) -> list[str]:
        """Unimodal heads first: the decision-level heads fuse the trained unimodal heads."""
        needed = set(self.models)
        if needed & set(fusion.DECISION_FUSIONS):
            needed |= set(fusion.UNIMODAL_FUSIONS)
        return [m for m in fusion.FUSIONS if m in needed]  # FUSIONS lists the unimodal ones first


def is_validation(product_id: bytes, fraction: float) -> bool:
    """A stable hash of the id, salted so the validation set is independent of the eval split's hash."""
    digest = hashlib.sha256(b"validation:" + product_id).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_validation(examples_dir: str, output_dir: str, validation_fraction: float) -> dict[str, int]:
    """Writes OUTPUT/{train,validation}/ from the preprocess stage's train split (by a hash of the id)
    and links OUTPUT/eval to its eval split; streams, one record at a time. Returns the split sizes."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    id_spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    sizes = {features.TRAIN_SPLIT: 0, VALIDATION_SPLIT: 0}
    writers = {}
    for split in sizes:
        tf.io.gfile.makedirs(os.path.join(output_dir, split))
        writers[split] = tf.io.TFRecordWriter(os.path.join(output_dir, split, "part-00000.tfrecord.gz"), "GZIP")
    files = sorted(tf.io.gfile.glob(os.path.join(examples_dir, features.TRAIN_SPLIT, "*")))
    try:
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            product_id = tf.io.parse_single_example(record, id_spec)[features.ID_KEY].numpy()
            split = VALIDATION_SPLIT if is_validation(product_id, validation_fraction) else features.TRAIN_SPLIT
            writers[split].write(record.numpy())
            sizes[split] += 1
    finally:
        for writer in writers.values():
            writer.close()
    eval_link = os.path.join(output_dir, features.EVAL_SPLIT)
    if not os.path.lexists(eval_link):
        os.symlink(os.path.abspath(os.path.join(examples_dir, features.EVAL_SPLIT)), eval_link)
    sizes[features.EVAL_SPLIT] = data.read_split_sizes(examples_dir)[features.EVAL_SPLIT]
    data.write_split_sizes(output_dir, sizes)
    return sizes


@dataclasses.dataclass
class FittedHead:
    model: str
    seed: int
    learning_rate: float
    head: keras.Model
    best_validation_accuracy: float
    epochs_trained: int
    seconds: float


class HeadTrainer:
    """Trains fusion heads on the feature cache, with early stopping on the validation split."""

    def __init__(self, cache_dir: str, model_config: ModelConfig, num_classes: int, config: AblationConfig):
        self.cache_dir = cache_dir
        self.model_config = model_config
        self.num_classes = num_classes
        self.config = config
        self.metadata = features_cache.read_metadata(cache_dir)
        self.steps_per_epoch = math.ceil(self.metadata["split_sizes"][features.TRAIN_SPLIT] / config.batch_size)

    def fit(self, model_name: str, seed: int, learning_rate: float, unimodal: dict | None = None) -> FittedHead:
        started = time.monotonic()
        keras.utils.set_random_seed(seed)
        head = head_model(
            dataclasses.replace(self.model_config, fusion=model_name),
            self.num_classes,
            self.metadata["text_dim"],
            self.metadata["image_dim"],
        )
        if model_name in fusion.DECISION_FUSIONS:
            load_unimodal_heads(head, unimodal[fusion.TEXT_ONLY].head, unimodal[fusion.IMAGE_ONLY].head)
        recipe = Recipe(
            ADAMW,
            learning_rate=learning_rate,
            epochs=self.config.max_epochs,
            batch_size=self.config.batch_size,
            weight_decay=self.config.weight_decay,
        )
        head.compile(
            optimizer=recipe.make_optimizer(self.steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        stop = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=self.config.patience, restore_best_weights=True
        )
        history = head.fit(
            features_cache.make_feature_dataset(
                self.cache_dir, features.TRAIN_SPLIT, self.config.batch_size, shuffle=True, repeat=True, seed=seed
            ),
            validation_data=features_cache.make_feature_dataset(
                self.cache_dir, VALIDATION_SPLIT, 256, shuffle=False
            ),
            epochs=self.config.max_epochs,
            steps_per_epoch=self.steps_per_epoch,
            callbacks=[stop],
            verbose=0,
        )
        accuracies = history.history["val_accuracy"]
        return FittedHead(
            model_name,
            seed,
            learning_rate,
            head,
            float(max(accuracies)),
            len(accuracies),
            time.monotonic() - started,
        )


def select_learning_rates(trainer: HeadTrainer, config: AblationConfig, log=print) -> tuple[dict, dict]:
    """Per model, the learning rate with the best validation accuracy on the first seed.

    Returns ({model: learning rate}, {model: the first seed's FittedHead at that rate}) so the first
    seed's runs are not trained twice. Decision-level heads fuse the selected unimodal heads.
    """
    seed = config.seeds[0]
    chosen, fitted = {}, {}
    for model_name in config.training_order():
        candidates = [
            trainer.fit(model_name, seed, rate, fitted if model_name in fusion.DECISION_FUSIONS else None)
            for rate in config.learning_rates
        ]
        best = max(candidates, key=lambda c: (c.best_validation_accuracy, -c.learning_rate))
        chosen[model_name], fitted[model_name] = best.learning_rate, best
        log(
            f"[select] {model_name}: validation top-1 "
            + ", ".join(f"{c.learning_rate:g} → {c.best_validation_accuracy:.4f}" for c in candidates)
            + f"; chose {best.learning_rate:g}"
        )
    return chosen, fitted


def evaluate_heads(cache_dir: str, heads: dict[str, FittedHead], num_classes: int) -> dict:
    """One streamed pass over the cached eval split for all heads of one seed.

    Returns {model: {top1_accuracy, top5_accuracy, macro_f1, examples}} and, when both unimodal
    heads are there, "table1": the unimodal error analysis with, per cell, how often each fusion
    model is right.
    """
    counts = {name: ClassCounts(num_classes) for name in heads}
    agreements = {name: UnimodalAgreement() for name in heads}
    has_table1 = all(m in heads for m in fusion.UNIMODAL_FUSIONS)
    for batch, labels in features_cache.make_feature_dataset(cache_dir, features.EVAL_SPLIT, 512, shuffle=False):
        labels = labels.numpy()
        top = {name: top_k_ids(fitted.head(batch, training=False).numpy()) for name, fitted in heads.items()}
        for name in heads:
            counts[name].add(labels, top[name])
            if has_table1:
                agreements[name].add(
                    labels, top[fusion.TEXT_ONLY][:, 0], top[fusion.IMAGE_ONLY][:, 0], top[name][:, 0]
                )
    results = {name: counts[name].metrics() for name in heads}
    if has_table1:
        results["table1"] = {name: agreements[name].table() for name in heads}
    return results


def run_ablation(
    cache_dir: str, model_config: ModelConfig, num_classes: int, config: AblationConfig, log=print
) -> dict:
    """Every model × every seed on the feature cache; returns the raw results (see `summarize`)."""
    trainer = HeadTrainer(cache_dir, model_config, num_classes, config)
    learning_rates, first_seed = select_learning_rates(trainer, config, log)
    runs = []
    for seed in config.seeds:
        heads = dict(first_seed) if seed == config.seeds[0] else {}
        for model_name in config.training_order():
            if model_name not in heads:
                heads[model_name] = trainer.fit(
                    model_name, seed, learning_rates[model_name],
                    heads if model_name in fusion.DECISION_FUSIONS else None,
                )
            log(f"[seed {seed}] {model_name}: {heads[model_name].epochs_trained} epochs, "
                f"{heads[model_name].seconds:.1f} s, validation top-1 {heads[model_name].best_validation_accuracy:.4f}")
        figures = evaluate_heads(cache_dir, heads, num_classes)
        runs.append({
            "seed": seed,
            "eval": figures,
            "training": {
                name: {
                    "seconds": h.seconds,
                    "epochs": h.epochs_trained,
                    "validation_top1_accuracy": h.best_validation_accuracy,
                }
                for name, h in heads.items()
            },
        })
    return {"learning_rates": learning_rates, "runs": runs, "models": list(config.models)}


def _mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def summarize(raw: dict) -> dict:
    """Mean ± std over seeds of every figure the tables show."""
    runs = raw["runs"]
    models = {}
    for name in raw["models"]:
        per_seed = [run["eval"][name] for run in runs]
        entry = {
            metric: _mean_std([figures[metric] for figures in per_seed])
            for metric in ("top1_accuracy", "top5_accuracy", "macro_f1")
        }
        entry["validation_top1_accuracy"] = _mean_std(
            [run["training"][name]["validation_top1_accuracy"] for run in runs]
        )
        entry["train_seconds"] = _mean_std([run["training"][name]["seconds"] for run in runs])
        entry["learning_rate"] = raw["learning_rates"][name]
        if all("table1" in run["eval"] for run in runs):
            entry["headroom"] = _headroom([run["eval"] for run in runs], name)
        models[name] = entry
    summary = {"models": models, "seeds": [run["seed"] for run in runs]}
    if all("table1" in run["eval"] for run in runs):
        table = [run["eval"]["table1"][fusion.TEXT_ONLY] for run in runs]
        summary["table1"] = {
            cell: _mean_std([t[cell]["percent"] for t in table]) for cell, _, _ in UnimodalAgreement.CELLS
        }
    summary["examples"] = runs[0]["eval"][raw["models"][0]]["examples"]
    return summary


def _headroom(evals: list[dict], name: str) -> dict | None:
    """What a model recovers of the oracle headroom (the products the text model gets wrong and the
    image model right): the share of those it gets right, and its net top-1 gain over text_only
    as a share of the headroom (which also counts what it loses where only the text model is right)."""
    recovered, net = [], []
    for figures in evals:
        cell = figures["table1"][name]["text_wrong_image_right"]
        headroom = cell["percent"] / 100.0
        if not headroom:
            continue  # a seed whose text model is never wrong where the image model is right says nothing here
        recovered.append(cell["fused_right_percent"])
        gain = figures[name]["top1_accuracy"] - figures[fusion.TEXT_ONLY]["top1_accuracy"]
        net.append(100.0 * gain / headroom)
    if not recovered:
        return None
    return {"recovered_percent": _mean_std(recovered), "net_gain_percent_of_headroom": _mean_std(net)}


def write_json(path: str, payload: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
