"""`python -m components.preprocess` on a sharded catalog of all three formats, with the default runner
(the DirectRunner, one worker process per core): every row accounted for, and one-line errors."""
import contextlib
import csv
import gzip
import io
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from components.preprocess import row_checks
from components.preprocess.__main__ import main
from components.preprocess.tokenizer import BertTokenizer
from tests.conftest import FASHION_CATALOG, FASHION_DIR
from common import features
from components.preprocess.tokenizer import encoder_vocab_file

MAX_SEQ_LENGTH = 16
IMAGE_SIZE = 32
LONG_TITLE = "Navy Blue Slim Fit Cotton Shirt " * 20_000  # 640 kB: far over the token budget


def _products(start, n):
    with open(FASHION_CATALOG, newline="") as f:
        rows = list(csv.DictReader(f))[start:start + n]
    return rows


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


@pytest.fixture(scope="module")
def sharded_catalog(tmp_path_factory):
    """part-0.csv (with a description column), part-1.jsonl, part-2.tfrecord.gz (embedded photos).

    Returns the catalog glob and, per kept product id, (model text, label).
    """
    root = tmp_path_factory.mktemp("sharded")
    expected = {}
    csv_rows = _products(0, 10)
    with open(root / "part-0.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "title", "image", "articleType", "description"])
        writer.writeheader()
        for i, row in enumerate(csv_rows):
            title = LONG_TITLE if i == 0 else row["title"]
            description = row["baseColour"] if i % 2 else ""
            writer.writerow({"id": row["id"], "title": title, "image": str(FASHION_DIR / row["image"]),
                             "articleType": row["articleType"], "description": description})
            expected[row["id"]] = (title + (f" | {description}" if description else ""), row["articleType"])
    with gzip.open(root / "part-1.jsonl.gz", "wt") as f:
        for row in _products(10, 6):
            f.write(json.dumps({"id": int(row["id"]), "title": row["title"], "image": str(FASHION_DIR / row["image"]),
                                "articleType": row["articleType"]}) + "\n")
            expected[row["id"]] = (row["title"], row["articleType"])
        f.write('{"id": "broken", "title": \n')
    with tf.io.TFRecordWriter(str(root / "part-2.tfrecord.gz"), options="GZIP") as writer:
        # The last one repeats the first CSV product's id: a duplicate across shards.
        for row in [*_products(16, 6), csv_rows[0]]:
            example = tf.train.Example(features=tf.train.Features(feature={
                "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row["id"])])),
                "title": _bytes_feature(row["title"].encode()),
                "image": _bytes_feature((FASHION_DIR / row["image"]).read_bytes()),
                "articleType": _bytes_feature(row["articleType"].encode()),
            }))
            writer.write(example.SerializeToString())
            expected.setdefault(row["id"], (row["title"], row["articleType"]))
    return str(root / "part-*"), expected


@pytest.fixture(scope="module")
def cli_run(sharded_catalog, tiny_bert_handle, tmp_path_factory):
    """The command run once, as a user would: no runner flag, so one Beam worker process per core."""
    catalog, _ = sharded_catalog
    out = tmp_path_factory.mktemp("cli") / "out"
    argv = ["--catalog", catalog, "--label-column", "articleType", "--output-dir", str(out),
            "--extra-text-columns", "description", "--bert-handle", str(tiny_bert_handle),
            "--image-size", str(IMAGE_SIZE), "--max-seq-length", str(MAX_SEQ_LENGTH), "--label-min-count", "2"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return argv, out, printed.getvalue()


def test_cli_accounts_for_every_row_of_a_mixed_format_catalog(cli_run, sharded_catalog, tiny_bert_handle):
    _, out, printed = cli_run
    _, expected = sharded_catalog
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["rows_in"] == 10 + 7 + 7
    assert metrics["quarantined"] == {row_checks.DUPLICATE_ID: 1, row_checks.MALFORMED_ROW: 1}
    assert sum(metrics["kept"].values()) == len(expected) == 22
    assert "rows in: 24" in printed and "quarantined: duplicate_id 1, malformed_row 1" in printed
    with open(out / "quarantine.jsonl") as f:
        quarantined = {q["reason"]: q for q in map(json.loads, f)}
    assert quarantined[row_checks.DUPLICATE_ID]["source"].endswith("part-2.tfrecord.gz")
    assert quarantined[row_checks.MALFORMED_ROW]["row_number"] == 7

    tft_output = tft.TFTransformOutput(str(out / "transform_graph"))
    vocabulary = [v.decode() for v in tft_output.vocabulary_by_name(features.LABEL_VOCABULARY_NAME)]
    spec = tft_output.transformed_feature_spec()
    tokenizer = BertTokenizer(encoder_vocab_file(str(tiny_bert_handle)), MAX_SEQ_LENGTH)
    train_counts, seen = {}, {}
    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        files = tf.io.gfile.glob(str(out / "examples" / split / "*"))
        for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.io.parse_single_example(serialized, spec)
            product_id = example[features.ID_KEY].numpy().decode()
            text, label = expected[product_id]
            seen[product_id] = (split, label, int(example[features.LABEL_ID_KEY]))
            if split == features.TRAIN_SPLIT:
                train_counts[label] = train_counts.get(label, 0) + 1
            # The extra text column is in the model's text; the 640 kB title is cut to the budget.
            want = tokenizer(tf.constant([text]))[features.INPUT_WORD_IDS_KEY][0]
            np.testing.assert_array_equal(example[features.INPUT_WORD_IDS_KEY], want)
            assert tf.io.decode_jpeg(example[features.IMAGE_KEY]).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert set(seen) == set(expected)
    # min count 2: a label seen once in train is out of the vocabulary, as are labels never trained on.
    assert sorted(vocabulary) == sorted(label for label, n in train_counts.items() if n >= 2)
    assert metrics["labels_below_min_count"] == {label: n for label, n in train_counts.items() if n < 2}
    for split, label, label_id in seen.values():
        assert label_id == (vocabulary.index(label) if label in vocabulary else len(vocabulary))
    assert metrics["out_of_vocabulary_rows"] == {
        s: sum(1 for split, label, _ in seen.values() if split == s and label not in vocabulary)
        for s in (features.TRAIN_SPLIT, features.EVAL_SPLIT)
    }


def _one_line_error(capsys, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_cli_errors_are_one_line_and_come_before_any_work(cli_run, tmp_path, capsys):
    argv, _, _ = cli_run
    assert "matches no file" in _one_line_error(capsys, [*argv[:1], str(tmp_path / "none-*.csv"), *argv[2:]])
    wrong_label = [*argv[:2], "--label-column", "category", *argv[4:]]
    assert "has no column 'category'" in _one_line_error(capsys, wrong_label)
    # A second run into the same directory must not mix its shards with the first one's.
    assert "already holds" in _one_line_error(capsys, argv)
    (tmp_path / "catalog.parquet").write_text("")
    assert "unknown format" in _one_line_error(capsys, [*argv[:1], str(tmp_path / "catalog.parquet"), *argv[2:]])
    (tmp_path / "a-file").write_text("")
    unwritable = [*argv[:5], str(tmp_path / "a-file" / "out"), *argv[6:]]
    assert "a-file/out/examples cannot be written" in _one_line_error(capsys, unwritable)


def test_a_failure_of_the_job_itself_is_one_line(tmp_path, capsys, caplog, tiny_bert_handle):
    """A catalog shard that cannot be read part-way through (here /proc/self/mem, which fails with EIO
    even for root) fails the job; the command says so in one line, Beam's logged traceback left out."""
    (tmp_path / "part-0.csv").write_text("id,title,image,articleType\n1,Shirt,a.jpg,Shirts\n")
    (tmp_path / "part-1.csv").symlink_to("/proc/self/mem")
    argv = ["--catalog", str(tmp_path / "part-*"), "--label-column", "articleType", "--output-dir",
            str(tmp_path / "out"), "--bert-handle", str(tiny_bert_handle), "--direct_running_mode=in_memory"]
    err = _one_line_error(capsys, argv)
    # In one process Beam re-raises the reader's CatalogError itself; from worker processes, a RuntimeError
    # naming it ("error: the preprocess job failed: RuntimeError: CatalogError: ...").
    assert "part-1.csv cannot be read: [Errno 5] Input/output error [while running 'UniqueRows/Rows']" in err
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
