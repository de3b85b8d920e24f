"""Same catalog, settings and seed → same model: the preprocess stage writes products in no fixed
order (Beam), so training must not depend on it. The same examples, written in another order and
into another number of files, give identical cached features and identical trained weights."""
import os
import shutil

import numpy as np
import tensorflow as tf
import tf_keras as keras

from common import features
from tests.conftest import SMALL_MODEL_IMAGE_SIZE
from trainer import features_cache
from trainer.fusion import HeadConfig
from trainer.model import FROZEN, ModelConfig
from trainer.recipe import Recipe
from trainer.train import Run, TrainConfig


def _records(directory: str) -> list[bytes]:
    files = sorted(tf.io.gfile.glob(os.path.join(directory, "*")))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())


def _ids(records: list[bytes]) -> list[bytes]:
    return [tf.train.Example.FromString(r).features.feature[features.ID_KEY].bytes_list.value[0] for r in records]


def _reordered_copy(examples_dir: str, out: str, files: int, seed: int) -> str:
    """The examples with every split's records shuffled and spread over `files` files."""
    shutil.copytree(examples_dir, out)
    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        records = _records(os.path.join(out, split))
        for path in tf.io.gfile.glob(os.path.join(out, split, "*")):
            tf.io.gfile.remove(path)
        order = np.random.default_rng(seed).permutation(len(records))
        for i in range(files):
            with tf.io.TFRecordWriter(os.path.join(out, split, f"part-{i:05d}-of-{files:05d}.tfrecord.gz"),
                                      "GZIP") as writer:
                for index in order[i::files]:
                    writer.write(records[index])
    return out


def _train(preprocessed, examples_dir: str, work_dir: str, bert_handle) -> tuple[Run, keras.Model, dict]:
    keras.utils.set_random_seed(0)  # the random image encoder's weights (no pretrained ones here)
    run = Run(examples_dir=examples_dir, transform_graph_dir=preprocessed.transform_graph_dir, work_dir=work_dir,
              model_config=ModelConfig(fusion=features.CONCAT, bert_handle=str(bert_handle), image_weights=None,
                                       image_size=SMALL_MODEL_IMAGE_SIZE, max_seq_length=24,
                                       head=HeadConfig(width=16)),
              train_config=TrainConfig(tune=FROZEN, head_recipe=Recipe(learning_rate=1e-2, epochs=3, batch_size=8),
                                       validation_fraction=0.25),
              log=lambda line: None)
    trained = run.train_feature_model(features.CONCAT, run.train_config.head_recipe,
                                      os.path.join(work_dir, "concat"), seed=0)
    return run, trained.model, trained.logs


def test_shuffled_example_files_give_the_same_cache_and_the_same_model(small_preprocessed, tiny_bert_handle,
                                                                       tmp_path):
    original = small_preprocessed.examples_dir
    reordered = _reordered_copy(original, str(tmp_path / "reordered"), files=3, seed=7)
    train_ids = _ids(_records(os.path.join(original, features.TRAIN_SPLIT)))
    reordered_ids = _ids(_records(os.path.join(reordered, features.TRAIN_SPLIT)))
    assert sorted(train_ids) == sorted(reordered_ids) and train_ids != reordered_ids  # a real reordering

    run_a, model_a, logs_a = _train(small_preprocessed, original, str(tmp_path / "a"), tiny_bert_handle)
    run_b, model_b, logs_b = _train(small_preprocessed, reordered, str(tmp_path / "b"), tiny_bert_handle)
    for split in (features.TRAIN_SPLIT, features.VALIDATION_SPLIT):
        cached_a = _records(os.path.join(run_a.cache_dir, split))
        assert cached_a == _records(os.path.join(run_b.cache_dir, split))
        keys = [features_cache.order_key(i) for i in _ids(cached_a)]
        assert keys == sorted(keys)
    for weights_a, weights_b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_array_equal(weights_a, weights_b)
    for name in ("loss", "val_accuracy", "val_loss"):
        assert logs_a[name] == logs_b[name]
