"""The one training loop (trainer/loop.py): which epoch early stopping keeps, and a run cut short
after some epochs of a longer schedule (what a cross-fitted fold trains)."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from trainer.loop import FINAL_WEIGHTS, LoopOptions, StageSpec, fit_stage
from trainer.recipe import Recipe

CLASSES, FEATURES, BATCH = 4, 8, 16


def _data(seed: int, n: int, noisy: bool):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = np.argmax(x[:, :CLASSES], axis=1)
    if noisy:  # validation labels half random: its accuracy goes up and down between epochs
        flip = rng.random(n) < 0.5
        y = np.where(flip, rng.integers(0, CLASSES, n), y)
    return x, y


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.layers.Input((FEATURES,)), keras.layers.Dense(CLASSES)])


def _fit(tmp_path, recipe, validation=None, prune=False, **spec):
    x, y = _data(0, 256, noisy=False)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=0).batch(BATCH).repeat()
    model = _model()
    logs = fit_stage(model, dataset, StageSpec(stage="probe", stage_dir=str(tmp_path / "stage"), recipe=recipe,
                                               steps_per_epoch=256 // BATCH, settings={"probe": 1}, **spec),
                     validation=validation, options=LoopOptions(log=lambda line: None, prune_checkpoints=prune))
    return model, logs


def test_early_stopping_keeps_the_best_validation_epoch_and_says_which(tmp_path):
    vx, vy = _data(1, 64, noisy=True)
    validation = tf.data.Dataset.from_tensor_slices((vx, vy)).batch(64)
    model, logs = _fit(tmp_path, Recipe(learning_rate=0.05, epochs=12, batch_size=BATCH),
                       validation=validation, patience=2)
    accuracies = []
    probe = _model()
    for epoch in range(1, logs["epochs"] + 1):
        probe.load_weights(str(tmp_path / "stage" / "checkpoints" / f"epoch-{epoch:03d}")).expect_partial()
        accuracies.append(float(np.mean(np.argmax(probe(vx).numpy(), axis=1) == vy)))
    assert logs["best_epoch"] == int(np.argmax(accuracies)) + 1
    assert np.isclose(logs["best_val_accuracy"], max(accuracies))
    kept = _model()
    kept.load_weights(str(tmp_path / "stage" / "checkpoints" / f"epoch-{logs['best_epoch']:03d}")).expect_partial()
    for saved, final in zip(kept.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(saved, final)  # the model returned, and saved, is the best epoch's
    final_weights = _model()
    final_weights.load_weights(str(tmp_path / "stage" / FINAL_WEIGHTS)).expect_partial()
    np.testing.assert_array_equal(final_weights.get_weights()[0], kept.get_weights()[0])


def test_a_run_cut_after_some_epochs_follows_the_whole_schedule(tmp_path):
    """Two epochs of a six-epoch recipe: the learning rate there is the six-epoch schedule's, not a
    schedule compressed into two epochs (which would have decayed to 0)."""
    recipe = Recipe(learning_rate=0.05, epochs=6, batch_size=BATCH)
    model, logs = _fit(tmp_path, recipe, epochs=2)
    steps = 2 * (256 // BATCH)
    assert logs["epochs"] == 2 and "best_epoch" not in logs and "val_accuracy" not in logs
    assert int(model.optimizer.iterations.numpy()) == steps
    expected = float(recipe.learning_rate_schedule(256 // BATCH)(steps))
    assert 0 < expected < recipe.learning_rate
    np.testing.assert_allclose(float(model.optimizer.learning_rate(model.optimizer.iterations)), expected, rtol=1e-6)
