"""What the preprocess stage writes beside the examples, and other stages read: the split-sizes file
(products per split, for the trainer's steps per epoch, so that no stage counts records by reading
them all) and where a split's raw examples are kept (for the evaluate stage's served comparison)."""
from __future__ import annotations

import json
import os

from common import features

SPLIT_SIZES_FILE = "split_sizes.json"
_HASH_BUCKETS = 2**31 - 1


def raw_examples_dir(examples_dir: str, split: str = features.EVAL_SPLIT) -> str:
    """Where a split's raw tf.Examples are kept (features.RAW_EXAMPLES_DIR); preprocess keeps eval's."""
    return os.path.join(examples_dir, features.RAW_EXAMPLES_DIR, split)


def in_salted_share(ids, salt: str, share: float):
    """bool [batch]: whether each product id (string tensor) falls in a `share` of all ids picked by a
    salted hash (FarmHash Fingerprint64, in the graph: stable across machines and releases). Each salt
    picks independently of the others and of the eval split's hash."""
    import tensorflow as tf

    buckets = tf.strings.to_hash_bucket_fast(tf.strings.join([salt, ids]), _HASH_BUCKETS)
    return tf.cast(buckets, tf.float64) < share * _HASH_BUCKETS


def write_split_sizes(examples_dir: str, sizes: dict[str, int]) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE), "w") as f:
        json.dump(sizes, f)


def read_split_sizes(examples_dir: str) -> dict[str, int]:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE)) as f:
        return json.load(f)
