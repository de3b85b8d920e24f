"""Fine-tuning that cannot make a model worse.

A fine-tuning phase starts from a model that already works (tune "top": the head trained on fixed
features, then the encoders' last blocks train with it). A phase that diverges (on hm at run-local's
settings the image model's first fine-tuning epoch once took validation top-1 from 0.65 to 0.11)
would otherwise hand every later stage, and the pushed model, a broken encoder. So the phase's
validation top-1 is measured before it trains and after; if it ends below where it started, the
starting weights are kept, one line says so, and the stage's logs record both figures.

The starting weights and figure are written to the stage directory before training, so a job killed
mid-phase and resumed compares against the true start, not against a half-trained state.
"""
from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf
import tf_keras as keras

START_FILE = "start.json"
START_WEIGHTS = os.path.join("start", "weights")
# The keys a guarded phase adds to its logs.
START_ACCURACY, END_ACCURACY, KEPT_START = "start_val_accuracy", "end_val_accuracy", "kept_start_weights"


def validation_accuracy(model: keras.Model, validation: tf.data.Dataset) -> float:
    """Top-1 of a compiled model (its "accuracy" metric) on `validation`."""
    return float(model.evaluate(validation, verbose=0, return_dict=True)["accuracy"])


class KeepBetter:
    """`start` before the phase trains, `settle` after it: the model ends with the better of its
    starting and its fine-tuned weights on validation top-1 (ties keep the fine-tuned ones)."""

    def __init__(self, stage_dir: str, stage: str, validation: tf.data.Dataset, *, chief: bool = True, log=print):
        self.stage_dir, self.stage, self.validation, self.chief, self.log = stage_dir, stage, validation, chief, log
        self.start_accuracy: float | None = None
        # Under a multi-worker strategy every worker saves; only the chief's copy is kept.
        self.weights = self._path(START_WEIGHTS) if chief else os.path.join(tempfile.mkdtemp(), "weights")

    def _path(self, name: str) -> str:
        return os.path.join(self.stage_dir, name)

    def start(self, model: keras.Model) -> float:
        """Measures (or, on a resumed phase, reads back) the starting validation top-1 and keeps the
        starting weights; `model` must be compiled."""
        if tf.io.gfile.exists(self._path(START_FILE)):
            with tf.io.gfile.GFile(self._path(START_FILE)) as f:
                self.start_accuracy = float(json.load(f)[START_ACCURACY])
            return self.start_accuracy
        self.start_accuracy = validation_accuracy(model, self.validation)
        model.save_weights(self.weights)
        if self.chief:
            # Written after the weights: a start.json always has its weights beside it.
            with tf.io.gfile.GFile(self._path(START_FILE), "w") as f:
                json.dump({START_ACCURACY: self.start_accuracy}, f)
        return self.start_accuracy

    def settle(self, model: keras.Model) -> dict:
        """Compares the trained model with the start; restores the starting weights if it is worse.
        Returns the figures for the stage's logs."""
        if self.start_accuracy is None:
            raise RuntimeError("KeepBetter.settle before start")
        end = validation_accuracy(model, self.validation)
        kept = end < self.start_accuracy
        if kept:
            model.load_weights(self.weights).expect_partial()
            self.log(f"[{self.stage}] fine-tuning ended at validation top-1 {end:.4f}, below the "
                     f"{self.start_accuracy:.4f} it started from: keeping the starting weights")
        figures = {START_ACCURACY: self.start_accuracy, END_ACCURACY: end, KEPT_START: kept}
        if kept:  # what the model now scores: later choices on validation read this key
            figures["best_val_accuracy"] = self.start_accuracy
        return figures
