"""tf.data input pipelines over the transform stage's GZIP TFRecords.

Files are read in parallel (interleave), records parsed a batch at a time (parse_example on a batch
is one op instead of batch-size ops), JPEGs decoded in parallel, and batches prefetched, so that the
accelerator never waits for input.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

from common import features

SPLIT_SIZES_FILE = "split_sizes.json"


def decode_images(jpegs: tf.Tensor, image_size: int) -> tf.Tensor:
    """JPEG bytes [batch] → float32 pixels [batch, s, s, 3] in [0, 255], as Keras EfficientNet expects."""
    pixels = tf.map_fn(
        lambda b: tf.io.decode_jpeg(b, channels=3),
        jpegs,
        fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8),
        parallel_iterations=16,
    )
    pixels = tf.ensure_shape(pixels, [None, image_size, image_size, 3])
    return tf.cast(pixels, tf.float32)


def model_inputs(transformed: dict, image_size: int) -> dict:
    """Transformed features (as the transform graph writes them) → the model's input tensors."""
    inputs = {key: tf.cast(transformed[key], tf.int32) for key in features.BERT_INPUT_KEYS}
    inputs[features.IMAGE_KEY] = decode_images(transformed[features.IMAGE_KEY], image_size)
    return inputs


def model_feature_spec(transformed_feature_spec: dict) -> dict:
    """The part of the transformed spec that training reads: model inputs and the label."""
    keys = (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY)
    return {key: transformed_feature_spec[key] for key in keys}


def read_records(
    file_pattern: str, shuffle: bool, repeat: bool = False, shuffle_buffer: int = 4096, seed: int | None = None
) -> tf.data.Dataset:
    """Serialized records of GZIP TFRecord files, read in parallel (and shuffled for training)."""
    files = tf.data.Dataset.list_files(file_pattern, shuffle=shuffle, seed=seed)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=tf.data.AUTOTUNE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not shuffle,
    )
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    return records


def make_dataset(
    file_pattern: str,
    transformed_feature_spec: dict,
    batch_size: int,
    image_size: int,
    shuffle: bool,
    repeat: bool = False,
    shuffle_buffer: int = 4096,
    seed: int | None = None,
    workers: int = 1,
) -> tf.data.Dataset:
    """(model inputs, label_id) batches from transformed TFRecords."""
    records = read_records(file_pattern, shuffle, repeat, shuffle_buffer, seed)
    spec = model_feature_spec(transformed_feature_spec)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        return model_inputs(parsed, image_size), parsed[features.LABEL_ID_KEY]

    batches = records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return shard_for_workers(batches, file_pattern, workers)


def shard_for_workers(dataset: tf.data.Dataset, file_pattern: str, workers: int) -> tf.data.Dataset:
    """tf.distribute shards a dataset between workers by file, which fails with fewer files than
    workers; then each worker reads everything and keeps its share of the records instead."""
    if workers > 1 and len(tf.io.gfile.glob(file_pattern)) < workers:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def write_split_sizes(examples_dir: str, sizes: dict[str, int]) -> None:
    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE), "w") as f:
        json.dump(sizes, f)


def read_split_sizes(examples_dir: str) -> dict[str, int]:
    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE)) as f:
        return json.load(f)
