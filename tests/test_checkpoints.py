"""Checkpoint pruning (trainer/checkpoints.py): a stage keeps its best and its last epoch's checkpoints,
the best being the very weights of that epoch, also when the run is killed and resumed."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tests.test_loop import BATCH, _data, _fit, _model
from trainer.checkpoints import KEPT_FILE
from trainer.recipe import Recipe

RECIPE = Recipe(learning_rate=0.05, epochs=6, batch_size=BATCH)


def _validation():
    vx, vy = _data(1, 64, noisy=True)
    return vx, vy, tf.data.Dataset.from_tensor_slices((vx, vy)).batch(64)


def _epochs(directory) -> set[int]:
    return {int(name[len("epoch-"):len("epoch-") + 3]) for name in os.listdir(directory) if name.startswith("epoch-")}


def _weights(path: str) -> list[np.ndarray]:
    model = _model()
    model.load_weights(path).expect_partial()
    return model.get_weights()


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.val_accuracy = []

    def on_epoch_end(self, epoch, logs=None):
        self.val_accuracy.append(logs["val_accuracy"])


def test_only_the_best_and_the_last_epochs_checkpoints_are_kept_and_they_are_those_epochs_weights(
        tmp_path, monkeypatch):
    from trainer import loop

    vx, vy, validation = _validation()
    record, callbacks = _Record(), loop._callbacks
    monkeypatch.setattr(loop, "_callbacks", lambda *args: [*callbacks(*args), record])
    model, logs = _fit(tmp_path, RECIPE, validation=validation, prune=True)
    assert len(record.val_accuracy) == RECIPE.epochs and len(set(record.val_accuracy)) > 1  # epochs differ
    best = int(np.argmax(record.val_accuracy)) + 1  # the first of equals: a later tie does not replace it
    directory = tmp_path / "stage" / "checkpoints"
    assert _epochs(directory) == {best, RECIPE.epochs}
    assert json.loads((directory / KEPT_FILE).read_text())["best_epoch"] == best
    kept = _model()
    kept.load_weights(str(directory / f"epoch-{best:03d}")).expect_partial()
    assert np.mean(np.argmax(kept(vx).numpy(), axis=1) == vy) == pytest.approx(record.val_accuracy[best - 1])
    for last, final in zip(_weights(str(directory / f"epoch-{RECIPE.epochs:03d}")), model.get_weights()):
        np.testing.assert_array_equal(last, final)  # no early stopping here: the model is the last epoch's


def test_without_validation_only_the_last_is_kept(tmp_path):
    _fit(tmp_path, RECIPE, prune=True)
    assert _epochs(tmp_path / "stage" / "checkpoints") == {RECIPE.epochs}


class _Killed(Exception):
    pass


class _KillAfter(keras.callbacks.Callback):
    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise _Killed()


def test_a_resumed_run_still_knows_the_best_epoch_of_the_run_it_continues(tmp_path, monkeypatch):
    from trainer import loop

    _, _, validation = _validation()
    callbacks = loop._callbacks
    monkeypatch.setattr(loop, "_callbacks", lambda *args: [*callbacks(*args), _KillAfter(3)])
    with pytest.raises(_Killed):
        _fit(tmp_path, RECIPE, validation=validation, prune=True)
    directory = tmp_path / "stage" / "checkpoints"
    before = json.loads((directory / KEPT_FILE).read_text())
    assert _epochs(directory) == {before["best_epoch"], 3}
    monkeypatch.setattr(loop, "_callbacks", callbacks)
    _fit(tmp_path, RECIPE, validation=validation, prune=True)  # BackupAndRestore resumes at epoch 4
    after = json.loads((directory / KEPT_FILE).read_text())
    assert after["best"] >= before["best"] and _epochs(directory) == {after["best_epoch"], RECIPE.epochs}
    if after["best"] == before["best"]:  # no later epoch beat it: the first run's best is still the one kept
        assert after["best_epoch"] == before["best_epoch"]
