"""Training: transformed TFRecords → the paper's stages → serving SavedModels.

Stages (the paper trains the unimodal models first):
    text_only  (recipe.PAPER_TEXT)   ┐ for every multimodal fusion; decision_level and policy fuse
    image_only (recipe.PAPER_IMAGE)  ┘ their predictions, the feature-level fusions start from them
    <fusion>   (recipe.PAPER_FUSION)   (`init_from_unimodal`)

End to end (the paper's, for GPUs), every stage fine-tunes its encoders. With `frozen_encoders`, the
encoders run once per product (trainer/features_cache.py) and every stage trains its head only; the
exported models put the same heads back on the (unchanged) encoders.

Restartable: each stage keeps its state under WORK_DIR/stages/<stage>/. `BackupAndRestore`
snapshots it every epoch (and every `backup_every_steps`), so a job killed mid-epoch and started
again with the same command continues where the last snapshot was; finished stages are not redone.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from common import features
from common.labels import num_classes
from trainer import data, export, features_cache, fusion, recipe
from trainer.model import (
    ModelConfig,
    build_model,
    copy_head,
    head_model,
    init_from_unimodal,
    load_unimodal_heads,
)
from trainer.recipe import Recipe

STAGES_DIR = "stages"
FEATURE_CACHE_DIR = "feature_cache"
DONE_FILE = "done.json"
SETTINGS_FILE = "settings.json"
FINAL_WEIGHTS = os.path.join("final", "weights")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    text: Recipe = recipe.PAPER_TEXT
    image: Recipe = recipe.PAPER_IMAGE
    fusion: Recipe = recipe.PAPER_FUSION
    # Train the fusion heads on features of fixed encoders computed once (see features_cache.py).
    frozen_encoders: bool = False
    # Feature-level fusions start from the encoders of the trained unimodal models (open in the
    # paper): the text stream then begins where the text baseline ended, instead of relearning it
    # at the fusion's small learning rate, and the image stream keeps what 90 epochs of SGD gave it.
    init_from_unimodal: bool = True
    # float16 compute with float32 variables, when there is a GPU (ignored on CPU).
    mixed_precision: bool = True
    backup_every_steps: int | None = None
    log_every_steps: int = 100
    seed: int = 42

    def recipe_of(self, stage: str) -> Recipe:
        return {fusion.TEXT_ONLY: self.text, fusion.IMAGE_ONLY: self.image}.get(stage, self.fusion)


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


def is_chief() -> bool:
    """The worker that keeps checkpoints and exports: the "chief" task, else worker 0 (TF_CONFIG's rule)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    if task.get("type", "chief") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not cluster.get("chief")


def _writable(path: str) -> str:
    """Where this worker writes `path`: itself on the chief, a throw-away directory elsewhere (under
    MultiWorkerMirroredStrategy every worker must save, only the chief's copy is kept)."""
    return path if is_chief() else os.path.join(tempfile.mkdtemp(), os.path.basename(path))


class ProgressLog(keras.callbacks.Callback):
    """One line every `every_steps` steps, with the global step: Keras's progress bar only reaches
    pipeline logs at epoch end (it redraws with carriage returns), and epochs of the paper's data
    last an hour. Also says where a restarted run resumed."""

    def __init__(self, stage: str, total_steps: int, every_steps: int):
        super().__init__()
        self.stage, self.total_steps, self.every_steps = stage, total_steps, max(1, every_steps)

    def on_train_begin(self, logs=None):
        self._start_step = int(self.model.optimizer.iterations.numpy())
        self._start_time = time.monotonic()
        verb = "resuming at" if self._start_step else "starting at"
        print(f"[{self.stage}] {verb} step {self._start_step}/{self.total_steps}", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps and step != self.total_steps:
            return
        rate = (step - self._start_step) / max(time.monotonic() - self._start_time, 1e-9)
        figures = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
        print(f"[{self.stage}] step {step}/{self.total_steps}: {figures} ({rate:.2f} steps/s)", flush=True)

    def on_train_end(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        print(f"[{self.stage}] finished at step {step}; this run trained {step - self._start_step} steps", flush=True)


def _check_settings(stage_dir: str, settings: dict) -> None:
    """A stage directory belongs to one configuration: resuming it with another would mix them."""
    path = os.path.join(stage_dir, SETTINGS_FILE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(
                f"{stage_dir} holds a stage trained with other settings (different {', '.join(changed)}): "
                "use another work directory"
            )
    elif is_chief():
        tf.io.gfile.makedirs(stage_dir)
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(settings, f, indent=2, sort_keys=True)


def fit_stage(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    stage: str,
    stage_dir: str,
    stage_recipe: Recipe,
    steps_per_epoch: int,
    settings: dict,
    train_config: TrainConfig,
    strategy: tf.distribute.Strategy,
) -> dict:
    """Compiles and fits one stage, or loads it if a previous run finished it; returns its last logs."""
    _check_settings(stage_dir, settings)
    done = os.path.join(stage_dir, DONE_FILE)
    if tf.io.gfile.exists(done):
        model.load_weights(os.path.join(stage_dir, FINAL_WEIGHTS)).expect_partial()
        with tf.io.gfile.GFile(done) as f:
            logs = json.load(f)
        print(f"[{stage}] already trained in {stage_dir}: {logs}", flush=True)
        return logs
    total_steps = steps_per_epoch * stage_recipe.epochs
    # Keras sums per-replica batch logs by default ("auto"), and the metrics are already global.
    model.distribute_reduction_method = "first"
    with strategy.scope():
        model.compile(
            optimizer=stage_recipe.make_optimizer(steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"),
            ],
        )
    callbacks = [
        # Not deleted at the end: if the job dies before DONE_FILE is written, the rerun restores
        # the finished state instead of training the stage again.
        keras.callbacks.BackupAndRestore(
            os.path.join(stage_dir, "backup"),
            save_freq=train_config.backup_every_steps or "epoch",
            delete_checkpoint=False,
        ),
        keras.callbacks.ModelCheckpoint(
            os.path.join(stage_dir, "checkpoints", "epoch-{epoch:03d}"), save_weights_only=True
        ),
        keras.callbacks.TensorBoard(os.path.join(stage_dir, "logs")),
        ProgressLog(stage, total_steps, train_config.log_every_steps),
    ]
    # verbose=2: one line per epoch, which (unlike the progress bar) reads well in pipeline logs.
    history = model.fit(
        dataset, epochs=stage_recipe.epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=2
    )
    logs = {name: float(values[-1]) for name, values in history.history.items() if values}
    model.save_weights(_writable(os.path.join(stage_dir, FINAL_WEIGHTS)))
    if is_chief():
        with tf.io.gfile.GFile(done, "w") as f:
            json.dump(logs, f)
    return logs


def _stage_config(model_config: ModelConfig, stage: str) -> ModelConfig:
    return dataclasses.replace(model_config, fusion=stage)


# Options of the fusion heads, which a unimodal stage does not depend on: fusions that differ only
# in them share the work directory's unimodal stages.
_FUSION_HEAD_OPTIONS = ("fusion_width", "key_dim", "hybrid_hidden_units", "hybrid_normalize", "shared_scorer",
                        "scaled", "combine", "policy_top_k")


def _settings(stage_config: ModelConfig, stage_recipe: Recipe, train_config: TrainConfig) -> dict:
    """What a stage's result depends on: a stage directory holds the result of one such setting."""
    model = dataclasses.asdict(stage_config)
    if stage_config.fusion in fusion.UNIMODAL_FUSIONS:
        model = {name: value for name, value in model.items() if name not in _FUSION_HEAD_OPTIONS}
    settings = {
        "model": model,
        "recipe": dataclasses.asdict(stage_recipe),
        "frozen_encoders": train_config.frozen_encoders,
        "seed": train_config.seed,
    }
    if stage_config.fusion not in fusion.UNIMODAL_FUSIONS:
        settings["init_from_unimodal"] = train_config.init_from_unimodal
    return settings


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
    tft_output = tft.TFTransformOutput(transform_graph_dir)
    classes = num_classes(tft_output)
    train_size = data.read_split_sizes(examples_dir)[features.TRAIN_SPLIT]
    if train_size == 0:
        raise ValueError(f"{examples_dir} has no training examples")
    policy = precision_policy(train_config.mixed_precision)
    strategy = distribution_strategy()
    if train_config.frozen_encoders and multi_worker():
        # Heads on cached features train in minutes on one machine; one cache writer keeps it simple.
        raise ValueError("frozen_encoders trains on one machine: run it without a multi-worker TF_CONFIG")
    print(f"training {model_config.fusion} with {type(strategy).__name__}, {policy} policy, "
          f"{'frozen encoders' if train_config.frozen_encoders else 'end to end'}", flush=True)
    stages = stages_of(model_config.fusion)
    stage_dir = lambda stage: os.path.join(work_dir, STAGES_DIR, stage)  # noqa: E731
    if train_config.frozen_encoders:
        metadata = features_cache.cache_features(
            examples_dir=examples_dir,
            transform_graph_dir=transform_graph_dir,
            cache_dir=os.path.join(work_dir, FEATURE_CACHE_DIR),
            model_config=model_config,
        )
    trained, logs = {}, {}
    for stage in stages:
        keras.utils.set_random_seed(train_config.seed)
        config, stage_recipe = _stage_config(model_config, stage), train_config.recipe_of(stage)
        steps_per_epoch = math.ceil(train_size / stage_recipe.batch_size)
        with strategy.scope():
            if train_config.frozen_encoders:
                model = head_model(config, classes, metadata["text_dim"], metadata["image_dim"])
            else:
                model = build_model(config, classes)
        if stage in fusion.DECISION_FUSIONS:
            (load_unimodal_heads if train_config.frozen_encoders else init_from_unimodal)(
                model, trained[fusion.TEXT_ONLY], trained[fusion.IMAGE_ONLY]
            )
        elif stage not in fusion.UNIMODAL_FUSIONS and train_config.init_from_unimodal and not (
            train_config.frozen_encoders
        ):
            init_from_unimodal(model, trained[fusion.TEXT_ONLY], trained[fusion.IMAGE_ONLY])
        if train_config.frozen_encoders:
            dataset = features_cache.make_feature_dataset(
                os.path.join(work_dir, FEATURE_CACHE_DIR), features.TRAIN_SPLIT, stage_recipe.batch_size,
                shuffle=True, repeat=True, seed=train_config.seed,
            )
        else:
            dataset = data.make_dataset(
                os.path.join(examples_dir, features.TRAIN_SPLIT, "*"),
                tft_output.transformed_feature_spec(),
                batch_size=stage_recipe.batch_size,
                image_size=model_config.image_size,
                shuffle=True,
                repeat=True,
                seed=train_config.seed,
                workers=num_workers(),
            )
        logs[stage] = fit_stage(
            model,
            dataset,
            stage=stage,
            stage_dir=stage_dir(stage),
            stage_recipe=stage_recipe,
            steps_per_epoch=steps_per_epoch,
            settings=_settings(config, stage_recipe, train_config),
            train_config=train_config,
            strategy=strategy,
        )
        trained[stage] = model

    warmup = export.warmup_examples(examples_dir, tft_output)
    exports = [(model_config.fusion, export_dir)]
    exports += [(stage, path) for stage, path in (unimodal_export_dirs or {}).items() if stage in trained and path]
    for stage, directory in exports:
        model = trained[stage]
        if train_config.frozen_encoders:
            with strategy.scope():
                model = build_model(_stage_config(model_config, stage), classes)
            copy_head(trained[stage], model)
        export.export_serving_model(
            model,
            tft_output,
            _writable(directory),
            image_size=model_config.image_size,
            max_seq_length=model_config.max_seq_length,
            warmup_examples=warmup,
        )
        print(f"exported {stage} to {directory}", flush=True)
    return logs
