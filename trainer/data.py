"""tf.data input pipelines over the transform stage's GZIP TFRecords.

Files are read in parallel (interleave), records parsed a batch at a time (parse_example on a batch
is one op instead of batch-size ops), JPEGs decoded in parallel, and batches prefetched, so that the
accelerator never waits for input.
"""
from __future__ import annotations

import hashlib
import os

import tensorflow as tf

from common import features
from common.splits import in_salted_share, read_split_sizes

# The validation split is carved out of the train split by a salted hash of the id, in the graph
# (FarmHash Fingerprint64, stable across machines and releases), so no copy of the records is made
# and every reader of the train split agrees on it. The salt keeps it independent of the eval split's
# hash; cross-fitting folds are a third, independent hash.
_VALIDATION_SALT = "validation:"
_FOLD_SALT = "fold:"
# Files read at once, interleaved.
READ_CYCLE = 8


def in_validation(ids: tf.Tensor, fraction: float) -> tf.Tensor:
    """bool [batch]: whether each product id (string) belongs to the validation split."""
    return in_salted_share(ids, _VALIDATION_SALT, fraction)


def fold_of(ids: tf.Tensor, folds: int) -> tf.Tensor:
    """int64 [batch] in [0, folds): each product's cross-fitting fold."""
    return tf.strings.to_hash_bucket_fast(tf.strings.join([_FOLD_SALT, ids]), folds)


def split_predicate(split: str, validation_fraction: float):
    """(source directory of `split` under an examples artifact, a keep(ids) → bool [batch] or None):
    train and validation both read the preprocess stage's train split."""
    if split == features.VALIDATION_SPLIT:
        return features.TRAIN_SPLIT, lambda ids: in_validation(ids, validation_fraction)
    if split == features.TRAIN_SPLIT and validation_fraction > 0:
        return features.TRAIN_SPLIT, lambda ids: tf.logical_not(in_validation(ids, validation_fraction))
    return split, None


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
    """The part of the transformed spec that training reads: model inputs, the label and the id."""
    keys = (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY, features.ID_KEY)
    return {key: transformed_feature_spec[key] for key in keys}


def read_records(
    file_pattern: str, shuffle: bool, repeat: bool = False, shuffle_buffer: int = 4096, seed: int | None = None
) -> tf.data.Dataset:
    """Serialized records of GZIP TFRecord files, read in parallel (and shuffled for training, the
    same way for the same seed)."""
    files = tf.data.Dataset.list_files(file_pattern, shuffle=shuffle, seed=seed)
    # A fixed cycle and a deterministic interleave: with a seed, the same files give the same
    # records in the same order on every run and machine (AUTOTUNE's cycle is the core count).
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=READ_CYCLE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        records = records.repeat()
    return records


def make_dataset(
    examples_dir: str,
    split: str,
    transformed_feature_spec: dict,
    batch_size: int,
    image_size: int,
    shuffle: bool,
    repeat: bool = False,
    shuffle_buffer: int = 4096,
    seed: int | None = None,
    workers: int = 1,
    validation_fraction: float = 0.0,
    keep=None,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """(model inputs, label_id[, id]) batches of one split (train, validation or eval) of transformed
    TFRecords; `keep(ids) → bool [n]` selects products further (cross-fitting folds)."""
    source, in_split = split_predicate(split, validation_fraction)
    file_pattern = os.path.join(examples_dir, source, "*")
    records = select(read_records(file_pattern, shuffle, repeat, shuffle_buffer, seed), in_split, keep)
    spec = model_feature_spec(transformed_feature_spec)

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        if with_ids:
            return model_inputs(parsed, image_size), parsed[features.LABEL_ID_KEY], parsed[features.ID_KEY]
        return model_inputs(parsed, image_size), parsed[features.LABEL_ID_KEY]

    batches = records.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return shard_for_workers(batches, file_pattern, workers)


_ID_SPEC = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}


def select(records: tf.data.Dataset, *predicates) -> tf.data.Dataset:
    """The serialized examples (with an ID_KEY) that every predicate keeps(ids [n]) → bool [n] keeps;
    filtered one record at a time, before batching, so batches stay full."""
    predicates = [p for p in predicates if p is not None]
    if not predicates:
        return records

    def keep(serialized):
        ids = tf.io.parse_single_example(serialized, _ID_SPEC)[features.ID_KEY][None]
        return tf.reduce_all(tf.stack([predicate(ids)[0] for predicate in predicates]))

    return records.filter(keep)


def shard_for_workers(dataset: tf.data.Dataset, file_pattern: str, workers: int) -> tf.data.Dataset:
    """tf.distribute shards a dataset between workers by file, which fails with fewer files than
    workers; then each worker reads everything and keeps its share of the records instead."""
    if workers > 1 and len(tf.io.gfile.glob(file_pattern)) < workers:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def fingerprint(*directories: str, head_bytes: int = 65536) -> str:
    """A digest of the files under `directories` (examples, a transform graph): each file's relative
    path, size and first `head_bytes` bytes. What a stage or a cache built from them is keyed by, so
    that other data in the same work directory is never mistaken for this one. Reading every byte
    of 1.5M products would cost minutes per run; a rewritten file of the same size whose first
    64 KiB are unchanged would go unnoticed."""
    digest = hashlib.sha256()
    for directory in directories:
        for root, _, names in sorted(tf.io.gfile.walk(directory)):
            for name in sorted(names):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, directory).encode() + b"\0")
                digest.update(str(tf.io.gfile.stat(path).length).encode() + b"\0")
                with tf.io.gfile.GFile(path, "rb") as f:
                    digest.update(f.read(head_bytes))
    return digest.hexdigest()[:16]


def count_split_sizes(examples_dir: str, validation_fraction: float) -> dict[str, int]:
    """{train, validation, eval: products}: one pass over the ids (the validation split has no file)."""
    sizes = read_split_sizes(examples_dir)
    if not validation_fraction:
        return sizes
    files = tf.io.gfile.glob(os.path.join(examples_dir, features.TRAIN_SPLIT, "*"))
    validation = 0
    if files:
        ids = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096).map(
            lambda s: tf.io.parse_example(s, _ID_SPEC)[features.ID_KEY])
        validation = int(sum(int(tf.reduce_sum(tf.cast(in_validation(batch, validation_fraction), tf.int32)))
                             for batch in ids))
    return {features.TRAIN_SPLIT: sizes[features.TRAIN_SPLIT] - validation, features.VALIDATION_SPLIT: validation,
            features.EVAL_SPLIT: sizes[features.EVAL_SPLIT]}
