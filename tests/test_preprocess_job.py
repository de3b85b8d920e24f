"""The preprocess stage end to end on real products: records, transform graph, quarantine, metrics."""
import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.evaluate import RAW_SPEC
from components.preprocess import row_checks
from components.preprocess.job import PreprocessError, check_outputs, split_of
from tests.conftest import FASHION_CATALOG, FASHION_DIR
from common import features
from trainer import data


def _read(examples_dir, split, spec):
    files = tf.io.gfile.glob(os.path.join(examples_dir, split, "*"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(lambda s: tf.io.parse_single_example(s, spec))
    return list(dataset.as_numpy_iterator())


def test_every_row_is_kept_or_quarantined_with_its_reason(small_preprocessed):
    metrics = small_preprocessed.metrics
    assert metrics["rows_in"] == 51
    assert sum(metrics["kept"].values()) == 48
    assert metrics["quarantined"] == {row_checks.MISSING_IMAGE: 1, row_checks.MISSING_TITLE: 1, row_checks.DUPLICATE_ID: 1}
    with open(small_preprocessed.quarantine_file) as f:
        lines = [json.loads(line) for line in f]
    assert sorted(q["reason"] for q in lines) == sorted(metrics["quarantined"])
    duplicate = next(q for q in lines if q["reason"] == row_checks.DUPLICATE_ID)
    assert duplicate["row_number"] == 51 and "row 1" in duplicate["message"]
    with open(small_preprocessed.metrics_file) as f:
        assert json.load(f) == metrics


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


def test_the_eval_split_raw_examples_are_kept_as_the_catalog_has_them(small_preprocessed):
    examples_dir = small_preprocessed.examples_dir
    raw_dir = os.path.join(examples_dir, features.RAW_EXAMPLES_DIR)
    assert os.listdir(raw_dir) == [features.EVAL_SPLIT]  # train's are not kept: nothing reads them
    files = tf.io.gfile.glob(os.path.join(raw_dir, features.EVAL_SPLIT, "*.tfrecord.gz"))
    assert files
    raw = [tf.io.parse_single_example(r, RAW_SPEC) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    raw = {e[features.ID_KEY].numpy().decode(): e for e in raw}
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    transformed_ids = [e[features.ID_KEY].decode() for e in _read(examples_dir, features.EVAL_SPLIT, spec)]
    # The same products as the transformed eval split, each once (not the quarantined duplicate).
    assert sorted(raw) == sorted(transformed_ids) and len(raw) == small_preprocessed.metrics["kept"]["eval"] > 0
    with open(FASHION_CATALOG, newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    for product_id, example in raw.items():
        row, photo = rows[product_id], FASHION_DIR / rows[product_id]["image"]
        assert example[features.TITLE_KEY].numpy().decode() == row["title"]
        assert example[features.LABEL_KEY].numpy().decode() == row["articleType"]
        image_bytes = example[features.IMAGE_BYTES_KEY].numpy()
        # The catalog's original photo, as the row checks pass it on: not the resized model input.
        assert image_bytes == row_checks.normalize_image(photo.read_bytes(), str(photo))
        pixels = tf.io.decode_image(image_bytes, channels=3).numpy()
        assert np.array_equal(pixels, tf.io.decode_image(photo.read_bytes(), channels=3).numpy())
        assert pixels.shape[0] > 32 and pixels.shape[1] > 32


def test_raw_eval_shards_of_an_earlier_run_are_refused_before_any_work(tmp_path):
    raw_eval = tmp_path / "examples" / features.RAW_EXAMPLES_DIR / features.EVAL_SPLIT
    raw_eval.mkdir(parents=True)
    (raw_eval / "part-00000-of-00001.tfrecord.gz").write_bytes(b"")
    # The evaluate stage reads every shard there: an earlier run's would be compared on as this one's.
    with pytest.raises(PreprocessError, match="already holds raw eval records"):
        check_outputs(str(tmp_path / "examples"))


# Computed once with split_of as it stands: a product must stay in its split across releases (a trained
# model's eval products must not move into train), so any change of the hash or of how the id is encoded
# has to fail here.
KNOWN_SPLITS = {
    "15970": features.TRAIN_SPLIT,
    "21379": features.TRAIN_SPLIT,
    "18653": features.TRAIN_SPLIT,
    "Café": features.TRAIN_SPLIT,
    "17429": features.EVAL_SPLIT,
    "18461": features.EVAL_SPLIT,
    "19311": features.EVAL_SPLIT,
    "11518": features.EVAL_SPLIT,
    "39386": features.EVAL_SPLIT,
}


def test_split_of_known_ids_is_fixed_and_the_train_share_is_one_minus_eval_fraction():
    assert {product_id: split_of(product_id, 0.2) for product_id in KNOWN_SPLITS} == KNOWN_SPLITS
    ids = [f"synthetic-{i}" for i in range(10_000)]
    train_share = sum(split_of(i, 0.2) == features.TRAIN_SPLIT for i in ids) / len(ids)
    assert abs(train_share - 0.8) < 0.015  # observed 0.807; a binomial standard deviation is 0.004


def test_eval_labels_unseen_in_train_are_kept_mapped_to_oov_and_reported(small_preprocessed):
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    vocabulary = [v.decode() for v in tft_output.vocabulary_by_name(features.LABEL_VOCABULARY_NAME)]
    with open(FASHION_CATALOG, newline="") as f:
        label_of = {row["id"]: row["articleType"] for row in csv.DictReader(f)}
    spec = tft_output.transformed_feature_spec()
    eval_rows = [(label_of[e[features.ID_KEY].decode()], e[features.LABEL_ID_KEY])
                 for e in _read(small_preprocessed.examples_dir, features.EVAL_SPLIT, spec)]
    train_labels = {label_of[e[features.ID_KEY].decode()]
                    for e in _read(small_preprocessed.examples_dir, features.TRAIN_SPLIT, spec)}
    only_in_eval = {}
    for label, label_id in eval_rows:
        if label in train_labels:
            assert vocabulary[label_id] == label
        else:
            assert label_id == len(vocabulary)  # the OOV bucket
            only_in_eval[label] = only_in_eval.get(label, 0) + 1
    metrics = small_preprocessed.metrics
    assert only_in_eval and metrics["labels_only_in_eval"] == only_in_eval  # 48 products do have some
    assert metrics["out_of_vocabulary_rows"] == {features.TRAIN_SPLIT: 0, features.EVAL_SPLIT: sum(only_in_eval.values())}
    assert metrics["labels_below_min_count"] == {} and metrics["label_min_count"] == 1


def test_the_label_vocabulary_file_holds_each_train_label_once(small_preprocessed):
    with open(small_preprocessed.label_vocabulary_file) as f:
        vocabulary = f.read().splitlines()
    assert len(vocabulary) == small_preprocessed.metrics["label_vocabulary_size"]
    assert "Shirts" in vocabulary and len(set(vocabulary)) == len(vocabulary)
