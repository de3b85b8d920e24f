"""Fine-tuning that cannot make a model worse (trainer/guard.py through the one training loop): a
phase that ends below the validation top-1 it started from keeps its starting weights, says so,
and records both figures; a phase that improves keeps what it trained."""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from tests.conftest import SMALL_MODEL_IMAGE_SIZE, SMALL_MODEL_SEQ_LENGTH
from trainer import guard
from trainer.loop import LoopOptions, StageSpec, fit_stage
from trainer.recipe import SGD, Recipe

CLASSES, FEATURES, BATCH = 4, 8, 16


def _data(seed: int, n: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    return x, np.argmax(x[:, :CLASSES], axis=1)


def _trained_model():
    """A linear model that half solves the task (the head phase's result): well above chance, below 1."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((FEATURES,)), keras.layers.Dense(CLASSES)])
    kernel = np.random.default_rng(3).normal(scale=0.4, size=(FEATURES, CLASSES)).astype("float32")
    kernel[:CLASSES] += np.eye(CLASSES, dtype="float32") * 0.5
    model.set_weights([kernel, np.zeros(CLASSES, "float32")])
    return model


def _spec(tmp_path, learning_rate: float) -> StageSpec:
    return StageSpec(stage="probe top", stage_dir=str(tmp_path / "stage"), steps_per_epoch=256 // BATCH,
                     recipe=Recipe(SGD, learning_rate=learning_rate, epochs=2, batch_size=BATCH, weight_decay=0.0),
                     settings={"probe": learning_rate}, keep_better=True)


def _fine_tune(tmp_path, learning_rate: float, lines: list):
    x, y = _data(0, 256)
    # Labels of the train set scrambled: fine-tuning at a large rate fits noise and loses the task.
    y_train = np.random.default_rng(1).permutation(y) if learning_rate > 1 else y
    dataset = tf.data.Dataset.from_tensor_slices((x, y_train)).shuffle(256, seed=0).batch(BATCH).repeat()
    vx, vy = _data(2, 128)
    validation = tf.data.Dataset.from_tensor_slices((vx, vy)).batch(64)
    model = _trained_model()
    logs = fit_stage(model, dataset, _spec(tmp_path, learning_rate), validation=validation,
                     options=LoopOptions(log=lines.append))
    accuracy = float(np.mean(np.argmax(model(vx).numpy(), axis=1) == vy))
    return model, logs, accuracy


def test_a_collapsing_phase_keeps_its_starting_weights_and_says_so(tmp_path):
    lines = []
    model, logs, accuracy = _fine_tune(tmp_path, 50.0, lines)
    assert logs[guard.END_ACCURACY] < logs[guard.START_ACCURACY]  # the phase did end lower (by how much varies)
    assert logs[guard.KEPT_START] is True
    for kept, start in zip(model.get_weights(), _trained_model().get_weights()):
        np.testing.assert_array_equal(kept, start)
    assert np.isclose(accuracy, logs[guard.START_ACCURACY]) and np.isclose(logs["best_val_accuracy"], accuracy)
    said = [line for line in lines if "keeping the starting weights" in line]
    assert len(said) == 1 and "probe top" in said[0]
    # A rerun finds the stage finished and loads what was kept, not the collapsed weights.
    again = _trained_model()
    again.set_weights([w * 0 for w in again.get_weights()])
    fit_stage(again, None, _spec(tmp_path, 50.0), options=LoopOptions(log=lines.append))
    np.testing.assert_array_equal(again.get_weights()[0], _trained_model().get_weights()[0])


def test_a_phase_that_does_not_lose_accuracy_keeps_what_it_trained(tmp_path):
    lines = []
    model, logs, accuracy = _fine_tune(tmp_path, 0.05, lines)
    assert logs[guard.KEPT_START] is False
    assert logs[guard.END_ACCURACY] >= logs[guard.START_ACCURACY]
    assert np.isclose(accuracy, logs[guard.END_ACCURACY])
    assert not np.array_equal(model.get_weights()[0], _trained_model().get_weights()[0])
    assert not [line for line in lines if "keeping the starting weights" in line]


def test_a_collapsing_fine_tune_on_a_small_catalog_keeps_the_head_phase(distinct_preprocessed, tiny_bert_handle,
                                                                        tmp_path):
    """tune top on real products: the text model's head phase learns the titles, then fine-tuning
    BERT's last block at an absurd rate wrecks it; the kept model scores what the head phase did."""
    from common import features
    from trainer.fusion import HeadConfig
    from trainer.model import TOP, ModelConfig
    from trainer.train import Run, TrainConfig

    absurd = Recipe(SGD, learning_rate=1e4, epochs=2, batch_size=8, weight_decay=0.0)
    head = Recipe(learning_rate=1e-2, epochs=40, batch_size=8)
    run = Run(examples_dir=distinct_preprocessed.examples_dir,
              transform_graph_dir=distinct_preprocessed.transform_graph_dir, work_dir=str(tmp_path),
              model_config=ModelConfig(fusion=features.TEXT_ONLY, bert_handle=str(tiny_bert_handle), image_weights=None,
                                       image_size=SMALL_MODEL_IMAGE_SIZE, max_seq_length=SMALL_MODEL_SEQ_LENGTH,
                                       text_pooling="mean", head=HeadConfig(width=32)),
              train_config=TrainConfig(text_recipe=absurd, tune=TOP, head_recipe=head, validation_fraction=0.3),
              log=lambda line: None)
    trained = run.train_feature_model(features.TEXT_ONLY, absurd, str(tmp_path / "text_only"), seed=0)
    logs = trained.logs
    assert logs[guard.START_ACCURACY] >= 0.6  # the head phase learnt the titles (3 classes: chance 0.33)
    assert logs[guard.END_ACCURACY] < logs[guard.START_ACCURACY]
    assert logs[guard.KEPT_START] is True
    kept = trained.model
    kept.compile(metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    validation = run.dataset(TOP, "validation", 64, shuffle=False, input_names=list(kept.input))
    assert np.isclose(guard.validation_accuracy(kept, validation), logs[guard.START_ACCURACY])
