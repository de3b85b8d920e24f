"""The split-sizes file: products per split, written by the preprocess stage beside the examples and
read by the trainer for its steps per epoch, so that no stage counts records by reading them all."""
from __future__ import annotations

import json
import os

SPLIT_SIZES_FILE = "split_sizes.json"


def write_split_sizes(examples_dir: str, sizes: dict[str, int]) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE), "w") as f:
        json.dump(sizes, f)


def read_split_sizes(examples_dir: str) -> dict[str, int]:
    import tensorflow as tf

    with tf.io.gfile.GFile(os.path.join(examples_dir, SPLIT_SIZES_FILE)) as f:
        return json.load(f)
