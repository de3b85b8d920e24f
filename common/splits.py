"""What the preprocess stage writes beside the examples, and other stages read: the split-sizes file
(products per split, for the trainer's steps per epoch, so that no stage counts records by reading
them all), where a split's raw examples are kept (for the evaluate stage's served comparison) and,
beside the transform graph, the image limit it ran with (the exported model refuses the same images)."""
from __future__ import annotations

import json
import os

from common import features

SPLIT_SIZES_FILE = "split_sizes.json"
IMAGE_LIMITS_FILE = "image_limits.json"
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


def write_max_image_pixels(transform_graph_dir: str, max_image_pixels: int) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(transform_graph_dir, IMAGE_LIMITS_FILE), "w") as f:
        json.dump({"max_image_pixels": int(max_image_pixels)}, f)


def read_max_image_pixels(transform_graph_dir: str) -> int:
    """The pixel limit preprocess ran with; features.DEFAULT_MAX_IMAGE_PIXELS for a transform graph
    written before the limit was recorded (the limit preprocess then always had)."""
    import tensorflow as tf

    path = os.path.join(transform_graph_dir, IMAGE_LIMITS_FILE)
    if not tf.io.gfile.exists(path):
        return features.DEFAULT_MAX_IMAGE_PIXELS
    with tf.io.gfile.GFile(path) as f:
        try:
            recorded = json.load(f)
        except ValueError:
            recorded = None
    value = recorded.get("max_image_pixels") if isinstance(recorded, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{path}: max_image_pixels must be a positive integer, got {value!r}")
    return value
