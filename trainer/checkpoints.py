"""A stage's per-epoch checkpoints, pruned as training goes to the best epoch's and the last's.

ModelCheckpoint writes `checkpoints/epoch-NNN` every epoch; at 5,600 classes a fusion head's is about
74 MB, so a 30-epoch run would leave about 5 GB per stage. `KeepBestAndLast` runs after it at each
epoch's end and deletes every other epoch's files. The best is by validation top-1 (`val_accuracy`)
when the stage validates, else the last is also the best. Which epoch is best is kept in
`checkpoints/kept.json`, so a stage resumed by BackupAndRestore (which restores from `backup/`, not from
these files) still knows the best epoch of the run it continues.
"""
from __future__ import annotations

import json
import os
import re

import tensorflow as tf
import tf_keras as keras

CHECKPOINTS_DIR = "checkpoints"
KEPT_FILE = "kept.json"
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.")


def checkpoint_path(stage_dir: str) -> str:
    """ModelCheckpoint's filepath for a stage: one `epoch-NNN` checkpoint per epoch."""
    return os.path.join(stage_dir, CHECKPOINTS_DIR, "epoch-{epoch:03d}")


class KeepBestAndLast(keras.callbacks.Callback):
    """Deletes each epoch's checkpoint files but the best epoch's (highest `monitor`) and the last's.
    Must come after the ModelCheckpoint writing into `directory` in the callback list."""

    def __init__(self, directory: str, monitor: str = "val_accuracy"):
        super().__init__()
        self.directory, self.monitor = directory, monitor

    def _kept(self) -> dict:
        path = os.path.join(self.directory, KEPT_FILE)
        if not tf.io.gfile.exists(path):
            return {}
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        if not tf.io.gfile.isdir(self.directory):  # a worker that does not keep checkpoints
            return
        last, value = epoch + 1, (logs or {}).get(self.monitor)
        kept = self._kept()
        if value is None:
            kept = {"best_epoch": last}
        elif "best" not in kept or float(value) > kept["best"]:
            kept = {"best_epoch": last, "best": float(value), "monitor": self.monitor}
        with tf.io.gfile.GFile(os.path.join(self.directory, KEPT_FILE), "w") as f:
            json.dump(kept, f)
        for name in tf.io.gfile.listdir(self.directory):
            match = _EPOCH_FILE.match(name)
            if match and int(match.group(1)) not in (last, kept["best_epoch"]):
                tf.io.gfile.remove(os.path.join(self.directory, name))
