"""A training run's data: the transform graph, the feature cache, and the datasets of every form and
split; and a trained model's outputs on a split, streamed batch by batch."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import typing

import tensorflow as tf
import tensorflow_transform as tft

from common import features
from common.labels import num_classes
from trainer import data, features_cache
from trainer.model import FROZEN, FULL, TOP, ModelConfig
from trainer.stages import EVAL_BATCH_SIZE, FEATURE_CACHE_DIR, Subset, TrainConfig, Trained


def num_workers() -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


@dataclasses.dataclass(frozen=True)
class Reading:
    """How a split is read: in the records' order (evaluation, caches), or shuffled from `seed` and
    repeated (training); `keep` (ids → bool) selects products, `with_ids` adds their ids to each batch."""

    split: str
    batch_size: int
    shuffle: bool = False
    seed: int | None = None
    keep: typing.Callable | None = None
    with_ids: bool = False


class RunData:
    """The examples and transform graph of one run, in every form a model trains on (trainer/model.py):
    FULL reads the transformed records, TOP and FROZEN the feature cache built here once."""

    def __init__(self, *, examples_dir: str, transform_graph_dir: str, work_dir: str, model_config: ModelConfig,
                 train_config: TrainConfig, cache_dir: str | None = None):
        self.examples_dir, self.transform_graph_dir, self.work_dir = examples_dir, transform_graph_dir, work_dir
        self.model_config, self.train_config = model_config, train_config
        self.tft_output = tft.TFTransformOutput(transform_graph_dir)
        self.classes = num_classes(self.tft_output)
        self.fingerprint = data.fingerprint(examples_dir, transform_graph_dir)
        self.cache_dir = cache_dir or os.path.join(work_dir, FEATURE_CACHE_DIR)
        self.metadata = None
        self._sizes = None
        if train_config.tune in (FROZEN, TOP):
            build, beam = features_cache.cache_features, {}
            if train_config.feature_cache_beam_args:
                from trainer import beam_cache

                build, beam = beam_cache.cache_features_beam, {
                    "beam_args": shlex.split(train_config.feature_cache_beam_args)}
            self.metadata = build(
                examples_dir=examples_dir, transform_graph_dir=transform_graph_dir, cache_dir=self.cache_dir,
                model_config=model_config, top=train_config.tune == TOP,
                validation_fraction=train_config.validation_fraction, data_fingerprint=self.fingerprint, **beam,
            )

    @property
    def validation(self) -> bool:
        return self.train_config.validation_fraction > 0

    def split_sizes(self) -> dict:
        if self.metadata is not None:
            return self.metadata["split_sizes"]
        if self._sizes is None:
            self._sizes = data.count_split_sizes(self.examples_dir, self.train_config.validation_fraction)
        return self._sizes

    def dataset(self, form: str, split: str, batch_size: int, *, shuffle: bool = False, input_names=None, keep=None,
                with_ids: bool = False) -> tf.data.Dataset:
        """A split in `form`: (inputs, labels[, ids]) batches, in the records' order unless `shuffle`;
        `keep` (ids → bool) selects products, `input_names` the inputs a model of that form takes."""
        return self.read(form, Reading(split, batch_size, shuffle=shuffle, keep=keep, with_ids=with_ids), input_names)

    def read(self, form: str, reading: Reading, input_names=None) -> tf.data.Dataset:
        lexical = input_names is not None and features.LEXICAL_LOG_PROBS_KEY in input_names
        if lexical:  # looked up by id
            return self.with_lexical(self.read(form, dataclasses.replace(reading, with_ids=True)), reading.with_ids,
                                     input_names)
        shuffle, seed, keep, with_ids = reading.shuffle, reading.seed, reading.keep, reading.with_ids
        if form == FULL:
            return data.make_dataset(
                self.examples_dir, reading.split, self.tft_output.transformed_feature_spec(), reading.batch_size,
                self.model_config.image_size, shuffle=shuffle, repeat=shuffle, seed=seed, workers=num_workers(),
                validation_fraction=self.train_config.validation_fraction, keep=keep, with_ids=with_ids)
        cache_form = features_cache.TOP_FORM if form == TOP else features_cache.FROZEN_FORM
        dataset = features_cache.make_feature_dataset(
            self.cache_dir, reading.split, reading.batch_size, shuffle, shuffle, seed=seed, form=cache_form,
            keep=keep, with_ids=with_ids)
        return features_cache.for_model(dataset, input_names) if input_names is not None else dataset

    def lexical_expert(self):
        """The run's lexical expert (trainer/lexical.py RunExpert), fitted on first use and kept."""
        if getattr(self, "_lexical", None) is None:
            from trainer import lexical

            self._lexical = lexical.run_expert(
                self.examples_dir, os.path.join(self.work_dir, lexical.RUN_EXPERT_DIR), num_classes=self.classes,
                validation_fraction=self.train_config.validation_fraction, folds=self.train_config.crossfit_folds,
                data_fingerprint=self.fingerprint, log=getattr(self, "log", print))
        return self._lexical

    def with_lexical(self, dataset: tf.data.Dataset, with_ids: bool, input_names=None) -> tf.data.Dataset:
        """(inputs, labels, ids) batches → the same with the lexical expert's log-probabilities among the
        inputs (out-of-fold on train), ids kept only `with_ids`; only `input_names` if given."""
        expert = self.lexical_expert()
        names = None if input_names is None else tuple(input_names)

        def add(inputs, labels, ids):
            inputs = expert.add_log_probs(inputs, ids)
            inputs = inputs if names is None else {k: inputs[k] for k in names}
            return (inputs, labels, ids) if with_ids else (inputs, labels)

        return dataset.map(add)

    def steps(self, batch_size: int, subset: Subset = Subset()) -> int:
        return max(1, math.ceil(self.split_sizes()[features.TRAIN_SPLIT] * subset.share / batch_size))

    def batch_logits(self, trained: Trained, split: str, keep=None):
        """(logits [n, classes], labels [n], ids [n]) of a model on a split, streamed batch by batch
        (a generator)."""
        names = list(trained.model.input) if isinstance(trained.model.input, dict) else None
        predict = tf.function(lambda inputs: trained.model(inputs, training=False))
        for inputs, labels, ids in self.dataset(trained.form, split, EVAL_BATCH_SIZE, shuffle=False, input_names=names,
                                                keep=keep, with_ids=True):
            yield predict(inputs).numpy(), labels.numpy(), ids.numpy()

    def probabilities(self, trained: Trained, split: str, keep=None):
        """(probabilities [n, classes], labels [n], ids [n]) of a model on a split, streamed batch by
        batch (a generator)."""
        for logits, labels, ids in self.batch_logits(trained, split, keep):
            yield tf.nn.softmax(logits, axis=-1).numpy(), labels, ids
