"""The one training loop: every model of the pipeline and of the benchmark trains through `fit_stage`.

A stage directory holds one trained model: `settings.json` (what it was trained with, including the
fingerprint of its data), `backup/` (BackupAndRestore, so a killed job resumes mid-epoch),
`checkpoints/`, `logs/` (TensorBoard), and once finished `final/weights` and `done.json`. A finished
stage is loaded instead of trained again; a stage directory of other settings or other data is
refused with one line naming what differs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import typing

import tensorflow as tf
import tf_keras as keras

from trainer.checkpoints import KeepBestAndLast, checkpoint_path
from trainer.guard import KeepBetter
from trainer.recipe import Recipe

DONE_FILE = "done.json"
SETTINGS_FILE = "settings.json"
FINAL_WEIGHTS = os.path.join("final", "weights")


class StageError(ValueError):
    """A stage directory that cannot be used for this run (other settings or other data)."""


def is_chief() -> bool:
    """The worker that keeps checkpoints and exports: the "chief" task, else worker 0 (TF_CONFIG's rule)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task, cluster = tf_config.get("task", {}), tf_config.get("cluster", {})
    if task.get("type", "chief") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not cluster.get("chief")


def writable(path: str) -> str:
    """Where this worker writes `path`: itself on the chief, a throw-away directory elsewhere (under
    MultiWorkerMirroredStrategy every worker must save, only the chief's copy is kept)."""
    return path if is_chief() else os.path.join(tempfile.mkdtemp(), os.path.basename(path))


class ProgressLog(keras.callbacks.Callback):
    """One line every `every_steps` steps, with the global step, and one per epoch with the figures:
    Keras's progress bar only reaches pipeline logs at epoch end (it redraws with carriage
    returns), and epochs of the paper's data last an hour. Also says where a restarted run resumed."""

    def __init__(self, stage: str, total_steps: int, every_steps: int, log=print):
        super().__init__()
        self.stage, self.total_steps, self.every_steps, self.log = stage, total_steps, max(1, every_steps), log

    def on_train_begin(self, logs=None):
        self._start_step = int(self.model.optimizer.iterations.numpy())
        self._start_time = time.monotonic()
        verb = "resuming at" if self._start_step else "starting at"
        self.log(f"[{self.stage}] {verb} step {self._start_step}/{self.total_steps}")

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.every_steps and step != self.total_steps:
            return
        rate = (step - self._start_step) / max(time.monotonic() - self._start_time, 1e-9)
        figures = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
        self.log(f"[{self.stage}] step {step}/{self.total_steps}: {figures} ({rate:.2f} steps/s)")

    def on_epoch_end(self, epoch, logs=None):
        figures = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
        self.log(f"[{self.stage}] epoch {epoch + 1}: {figures}")

    def on_train_end(self, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.log(f"[{self.stage}] finished at step {step}; this run trained {step - self._start_step} steps")


def check_settings(stage_dir: str, settings: dict) -> None:
    """A stage directory belongs to one configuration and one dataset: resuming it with others would
    mix them."""
    path = os.path.join(stage_dir, SETTINGS_FILE)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        if saved != settings:
            changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            what = "other data" if changed == ["data"] else f"other settings (different {', '.join(changed)})"
            raise StageError(f"{stage_dir} holds a stage trained with {what}: use another work directory")
    elif is_chief():
        tf.io.gfile.makedirs(stage_dir)
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump(settings, f, indent=2, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage's training: `stage` names its progress lines, `settings` what it depends on (checked
    against its directory's), `epochs` (default the recipe's) cuts the recipe's schedule short, and
    `patience` > 0 stops early on validation top-1."""

    stage: str
    stage_dir: str
    recipe: Recipe
    steps_per_epoch: int
    settings: dict
    patience: int = 0
    epochs: int | None = None
    keep_better: bool = False  # a fine-tuning phase: keep its start if it ends worse (trainer/guard.py)


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """How every stage of a run trains, whatever the stage."""

    strategy: tf.distribute.Strategy | None = None
    backup_every_steps: int | None = None
    log_every_steps: int = 100
    log: typing.Callable[[str], None] = print
    prune_checkpoints: bool = True  # keep the best and the last epoch's checkpoints only


def fit_stage(
    model: keras.Model,
    dataset: tf.data.Dataset,
    spec: StageSpec,
    *,
    validation: tf.data.Dataset | None = None,
    options: LoopOptions = LoopOptions(),
) -> dict:
    """Compiles and fits `model` on `dataset` (repeated batches) with `spec.recipe`, or loads it if a
    previous run finished it. With `validation` and `spec.patience` > 0, stops once validation top-1
    has not improved for `patience` epochs and keeps the best epoch's weights (its number is
    "best_epoch" in the logs). `spec.epochs` stops training after that many epochs of the recipe's
    schedule: the learning rate follows the same curve as in a run of all of them.

    `spec.keep_better` (a fine-tuning phase, with `validation`): if the phase ends below the
    validation top-1 it started from, the starting weights are kept (trainer/guard.py).

    Returns the last epoch's logs plus "epochs" (trained), "seconds" and, with validation,
    "best_val_accuracy" and, with early stopping, "best_epoch"; with `keep_better`, the guard's figures.
    """
    stage_dir, log = spec.stage_dir, options.log
    check_settings(stage_dir, spec.settings)
    epochs = min(spec.epochs or spec.recipe.epochs, spec.recipe.epochs)
    done = os.path.join(stage_dir, DONE_FILE)
    if tf.io.gfile.exists(done):
        return _load_finished(model, spec, done, log)
    started = time.monotonic()
    _compile(model, spec, options.strategy or tf.distribute.get_strategy())
    callbacks = _callbacks(spec, epochs, options)
    guard = (KeepBetter(stage_dir, spec.stage, validation, chief=is_chief(), log=log)
             if spec.keep_better and validation is not None else None)
    if guard is not None:
        guard.start(model)
    early_stopping = None
    if validation is not None and spec.patience:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=spec.patience, restore_best_weights=True)
        callbacks.append(early_stopping)
    history = model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=spec.steps_per_epoch,
        validation_data=validation,
        callbacks=callbacks,
        verbose=0,  # ProgressLog writes the lines people read
    )
    logs = _history_logs(history.history, time.monotonic() - started, early_stopping)
    if guard is not None:
        logs.update(guard.settle(model))
    model.save_weights(writable(os.path.join(stage_dir, FINAL_WEIGHTS)))
    if is_chief():
        with tf.io.gfile.GFile(done, "w") as f:
            json.dump(logs, f)
    return logs


def _load_finished(model: keras.Model, spec: StageSpec, done: str, log) -> dict:
    model.load_weights(os.path.join(spec.stage_dir, FINAL_WEIGHTS)).expect_partial()
    with tf.io.gfile.GFile(done) as f:
        logs = json.load(f)
    log(f"[{spec.stage}] already trained in {spec.stage_dir}")
    return logs


def _history_logs(history: dict, seconds: float, early_stopping) -> dict:
    logs = {name: float(values[-1]) for name, values in history.items() if values}
    logs["epochs"] = len(history.get("loss", []))
    logs["seconds"] = seconds
    if "val_accuracy" in history:
        logs["best_val_accuracy"] = float(max(history["val_accuracy"]))
    if early_stopping is not None:
        # The callback's count, not the history's: after a resume the history starts mid-run.
        logs["best_epoch"] = early_stopping.best_epoch + 1
    return logs


def _compile(model: keras.Model, spec: StageSpec, strategy: tf.distribute.Strategy) -> None:
    # Keras sums per-replica batch logs by default ("auto"), and the metrics are already global.
    model.distribute_reduction_method = "first"
    with strategy.scope():
        model.compile(
            optimizer=spec.recipe.make_optimizer(spec.steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"),
            ],
        )


def _callbacks(spec: StageSpec, epochs: int, options: LoopOptions) -> list:
    return [
        # Not deleted at the end: if the job dies before DONE_FILE is written, the rerun restores
        # the finished state instead of training the stage again.
        keras.callbacks.BackupAndRestore(
            os.path.join(spec.stage_dir, "backup"), save_freq=options.backup_every_steps or "epoch",
            delete_checkpoint=False,
        ),
        keras.callbacks.ModelCheckpoint(checkpoint_path(spec.stage_dir), save_weights_only=True),
        *([KeepBestAndLast(os.path.dirname(checkpoint_path(spec.stage_dir)))] if options.prune_checkpoints else []),
        keras.callbacks.TensorBoard(os.path.join(spec.stage_dir, "logs")),
        ProgressLog(spec.stage, spec.steps_per_epoch * epochs, options.log_every_steps, options.log),
    ]
