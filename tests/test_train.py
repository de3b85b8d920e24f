"""Training on real transformed records, and the serving contract of the exported model."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from tests.conftest import FASHION_DIR
from trainer import export, features
from trainer.model import ModelConfig
from trainer.train import TrainConfig, train

IMAGE_SIZE = 32  # EfficientNet's smallest input: keeps a CPU epoch to seconds


@pytest.fixture(scope="module")
def exported(small_preprocessed, tiny_bert_handle, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    logs = train(
        examples_dir=small_preprocessed.examples_dir,
        transform_graph_dir=small_preprocessed.transform_graph_dir,
        export_dir=str(root / "model"),
        work_dir=str(root / "work"),
        model_config=ModelConfig(
            fusion="hanet",
            bert_handle=str(tiny_bert_handle),
            image_weights=None,
            image_size=IMAGE_SIZE,
            max_seq_length=24,
            fusion_width=32,
        ),
        train_config=TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3),
    )
    return logs, str(root / "model"), root / "work"


def test_training_runs_and_leaves_checkpoints_and_logs(exported):
    logs, _, work = exported
    assert np.isfinite(logs["loss"])
    assert sorted(os.listdir(work / "checkpoints"))[-1].startswith("epoch-002")
    assert any(name.startswith("events") for _, _, names in os.walk(work / "logs") for name in names)


def test_serving_signature_takes_raw_title_and_image_bytes(exported, small_preprocessed):
    _, model_dir, _ = exported
    model = tf.saved_model.load(model_dir)
    labels = set(export.label_names(tft.TFTransformOutput(small_preprocessed.transform_graph_dir)))
    image = (FASHION_DIR / "images" / "15970.jpg").read_bytes()
    out = model.signatures[features.SERVING_SIGNATURE](
        **{features.TITLE_KEY: tf.constant(["Turtle Check Men Navy Blue Shirt"] * 2),
           features.IMAGE_BYTES_KEY: tf.constant([image] * 2)}
    )
    classes = out[features.OUTPUT_CLASSES_KEY].numpy()
    scores = out[features.OUTPUT_SCORES_KEY].numpy()
    assert classes.shape == scores.shape == (2, features.DEFAULT_TOP_K)
    assert {c.decode() for c in classes.ravel()} <= labels
    assert np.all(np.diff(scores, axis=-1) <= 0) and np.all(scores.sum(-1) <= 1 + 1e-6)


def test_tf_example_and_transformed_signatures_agree_with_the_raw_one(exported, small_preprocessed):
    """No training/serving skew: the raw path and the stored transformed records give one answer."""
    _, model_dir, _ = exported
    model = tf.saved_model.load(model_dir)
    title, image = b"Turtle Check Men Navy Blue Shirt", (FASHION_DIR / "images" / "15970.jpg").read_bytes()
    raw = model.signatures[features.SERVING_SIGNATURE](title=tf.constant([title]), image_bytes=tf.constant([image]))
    example = tf.train.Example(features=tf.train.Features(feature={
        features.TITLE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[title])),
        features.IMAGE_BYTES_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
    }))
    via_example = model.signatures[features.TF_EXAMPLE_SIGNATURE](examples=tf.constant([example.SerializeToString()]))
    np.testing.assert_allclose(via_example["scores"], raw["scores"], rtol=1e-5)
    transformed = tft.TFTransformOutput(small_preprocessed.transform_graph_dir).transform_raw_features(
        {features.TITLE_KEY: tf.constant([title]), features.IMAGE_BYTES_KEY: tf.constant([image])}
    )
    probabilities = model.signatures[features.TRANSFORMED_SIGNATURE](
        **{k: transformed[k] for k in (*features.BERT_INPUT_KEYS, features.IMAGE_KEY)}
    )[features.OUTPUT_PROBABILITIES_KEY].numpy()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.sort(probabilities[0])[::-1][: raw["scores"].shape[-1]], raw["scores"][0], rtol=1e-5)
