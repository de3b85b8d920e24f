"""The preprocess stage end to end on real products: records, transform graph, quarantine, metrics."""
import json
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from components.preprocess import records
from components.preprocess.job import split_of
from trainer import data, features


def _read(examples_dir, split, spec):
    files = tf.io.gfile.glob(os.path.join(examples_dir, split, "*"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(lambda s: tf.io.parse_single_example(s, spec))
    return list(dataset.as_numpy_iterator())


def test_every_row_is_kept_or_quarantined_with_its_reason(small_preprocessed):
    metrics = small_preprocessed.metrics
    assert metrics["rows_in"] == 51
    assert sum(metrics["kept"].values()) == 48
    assert metrics["quarantined"] == {records.MISSING_IMAGE: 1, records.MISSING_TITLE: 1, records.DUPLICATE_ID: 1}
    with open(small_preprocessed.quarantine_file) as f:
        lines = [json.loads(line) for line in f]
    assert sorted(q["reason"] for q in lines) == sorted(metrics["quarantined"])
    duplicate = next(q for q in lines if q["reason"] == records.DUPLICATE_ID)
    assert duplicate["row_number"] == 51 and "row 1" in duplicate["message"]


def test_split_is_by_hash_of_id_and_records_carry_model_features(small_preprocessed):
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    spec = tft_output.transformed_feature_spec()
    vocabulary = [v.decode() for v in tft_output.vocabulary_by_name(features.LABEL_VOCABULARY_NAME)]
    sizes = data.read_split_sizes(small_preprocessed.examples_dir)
    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        examples = _read(small_preprocessed.examples_dir, split, spec)
        assert len(examples) == sizes[split] == small_preprocessed.metrics["kept"][split]
        for example in examples:
            assert split_of(example[features.ID_KEY].decode(), 0.2) == split
            word_ids = example[features.INPUT_WORD_IDS_KEY]
            assert word_ids.shape == (24,) and word_ids[0] == 101  # [CLS]
            assert example[features.INPUT_MASK_KEY].sum() == np.count_nonzero(word_ids)
            pixels = tf.io.decode_jpeg(example[features.IMAGE_KEY]).numpy()
            assert pixels.shape == (32, 32, 3)
            assert 0 <= example[features.LABEL_ID_KEY] <= len(vocabulary)  # the last index is OOV
    train_labels = {e[features.LABEL_ID_KEY] for e in _read(small_preprocessed.examples_dir, "train", spec)}
    # The vocabulary is analysed on train only: every train label is in it.
    assert max(train_labels) < len(vocabulary)
    assert len(vocabulary) == small_preprocessed.metrics["label_vocabulary_size"]


def test_split_of_is_stable_and_close_to_the_ratio():
    ids = [str(i) for i in range(20000)]
    eval_share = sum(split_of(i, 0.2) == features.EVAL_SPLIT for i in ids) / len(ids)
    assert abs(eval_share - 0.2) < 0.01
    assert split_of("15970", 0.2) == split_of("15970", 0.2)
