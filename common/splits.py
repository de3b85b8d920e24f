"""What the preprocess stage writes beside the examples, and other stages read: the split-sizes file
(products per split, for the trainer's steps per epoch, so that no stage counts records by reading
them all) and where a split's raw examples are kept (for the evaluate stage's served comparison)."""
from __future__ import annotations

import json
import os

from common import features

SPLIT_SIZES_FILE = "split_sizes.json"


def raw_examples_dir(examples_dir: str, split: str = features.EVAL_SPLIT) -> str:
    """Where a split's raw tf.Examples are kept (features.RAW_EXAMPLES_DIR); preprocess keeps eval's."""
    return os.path.join(examples_dir, features.RAW_EXAMPLES_DIR, split)


def write_split_sizes(examples_dir: str, sizes: dict[str, int]) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE), "w") as f:
        json.dump(sizes, f)


def read_split_sizes(examples_dir: str) -> dict[str, int]:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE)) as f:
        return json.load(f)
