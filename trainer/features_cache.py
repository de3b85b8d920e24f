"""The frozen-encoder mode: f_t and f_i computed once per product, cached as TFRecords of features.

    transformed TFRecords → encoders (inference mode) → CACHE_DIR/{train,eval}/part-*.tfrecord.gz
        with TEXT_FEATURES_KEY [H], IMAGE_FEATURES_KEY [1280], LABEL_ID_KEY
    then only a fusion head trains, on batches of cached features (`make_feature_dataset`).

On a CPU this is what makes the paper's whole ablation run in minutes (an encoder forward pass per
product once, instead of a forward and backward pass per product per epoch per model); on a GPU it
lets users iterate on fusion heads cheaply. The cache streams: records are written as their batch
is encoded, in shards, and never held in memory.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from common import features
from trainer import data
from trainer.model import ModelConfig, encoder_model

METADATA_FILE = "cache.json"
RECORD_SUFFIX = ".tfrecord.gz"
RECORDS_PER_SHARD = 16384
SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)


def read_metadata(cache_dir: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(cache_dir, METADATA_FILE)) as f:
        return json.load(f)


def _check_reusable(cache_dir: str, encoder_fields: dict) -> dict | None:
    """The metadata of a finished cache built by the same encoders, None if there is none."""
    if not tf.io.gfile.exists(os.path.join(cache_dir, METADATA_FILE)):
        return None
    metadata = read_metadata(cache_dir)
    if metadata["encoders"] != encoder_fields:
        changed = sorted(k for k in encoder_fields if metadata["encoders"].get(k) != encoder_fields[k])
        raise ValueError(
            f"the feature cache {cache_dir} was built by other encoders (different {', '.join(changed)}): "
            "use another work directory"
        )
    return metadata


def _feature_example(text: np.ndarray, image: np.ndarray, label: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        features.TEXT_FEATURES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=text)),
        features.IMAGE_FEATURES_KEY: tf.train.Feature(float_list=tf.train.FloatList(value=image)),
        features.LABEL_ID_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def _cache_split(encode, dataset: tf.data.Dataset, split_dir: str) -> tuple[int, int, int]:
    """Writes the split's shards into split_dir; returns (records, text_dim, image_dim)."""
    tf.io.gfile.makedirs(split_dir)
    count, shard, writer, dims = 0, 0, None, (0, 0)
    try:
        for inputs, labels in dataset:
            encoded = encode(inputs)
            text = encoded[features.TEXT_FEATURES_KEY].numpy()
            image = encoded[features.IMAGE_FEATURES_KEY].numpy()
            dims = (text.shape[-1], image.shape[-1])
            for t, i, label in zip(text, image, labels.numpy()):
                if writer is None or count % RECORDS_PER_SHARD == 0 and count:
                    if writer is not None:
                        writer.close()
                        shard += 1
                    path = os.path.join(split_dir, f"part-{shard:05d}{RECORD_SUFFIX}")
                    writer = tf.io.TFRecordWriter(path, options="GZIP")
                writer.write(_feature_example(t, i, int(label)))
                count += 1
    finally:
        if writer is not None:
            writer.close()
    return count, *dims


def cache_features(
    *,
    examples_dir: str,
    transform_graph_dir: str,
    cache_dir: str,
    model_config: ModelConfig,
    batch_size: int = 64,
    splits: tuple[str, ...] = SPLITS,
) -> dict:
    """Encodes every split of `examples_dir` once (the benchmark adds a validation split); returns the
    cache's metadata.

    Idempotent: a finished cache built by the same encoders is reused as it is (its metadata is
    written last, so a killed run leaves none and starts over).
    """
    fields = model_config.encoder_fields()
    metadata = _check_reusable(cache_dir, fields)
    if metadata is not None and set(splits) <= set(metadata["split_sizes"]):
        return metadata
    if tf.io.gfile.exists(cache_dir):
        tf.io.gfile.rmtree(cache_dir)
    spec = tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec()
    encoders = encoder_model(model_config)
    encode = tf.function(lambda inputs: encoders(inputs, training=False))
    sizes, dims = {}, (0, 0)
    for split in splits:
        dataset = data.make_dataset(
            os.path.join(examples_dir, split, "*"), spec, batch_size, model_config.image_size, shuffle=False
        )
        sizes[split], *split_dims = _cache_split(encode, dataset, os.path.join(cache_dir, split))
        dims = tuple(split_dims) if sizes[split] else dims
    metadata = {"encoders": fields, "text_dim": dims[0], "image_dim": dims[1], "split_sizes": sizes}
    with tf.io.gfile.GFile(os.path.join(cache_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata


def feature_spec(metadata: dict) -> dict:
    return {
        features.TEXT_FEATURES_KEY: tf.io.FixedLenFeature([metadata["text_dim"]], tf.float32),
        features.IMAGE_FEATURES_KEY: tf.io.FixedLenFeature([metadata["image_dim"]], tf.float32),
        features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64),
    }


def make_feature_dataset(
    cache_dir: str,
    split: str,
    batch_size: int,
    shuffle: bool,
    repeat: bool = False,
    shuffle_buffer: int = 16384,
    seed: int | None = None,
) -> tf.data.Dataset:
    """({TEXT_FEATURES_KEY, IMAGE_FEATURES_KEY}, label_id) batches from the cache's split."""
    spec = feature_spec(read_metadata(cache_dir))
    records = data.read_records(
        os.path.join(cache_dir, split, f"*{RECORD_SUFFIX}"), shuffle, repeat, shuffle_buffer, seed
    )

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        label = parsed.pop(features.LABEL_ID_KEY)
        return parsed, label

    return records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
