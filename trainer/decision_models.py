"""Decision-level models (decision_level, policy): a decision network trained on the unimodal models'
class probabilities, cross-fitted over folds of the train split (or in-sample), then assembled with
the unimodal models into one model of their form."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorflow as tf

from common import features
from trainer import data, features_cache
from trainer.feature_models import FeatureModels
from trainer.model import fusion_layer, init_from_unimodal
from trainer.recipe import Recipe
from trainer.stages import (
    CROSSFIT,
    EVAL_BATCH_SIZE,
    IN_SAMPLE,
    PROBABILITIES_DIR,
    PROBABILITIES_FORM,
    STAGES_DIR,
    FitInputs,
    Fold,
    ModelSpec,
    Subset,
    Trained,
)


def fold_keep(folds: int, fold: int, inside: bool):
    return lambda ids: tf.equal(data.fold_of(ids, folds), fold) == inside


class DecisionModels(FeatureModels):
    """FeatureModels, plus the cross-fitted unimodal models and the decision-level heads on them."""

    def write_probabilities(self, unimodal_per_part: list, out_dir: str) -> int:
        """Records of {TEXT_PROBABILITIES_KEY, IMAGE_PROBABILITIES_KEY, LABEL_ID_KEY, ID_KEY}: for each
        (text Trained, image Trained, split, keep) part, both models' probabilities on its products."""
        count = 0
        tf.io.gfile.makedirs(out_dir)
        with tf.io.TFRecordWriter(os.path.join(out_dir, f"part-00000{features_cache.RECORD_SUFFIX}"), "GZIP") as writer:
            for text, image, split, keep in unimodal_per_part:
                for (p_t, labels, ids), (p_i, _, image_ids) in zip(
                        self.probabilities(text, split, keep), self.probabilities(image, split, keep)):
                    if not np.array_equal(ids, image_ids):
                        raise RuntimeError("the text and image predictions came in different orders")
                    for row in range(len(labels)):
                        writer.write(_probability_example(p_t[row], p_i[row], labels[row], ids[row]))
                        count += 1
        return count

    def decision_probabilities(self, unimodal: dict, seed: int, folds: dict | None, tag: str = "") -> str:
        """The probability records a decision-level head trains on: out-of-fold (cross-fitted) on
        train when `folds` ({k: {text_only, image_only}}) is given, else in-sample; on validation,
        always the unimodal models trained on the whole train split."""
        kind = f"crossfit{self.train_config.crossfit_folds}" if folds else IN_SAMPLE
        out = os.path.join(self.work_dir, PROBABILITIES_DIR, f"{kind}-seed{seed}{tag}")
        done = os.path.join(out, "sizes.json")
        if tf.io.gfile.exists(done):
            return out
        text, image = unimodal[features.TEXT_ONLY], unimodal[features.IMAGE_ONLY]
        k = self.train_config.crossfit_folds
        train_parts = ([(folds[i][features.TEXT_ONLY], folds[i][features.IMAGE_ONLY], features.TRAIN_SPLIT,
                         fold_keep(k, i, True)) for i in range(k)] if folds
                       else [(text, image, features.TRAIN_SPLIT, None)])
        sizes = {features.TRAIN_SPLIT: self.write_probabilities(train_parts, os.path.join(out, features.TRAIN_SPLIT))}
        if self.validation:
            sizes[features.VALIDATION_SPLIT] = self.write_probabilities(
                [(text, image, features.VALIDATION_SPLIT, None)], os.path.join(out, features.VALIDATION_SPLIT))
        with tf.io.gfile.GFile(done, "w") as f:
            json.dump(sizes, f)
        return out

    def crossfit_unimodal(self, seed: int, recipes: dict | None = None,
                          names: tuple[str, ...] = features.UNIMODAL_FUSIONS, head_starts: dict | None = None,
                          whole: dict | None = None) -> dict:
        """{fold: {text_only, image_only: Trained}}: the unimodal models (`names`) trained without
        each fold (with `recipes[name]`, default the stage's recipe); `head_starts` (tune="top", same
        shape): the folds' already trained first phases; `whole` ({name: Trained}): the models
        trained on the whole train split, whose kept epochs the folds repeat without validation
        (the folds then cost no validation passes and no epochs past the best one)."""
        k = self.train_config.crossfit_folds
        folds = {}
        for i in range(k):
            subset = Subset(keep=fold_keep(k, i, False), share=(k - 1) / k)
            folds[i] = {
                name: self.train_feature_model(
                    name, (recipes or {}).get(name) or self.train_config.recipe_of(name),
                    os.path.join(self.work_dir, STAGES_DIR, f"seed{seed}", f"{name}-fold{i}of{k}"), seed=seed,
                    head_start=(head_starts or {}).get(i, {}).get(name),
                    fold=Fold(subset, (whole or {}).get(name)))
                for name in names
            }
        return folds

    def train_decision_model(self, name: str, stage_recipe: Recipe, stage_dir: str, *, seed: int, unimodal: dict,
                             folds: dict | None = None, tag: str = "") -> Trained:
        """A decision-level head: its decision network trained on the unimodal models' probabilities
        (cross-fitted when `folds` is given), then assembled with the unimodal models into one model
        of their form."""
        records = self.decision_probabilities(unimodal, seed, folds, tag)
        network = self.new_model(name, PROBABILITIES_FORM, seed=seed)
        with tf.io.gfile.GFile(os.path.join(records, "sizes.json")) as f:
            sizes = json.load(f)
        # An expert fusion also reads the lexical expert's scores: out-of-fold on train, as the records are.
        lexical = self.lexical_expert() if features.LEXICAL_LOG_PROBS_KEY in network.input else None
        inputs = FitInputs(
            probability_dataset(records, features.TRAIN_SPLIT, self.classes, stage_recipe.batch_size, True, seed,
                                lexical=lexical),
            probability_dataset(records, features.VALIDATION_SPLIT, self.classes, EVAL_BATCH_SIZE, False,
                                lexical=lexical) if self.validation else None,
            steps_per_epoch=max(1, math.ceil(sizes[features.TRAIN_SPLIT] / stage_recipe.batch_size)),
        )
        logs = self.fit(
            network, ModelSpec(name, stage_recipe, stage_dir, seed), PROBABILITIES_FORM, inputs=inputs,
            extra={"decision_training": CROSSFIT if folds else IN_SAMPLE, "crossfit_folds": len(folds or {})},
        )
        form = unimodal[features.TEXT_ONLY].form
        model = self.new_model(name, form, seed=seed)
        init_from_unimodal(model, unimodal[features.TEXT_ONLY].model, unimodal[features.IMAGE_ONLY].model)
        fusion_layer(model).copy_decision_network(fusion_layer(network).head)
        return Trained(name, form, model, logs)


def _probability_example(p_t: np.ndarray, p_i: np.ndarray, label: int, product_id: bytes) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        features.TEXT_PROBABILITIES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=p_t)),
        features.IMAGE_PROBABILITIES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=p_i)),
        features.LABEL_ID_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        features.ID_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[product_id])),
    })).SerializeToString()


def probability_dataset(records_dir: str, split: str, classes: int, batch_size: int, shuffle: bool,
                        seed: int | None = None, lexical=None) -> tf.data.Dataset:
    """(probabilities, label) batches of the records; with `lexical` (trainer/lexical.py RunExpert), its
    log-probabilities of each product too (LEXICAL_LOG_PROBS_KEY)."""
    spec = {key: tf.io.FixedLenFeature([classes], tf.float32)
            for key in (features.TEXT_PROBABILITIES_KEY, features.IMAGE_PROBABILITIES_KEY)}
    spec[features.LABEL_ID_KEY] = tf.io.FixedLenFeature([], tf.int64)
    spec[features.ID_KEY] = tf.io.FixedLenFeature([], tf.string)
    records = data.read_records(os.path.join(records_dir, split, "*"), shuffle, repeat=shuffle, seed=seed)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        label, ids = parsed.pop(features.LABEL_ID_KEY), parsed.pop(features.ID_KEY)
        return (parsed if lexical is None else lexical.add_log_probs(parsed, ids)), label

    return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
