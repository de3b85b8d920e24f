"""Training: transformed TFRecords → the paper's stages → serving SavedModels.

Stages (the paper trains the unimodal models first):
    text_only  (text_recipe)   ┐ for every multimodal fusion; decision_level and policy fuse their
    image_only (image_recipe)  ┘ predictions, the feature-level fusions start from them
    <fusion>   (fusion_recipe)   (`init_from_unimodal`)

`tune` says what of the encoders trains (trainer/model.py has the three forms):
    full    end to end, every stage fine-tunes its encoders (the paper's; the GPU setting);
    top     the encoders' lower layers run once per product (trainer/features_cache.py), then each
            stage trains in two phases: its head alone on fixed features (`head_recipe`), then the
            encoders' last blocks together with that head (the stage's recipe) — "linear probe,
            then fine-tune", so a random head never sends large gradients into pretrained blocks.
            A fusion's fixed features for its first phase are those of the tuned unimodal models;
    frozen  the encoders never train: heads only, on cached features (`head_recipe`).
So the stage recipes are the encoders' training (full, top's second phase) and `head_recipe` every
head from scratch: frozen's, top's first phase, and the decision-level heads in every tune.
The decision-level heads (decision_level, policy) train on the unimodal models' class
probabilities: held out by K-fold cross-fitting over the train split (`decision_training`
"crossfit": fold k's probabilities come from unimodal models trained without fold k, for the epochs
their whole-split models kept), so that they see the unimodal models' errors on unseen products, or
in-sample ("in_sample").

A validation split is carved out of the train split by a hash of the id (`validation_fraction`):
early stopping (`patience`) and calibration use it; the eval split is the evaluate stage's alone.

Restartable: each trained model keeps its state under WORK_DIR/stages/<name>/ (trainer/loop.py),
so a job killed mid-epoch and started again with the same command continues where its last backup
was, and finished models are not trained again. Every stage is keyed by its settings and by the
fingerprint of the examples and transform graph: other data in the same work directory is refused.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from common import features
from common.labels import num_classes
from common.splits import read_split_sizes
from trainer import calibration, data, export, features_cache, fusion, guard, recipe
from trainer.loop import fit_stage, writable
from trainer.model import (
    FROZEN,
    FULL,
    TOP,
    TUNES,
    ModelConfig,
    build_model,
    copy_weights,
    fusion_layer,
    head_model,
    init_from_unimodal,
    probability_model,
    top_model,
    transfer,
    transfer_image,
    transfer_text,
)
from trainer.recipe import Recipe

STAGES_DIR = "stages"
FEATURE_CACHE_DIR = "feature_cache"
STREAMS_DIR = "stream_features"
PROBABILITIES_DIR = "probabilities"
# The form of a decision network: a head on the unimodal models' probabilities (their records).
PROBABILITIES_FORM = "probabilities"
CROSSFIT, IN_SAMPLE = "crossfit", "in_sample"
DECISION_TRAININGS = (CROSSFIT, IN_SAMPLE)
EVAL_BATCH_SIZE = 256
# Temperature scaling needs the logits of held-out products in memory (n × classes): one scalar is
# pinned by far fewer products than the paper's 150K validation ones.
CALIBRATION_PRODUCTS = 50_000


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    text_recipe: Recipe = recipe.PAPER_TEXT
    image_recipe: Recipe = recipe.PAPER_IMAGE
    fusion_recipe: Recipe = recipe.PAPER_FUSION
    tune: str = FULL
    # A head from scratch on fixed inputs: every stage of tune "frozen", the first phase of "top",
    # and the decision-level heads (on class probabilities) in every tune.
    head_recipe: Recipe = recipe.HEAD
    # Of the train split, by a hash of the id; 0: no validation split (no early stopping, no calibration).
    validation_fraction: float = 0.125
    # Early stopping on validation top-1 after this many epochs without progress (0: every epoch trains).
    patience: int = 0
    decision_training: str = CROSSFIT
    crossfit_folds: int = 3
    # Feature-level fusions start from the streams of the trained unimodal models (open in the
    # paper): the text stream then begins where the text baseline ended, instead of relearning it
    # at the fusion's small learning rate, and the image stream keeps what its training gave it.
    init_from_unimodal: bool = True
    # float16 compute with float32 variables, when there is a GPU (ignored on CPU).
    mixed_precision: bool = True
    backup_every_steps: int | None = None
    log_every_steps: int = 100
    seed: int = 42

    def __post_init__(self):
        if self.tune not in TUNES:
            raise ValueError(f"tune must be one of {TUNES}, got {self.tune!r}")
        if self.decision_training not in DECISION_TRAININGS:
            raise ValueError(f"decision_training must be one of {DECISION_TRAININGS}, got {self.decision_training!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.crossfit_folds < 2:
            raise ValueError(f"crossfit_folds must be at least 2, got {self.crossfit_folds}")

    def recipe_of(self, stage: str) -> Recipe:
        if self.tune == FROZEN or stage in fusion.DECISION_FUSIONS:
            return self.head_recipe
        return {fusion.TEXT_ONLY: self.text_recipe, fusion.IMAGE_ONLY: self.image_recipe}.get(stage, self.fusion_recipe)


def stages_of(fusion_name: str) -> list[str]:
    if fusion_name in fusion.UNIMODAL_FUSIONS:
        return [fusion_name]
    return [fusion.TEXT_ONLY, fusion.IMAGE_ONLY, fusion_name]


def num_workers() -> int:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def multi_worker() -> bool:
    return num_workers() > 1


def distribution_strategy() -> tf.distribute.Strategy:
    """Multi-worker from TF_CONFIG, mirrored over local GPUs, else the default (CPU) strategy."""
    if multi_worker():
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def precision_policy(mixed_precision: bool) -> str:
    """Sets Keras's global dtype policy: mixed_float16 only if asked for and a GPU is there (CPUs
    have no fast float16 kernels). Returns the policy's name."""
    name = "mixed_float16" if mixed_precision and tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name


@dataclasses.dataclass
class Trained:
    """A trained model in the form it trained in (trainer/model.py), and how its training went."""

    name: str
    form: str  # FULL, TOP or FROZEN (a head on cached features)
    model: keras.Model
    logs: dict

    @property
    def validation_accuracy(self) -> float | None:
        return self.logs.get("best_val_accuracy", self.logs.get("val_accuracy"))


def _kept_epochs(logs: dict | None) -> int | None:
    """The epochs an early-stopped model kept (None: it was not early stopped)."""
    return int(logs["best_epoch"]) if logs and logs.get("best_epoch") else None


def _fold_keep(folds: int, fold: int, inside: bool):
    return lambda ids: tf.equal(data.fold_of(ids, folds), fold) == inside


class Run:
    """One training run's data and work directory: the datasets of every form and split, and the
    training of any model of it (used by `train` and by the benchmark)."""

    def __init__(self, *, examples_dir: str, transform_graph_dir: str, work_dir: str, model_config: ModelConfig,
                 train_config: TrainConfig, strategy: tf.distribute.Strategy | None = None, log=print,
                 cache_dir: str | None = None):
        self.examples_dir, self.transform_graph_dir, self.work_dir = examples_dir, transform_graph_dir, work_dir
        self.model_config, self.train_config, self.log = model_config, train_config, log
        self.strategy = strategy or tf.distribute.get_strategy()
        self.tft_output = tft.TFTransformOutput(transform_graph_dir)
        self.classes = num_classes(self.tft_output)
        self.fingerprint = data.fingerprint(examples_dir, transform_graph_dir)
        self.cache_dir = cache_dir or os.path.join(work_dir, FEATURE_CACHE_DIR)
        self.metadata = None
        self._sizes = None
        if train_config.tune in (FROZEN, TOP):
            self.metadata = features_cache.cache_features(
                examples_dir=examples_dir, transform_graph_dir=transform_graph_dir, cache_dir=self.cache_dir,
                model_config=model_config, top=train_config.tune == TOP,
                validation_fraction=train_config.validation_fraction, data_fingerprint=self.fingerprint,
            )

    # ---- Data ----

    @property
    def validation(self) -> bool:
        return self.train_config.validation_fraction > 0

    def split_sizes(self) -> dict:
        if self.metadata is not None:
            return self.metadata["split_sizes"]
        if self._sizes is None:
            self._sizes = data.count_split_sizes(self.examples_dir, self.train_config.validation_fraction)
        return self._sizes

    def dataset(self, form: str, split: str, batch_size: int, *, shuffle: bool, repeat: bool = False,
                input_names=None, keep=None, with_ids: bool = False, seed: int | None = None) -> tf.data.Dataset:
        if form == FULL:
            return data.make_dataset(
                self.examples_dir, split, self.tft_output.transformed_feature_spec(), batch_size,
                self.model_config.image_size, shuffle=shuffle, repeat=repeat, seed=seed, workers=num_workers(),
                validation_fraction=self.train_config.validation_fraction, keep=keep, with_ids=with_ids)
        cache_form = features_cache.TOP_FORM if form == TOP else features_cache.FROZEN_FORM
        dataset = features_cache.make_feature_dataset(
            self.cache_dir, split, batch_size, shuffle, repeat, seed=seed, form=cache_form, keep=keep,
            with_ids=with_ids)
        return features_cache.for_model(dataset, input_names) if input_names is not None else dataset

    def _steps(self, batch_size: int, keep_share: float = 1.0) -> int:
        return max(1, math.ceil(self.split_sizes()[features.TRAIN_SPLIT] * keep_share / batch_size))

    # ---- Models ----

    def new_model(self, name: str, form: str, *, seed: int) -> keras.Model:
        # The initial weights are part of what a seed fixes, not whatever state earlier work left.
        keras.utils.set_random_seed(seed)
        config = self.model_config.with_fusion(name)
        with self.strategy.scope():
            if form == FULL:
                return build_model(config, self.classes)
            if form == TOP:
                return top_model(config, self.classes, self.metadata["text_dim"], self.metadata["image_map_shape"])
            if form == PROBABILITIES_FORM:
                return probability_model(config, self.classes)
            return head_model(config, self.classes, self.metadata["text_dim"], self.metadata["image_dim"])

    def _settings(self, name: str, form: str, stage_recipe: Recipe, seed: int, extra: dict) -> dict:
        """What a trained model depends on: a stage directory holds the result of one such setting."""
        model = dataclasses.asdict(self.model_config.with_fusion(name))
        if name in fusion.UNIMODAL_FUSIONS:
            model.pop("head")  # fusions that differ only in head options share their unimodal stages
        if form != TOP:
            model.pop("text_top_blocks"), model.pop("image_top_blocks")
        return {
            "model": model, "form": form, "recipe": dataclasses.asdict(stage_recipe), "seed": seed,
            "validation_fraction": self.train_config.validation_fraction, "patience": self.train_config.patience,
            "data": self.fingerprint, **extra,
        }

    def fit(self, model: keras.Model, name: str, form: str, stage_recipe: Recipe, stage_dir: str, *, seed: int,
            dataset: tf.data.Dataset | None = None, validation: tf.data.Dataset | None = None,
            steps_per_epoch: int | None = None, keep=None, keep_share: float = 1.0, extra: dict | None = None,
            label: str | None = None, epochs: int | None = None, keep_better: bool = False) -> dict:
        """Trains `model` (of `form`) through the one loop, on the train split (or `dataset`), with
        early stopping on validation; or, given `epochs`, that many epochs of the recipe without
        validation (a cross-fitted fold repeating its whole-split model's, `_kept_epochs`)."""
        keras.utils.set_random_seed(seed)
        names = list(model.input) if isinstance(model.input, dict) else None
        if dataset is None:
            dataset = self.dataset(form, features.TRAIN_SPLIT, stage_recipe.batch_size, shuffle=True, repeat=True,
                                   input_names=names, keep=keep, seed=seed)
        if epochs is not None:
            validation, extra = None, {**(extra or {}), "epochs_of_whole_split_model": epochs}
        elif validation is None and self.validation:
            validation = self.dataset(form, features.VALIDATION_SPLIT, EVAL_BATCH_SIZE, shuffle=False,
                                      input_names=names)
        return fit_stage(
            model, dataset, stage=label or os.path.basename(stage_dir), stage_dir=stage_dir, recipe=stage_recipe,
            steps_per_epoch=steps_per_epoch or self._steps(stage_recipe.batch_size, keep_share),
            settings=self._settings(name, form, stage_recipe, seed, extra or {}), validation=validation,
            patience=self.train_config.patience if epochs is None else 0, epochs=epochs, strategy=self.strategy,
            backup_every_steps=self.train_config.backup_every_steps, log_every_steps=self.train_config.log_every_steps,
            log=self.log, keep_better=keep_better,
        )

    def train_feature_model(self, name: str, stage_recipe: Recipe, stage_dir: str, *, seed: int,
                            unimodal: dict | None = None, head_start: Trained | None = None, keep=None,
                            keep_share: float = 1.0, whole: Trained | None = None) -> Trained:
        """A feature-level model (unimodal, concat, keyless, key_based, hanet) in the run's tune mode.

        `unimodal` ({text_only, image_only: Trained}) starts a fusion's streams from theirs;
        `head_start` (tune="top"): an already trained first phase, whose head is used as it is;
        `whole` (given for a cross-fitted fold): the same model trained on the whole train split,
        whose kept epochs each phase repeats instead of early stopping.
        """
        tune = self.train_config.tune
        streams = unimodal if (unimodal and self.train_config.init_from_unimodal
                               and name not in fusion.UNIMODAL_FUSIONS) else None
        epochs = _kept_epochs(whole.logs if whole else None)
        if tune == FROZEN:
            model = self.new_model(name, FROZEN, seed=seed)
            logs = self.fit(model, name, FROZEN, stage_recipe, stage_dir, seed=seed, keep=keep, keep_share=keep_share,
                            epochs=epochs)
            return Trained(name, FROZEN, model, logs)
        if tune == FULL:
            model = self.new_model(name, FULL, seed=seed)
            if streams:
                init_from_unimodal(model, streams[fusion.TEXT_ONLY].model, streams[fusion.IMAGE_ONLY].model)
            logs = self.fit(model, name, FULL, stage_recipe, stage_dir, seed=seed, keep=keep, keep_share=keep_share,
                            epochs=epochs)
            return Trained(name, FULL, model, logs)
        # TOP: the head first, on fixed features (of the tuned unimodal streams for a fusion) ...
        head = head_start
        if head is None:
            head_model_ = self.new_model(name, FROZEN, seed=seed)
            head_dir = os.path.join(stage_dir, "head")
            if streams:
                cache = self.stream_features(streams, os.path.join(stage_dir, STREAMS_DIR))
                head_logs = self.fit(
                    head_model_, name, FROZEN, self.train_config.head_recipe, head_dir, seed=seed,
                    dataset=self._stream_dataset(cache, features.TRAIN_SPLIT, self.train_config.head_recipe.batch_size,
                                                 True, seed, keep),
                    validation=self._stream_dataset(cache, features.VALIDATION_SPLIT, EVAL_BATCH_SIZE, False)
                    if self.validation else None,
                    keep_share=keep_share, extra={"streams": "unimodal"}, label=f"{name} head")
            else:
                head_logs = self.fit(head_model_, name, FROZEN, self.train_config.head_recipe, head_dir, seed=seed,
                                     keep=keep, keep_share=keep_share, label=f"{name} head",
                                     epochs=_kept_epochs(whole.logs.get("head_phase") if whole else None))
            head = Trained(name, FROZEN, head_model_, head_logs)
        # ... then the last blocks of the encoders with it.
        model = self.new_model(name, TOP, seed=seed)
        if streams:
            transfer_text(streams[fusion.TEXT_ONLY].model, model)
            transfer_image(streams[fusion.IMAGE_ONLY].model, model)
        copy_weights(fusion_layer(head.model), fusion_layer(model))
        if whole is not None and whole.logs.get(guard.KEPT_START):
            # The whole-split model's fine-tuning made it worse: its folds keep their first phase too.
            return Trained(name, TOP, model, {guard.KEPT_START: True, "head_phase": head.logs})
        logs = self.fit(model, name, TOP, stage_recipe, os.path.join(stage_dir, "top"), seed=seed, keep=keep,
                        keep_share=keep_share, extra={"head": head.logs.get("best_val_accuracy", head.logs.get("loss"))},
                        label=f"{name} top", epochs=epochs, keep_better=True)
        return Trained(name, TOP, model, {**logs, "head_phase": head.logs})

    def stream_features(self, streams: dict, cache_dir: str) -> str:
        """f_t of the tuned text model and f_i of the tuned image model on the train and validation
        products, written once as a frozen-form cache (the first phase of a fusion under tune="top")."""
        if tf.io.gfile.exists(os.path.join(cache_dir, features_cache.METADATA_FILE)):
            return cache_dir
        text_top = streams[fusion.TEXT_ONLY].model.get_layer("text_top")
        image_top = streams[fusion.IMAGE_ONLY].model.get_layer("image_top")

        @tf.function
        def encode(inputs):
            return {
                features.TEXT_FEATURES_KEY: text_top(inputs[features.TEXT_HIDDEN_KEY], inputs[features.INPUT_MASK_KEY],
                                                     training=False),
                features.IMAGE_FEATURES_KEY: image_top(inputs[features.IMAGE_MAP_KEY], training=False),
            }

        sizes = {}
        splits = [features.TRAIN_SPLIT] + ([features.VALIDATION_SPLIT] if self.validation else [])
        for split in splits:
            batches = self.dataset(TOP, split, EVAL_BATCH_SIZE, shuffle=False, with_ids=True)
            sizes[split] = features_cache.write_frozen_records(
                ((encode(inputs), labels, ids) for inputs, labels, ids in batches), os.path.join(cache_dir, split))
        metadata = {"top": False, "text_dim": self.metadata["text_dim"], "image_dim": self.metadata["image_dim"],
                    "split_sizes": sizes}
        with tf.io.gfile.GFile(os.path.join(cache_dir, features_cache.METADATA_FILE), "w") as f:
            json.dump(metadata, f)
        return cache_dir

    def _stream_dataset(self, cache_dir: str, split: str, batch_size: int, shuffle: bool, seed=None, keep=None):
        return features_cache.make_feature_dataset(cache_dir, split, batch_size, shuffle, repeat=shuffle, seed=seed,
                                                   keep=keep)

    def batch_logits(self, trained: Trained, split: str, keep=None):
        """(logits [n, classes], labels [n], ids [n]) of a model on a split, streamed batch by batch
        (a generator)."""
        names = list(trained.model.input) if isinstance(trained.model.input, dict) else None
        predict = tf.function(lambda inputs: trained.model(inputs, training=False))
        for inputs, labels, ids in self.dataset(trained.form, split, EVAL_BATCH_SIZE, shuffle=False, input_names=names,
                                                keep=keep, with_ids=True):
            yield predict(inputs).numpy(), labels.numpy(), ids.numpy()

    def calibrate(self, trained: Trained) -> calibration.Calibration | None:
        """The temperature and review thresholds of a model, fitted on the validation split (None
        without one: the model is then exported uncalibrated)."""
        if not self.validation:
            return None
        logits, labels, count = [], [], 0
        for batch_logits, batch_labels, _ in self.batch_logits(trained, features.VALIDATION_SPLIT):
            logits.append(batch_logits)
            labels.append(batch_labels)
            count += len(batch_labels)
            if count >= CALIBRATION_PRODUCTS:
                break
        if not count:
            return None
        logits, labels = np.concatenate(logits)[:CALIBRATION_PRODUCTS], np.concatenate(labels)[:CALIBRATION_PRODUCTS]
        fitted = calibration.fit(logits, labels)
        self.log(f"[{trained.name}] calibration on {len(labels)} validation products: temperature "
                 f"{fitted.temperature:.3f}, ECE {fitted.validation['ece_before']:.4f} → {fitted.validation['ece_after']:.4f}")
        return fitted

    # ---- Decision-level heads ----

    def probabilities(self, trained: Trained, split: str, keep=None):
        """(probabilities [n, classes], labels [n], ids [n]) of a unimodal model on a split, streamed
        batch by batch (a generator)."""
        for logits, labels, ids in self.batch_logits(trained, split, keep):
            yield tf.nn.softmax(logits, axis=-1).numpy(), labels, ids

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
        text, image = unimodal[fusion.TEXT_ONLY], unimodal[fusion.IMAGE_ONLY]
        k = self.train_config.crossfit_folds
        train_parts = ([(folds[i][fusion.TEXT_ONLY], folds[i][fusion.IMAGE_ONLY], features.TRAIN_SPLIT,
                         _fold_keep(k, i, True)) for i in range(k)] if folds
                       else [(text, image, features.TRAIN_SPLIT, None)])
        sizes = {features.TRAIN_SPLIT: self.write_probabilities(train_parts, os.path.join(out, features.TRAIN_SPLIT))}
        if self.validation:
            sizes[features.VALIDATION_SPLIT] = self.write_probabilities(
                [(text, image, features.VALIDATION_SPLIT, None)], os.path.join(out, features.VALIDATION_SPLIT))
        with tf.io.gfile.GFile(done, "w") as f:
            json.dump(sizes, f)
        return out

    def crossfit_unimodal(self, seed: int, recipes: dict | None = None,
                          names: tuple[str, ...] = fusion.UNIMODAL_FUSIONS, head_starts: dict | None = None,
                          whole: dict | None = None) -> dict:
        """{fold: {text_only, image_only: Trained}}: the unimodal models (`names`) trained without
        each fold (with `recipes[name]`, default the stage's recipe); `head_starts` (tune="top", same
        shape): the folds' already trained first phases; `whole` ({name: Trained}): the models
        trained on the whole train split, whose kept epochs the folds repeat without validation
        (the folds then cost no validation passes and no epochs past the best one)."""
        k = self.train_config.crossfit_folds
        folds = {}
        for i in range(k):
            folds[i] = {
                name: self.train_feature_model(
                    name, (recipes or {}).get(name) or self.train_config.recipe_of(name),
                    os.path.join(self.work_dir, STAGES_DIR, f"seed{seed}", f"{name}-fold{i}of{k}"), seed=seed,
                    keep=_fold_keep(k, i, False), keep_share=(k - 1) / k,
                    head_start=(head_starts or {}).get(i, {}).get(name), whole=(whole or {}).get(name))
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
        logs = self.fit(
            network, name, PROBABILITIES_FORM, stage_recipe, stage_dir, seed=seed,
            dataset=probability_dataset(records, features.TRAIN_SPLIT, self.classes, stage_recipe.batch_size, True, seed),
            validation=probability_dataset(records, features.VALIDATION_SPLIT, self.classes, EVAL_BATCH_SIZE, False)
            if self.validation else None,
            steps_per_epoch=max(1, math.ceil(sizes[features.TRAIN_SPLIT] / stage_recipe.batch_size)),
            extra={"decision_training": CROSSFIT if folds else IN_SAMPLE, "crossfit_folds": len(folds or {})},
        )
        form = unimodal[fusion.TEXT_ONLY].form
        model = self.new_model(name, form, seed=seed)
        init_from_unimodal(model, unimodal[fusion.TEXT_ONLY].model, unimodal[fusion.IMAGE_ONLY].model)
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
                        seed: int | None = None) -> tf.data.Dataset:
    spec = {key: tf.io.FixedLenFeature([classes], tf.float32)
            for key in (features.TEXT_PROBABILITIES_KEY, features.IMAGE_PROBABILITIES_KEY)}
    spec[features.LABEL_ID_KEY] = tf.io.FixedLenFeature([], tf.int64)
    records = data.read_records(os.path.join(records_dir, split, "*"), shuffle, repeat=shuffle, seed=seed)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        label = parsed.pop(features.LABEL_ID_KEY)
        return parsed, label

    return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def train_stages(run: Run, fusion_name: str, seed: int) -> dict[str, Trained]:
    """Every stage of `fusion_name` in order; returns {stage: Trained}."""
    config = run.train_config
    trained: dict[str, Trained] = {}
    stage_dir = lambda stage: os.path.join(run.work_dir, STAGES_DIR, stage)  # noqa: E731
    for stage in stages_of(fusion_name):
        if stage in fusion.DECISION_FUSIONS:
            folds = run.crossfit_unimodal(seed, whole=trained) if config.decision_training == CROSSFIT else None
            trained[stage] = run.train_decision_model(stage, config.recipe_of(stage), stage_dir(stage), seed=seed,
                                                      unimodal=trained, folds=folds)
        else:
            trained[stage] = run.train_feature_model(stage, config.recipe_of(stage), stage_dir(stage), seed=seed,
                                                     unimodal=trained or None)
    return trained


def export_model(run: Run, trained: Trained, export_dir: str, warmup: list) -> None:
    """`trained` (any form) as the full serving SavedModel, calibrated on the validation split."""
    fitted = run.calibrate(trained)
    model = trained.model
    if trained.form != FULL:
        with run.strategy.scope():
            model = build_model(run.model_config.with_fusion(trained.name), run.classes, trainable_encoders=False)
        transfer(trained.model, model)
    export.export_serving_model(
        model, run.tft_output, writable(export_dir), image_size=run.model_config.image_size,
        max_seq_length=run.model_config.max_seq_length, warmup_examples=warmup, calibration=fitted,
    )


def train(
    *,
    examples_dir: str,
    transform_graph_dir: str,
    export_dir: str,
    work_dir: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
    unimodal_export_dirs: dict[str, str] | None = None,
) -> dict:
    """Trains every stage of `model_config.fusion` and exports the serving SavedModel to `export_dir`
    (and the unimodal models to `unimodal_export_dirs[text_only|image_only]`, when given and
    trained). Returns {stage: last logs}."""
    train_size = read_split_sizes(examples_dir)[features.TRAIN_SPLIT]
    if train_size == 0:
        raise ValueError(f"{examples_dir} has no training examples")
    policy = precision_policy(train_config.mixed_precision)
    strategy = distribution_strategy()
    if train_config.tune != FULL and multi_worker():
        # Cached encoders train in minutes on one machine; one cache writer keeps it simple.
        raise ValueError(f"tune={train_config.tune} trains on one machine: run it without a multi-worker TF_CONFIG")
    print(f"training {model_config.fusion} with {type(strategy).__name__}, {policy} policy, tune {train_config.tune}",
          flush=True)
    run = Run(examples_dir=examples_dir, transform_graph_dir=transform_graph_dir, work_dir=work_dir,
              model_config=model_config, train_config=train_config, strategy=strategy,
              log=lambda line: print(line, flush=True))
    trained = train_stages(run, model_config.fusion, train_config.seed)
    warmup = export.warmup_examples(examples_dir, run.tft_output)
    exports = [(model_config.fusion, export_dir)]
    exports += [(stage, path) for stage, path in (unimodal_export_dirs or {}).items() if stage in trained and path]
    for stage, directory in exports:
        export_model(run, trained[stage], directory, warmup)
        print(f"exported {stage} to {directory}", flush=True)
    return {stage: t.logs for stage, t in trained.items()}

