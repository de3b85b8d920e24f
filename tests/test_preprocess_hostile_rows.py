"""The preprocess stage on a catalog of hostile rows: each bad input costs its own row, named in the
quarantine, and the job ends normally with every good row kept (rows in = kept + quarantined)."""
import csv
import gzip
import json
import os

import pytest

from common import features
from components.preprocess import row_checks
from components.preprocess.catalog import CatalogColumns
from tests.conftest import FASHION_CATALOG, FASHION_DIR
from tests.test_row_checks import bomb_png

RAISES = "raises.jpg"  # the photo on which the monkeypatched check raises


def _products(start, n):
    with open(FASHION_CATALOG, newline="") as f:
        rows = list(csv.DictReader(f))[start:start + n]
    for row in rows:
        row["image"] = str(FASHION_DIR / row["image"])
    return rows


def _hostile_catalog(root):
    """Three shards of real products and hostile rows; returns (glob, kept ids, {reason: [ids or None]})."""
    bad = root / "bad"
    bad.mkdir()
    (bad / "bomb.png").write_bytes(bomb_png(25_000, 25_000))
    (bad / "a-directory.jpg").mkdir()
    os.mkfifo(bad / "fifo.jpg")
    (bad / RAISES).write_bytes((FASHION_DIR / "images" / "15970.jpg").read_bytes())
    kept, quarantined = [], {}

    good = _products(0, 6)
    template = dict(good[0])
    hostile_csv = [
        ("h-bomb", str(bad / "bomb.png"), row_checks.IMAGE_TOO_LARGE),
        ("h-dir", str(bad / "a-directory.jpg"), row_checks.MISSING_IMAGE),
        ("h-fifo", str(bad / "fifo.jpg"), row_checks.MISSING_IMAGE),
        ("h-zero", "/dev/zero", row_checks.MISSING_IMAGE),
        ("h-raises", str(bad / RAISES), row_checks.INTERNAL_ERROR),
    ]
    rows = list(good)
    for product_id, image, reason in hostile_csv:
        rows.append({**template, "id": product_id, "image": image})
        quarantined.setdefault(reason, []).append(product_id)
    rows.append({**template, "id": "h-nul", "title": "Navy\0Blue Shirt"})  # NUL is a character: kept
    rows.append({**template, "id": "h-10mb", "title": "Navy Blue Shirt " * 655_360})  # a 10 MB cell: kept
    kept += [r["id"] for r in good] + ["h-nul", "h-10mb"]
    with open(root / "part-0.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(template))
        writer.writeheader()
        writer.writerows(rows)

    good = _products(6, 4)
    lines = [json.dumps(row) for row in good]
    lines.insert(1, "[" * 10_000)
    lines.insert(2, '{"id": ' + "9" * 5_000 + "}")
    quarantined[row_checks.MALFORMED_ROW] = [None, None]
    for product_id, fields in [("j-list", {"title": ["Navy", "Shirt"]}), (None, {"id": {"sku": 1}})]:
        lines.append(json.dumps({**template, "id": product_id, **fields}))
        quarantined.setdefault(row_checks.NOT_TEXT, []).append(product_id or "{'sku': 1}")
    (root / "part-1.jsonl").write_text("\n".join(lines) + "\n")
    kept += [r["id"] for r in good]

    good = _products(10, 200)
    data = gzip.compress("".join(json.dumps(row) + "\n" for row in good).encode())
    (root / "part-2.jsonl.gz").write_bytes(data[: len(data) // 2])  # a shard cut short in transfer
    quarantined[row_checks.MALFORMED_ROW].append(None)
    return str(root / "part-*"), kept, [r["id"] for r in good], quarantined


@pytest.mark.timeout(600)  # a FIFO opened as an image would hang the job
def test_hostile_rows_cost_one_row_each_and_the_job_keeps_every_other_row(tmp_path, monkeypatch, bert_vocab_file):
    from components.preprocess.job import preprocess
    from components.preprocess.transform import TransformOptions

    catalog, kept, truncated_shard, quarantined = _hostile_catalog(tmp_path)
    normalize_image = row_checks.normalize_image

    def raises_on_one_photo(data, uri, max_pixels):
        if uri.endswith(RAISES):
            raise ZeroDivisionError("a bug met on this row")
        return normalize_image(data, uri, max_pixels)

    # In this process: the in_memory runner runs the DoFns here, where the monkeypatch applies.
    monkeypatch.setattr(row_checks, "normalize_image", raises_on_one_photo)
    result = preprocess(
        catalog=catalog,
        columns=CatalogColumns(label="articleType"),
        options=TransformOptions(vocab_file=str(bert_vocab_file), max_seq_length=16, image_size=32),
        examples_dir=str(tmp_path / "out" / "examples"),
        transform_graph_dir=str(tmp_path / "out" / "transform_graph"),
        quarantine_file=str(tmp_path / "out" / "quarantine.jsonl"),
        metrics_file=str(tmp_path / "out" / "metrics.json"),
        beam_args=["--direct_running_mode=in_memory"],
    )
    metrics = result.metrics
    with open(result.quarantine_file) as f:
        lines = [json.loads(line) for line in f]
    by_reason = {}
    for line in lines:
        by_reason.setdefault(line["reason"], []).append(line)
    assert {reason: sorted(q["id"] or "" for q in qs) for reason, qs in by_reason.items()} == {
        reason: sorted(i or "" for i in ids) for reason, ids in quarantined.items()
    }
    assert metrics["quarantined"] == {reason: len(ids) for reason, ids in quarantined.items()}

    (internal,) = by_reason[row_checks.INTERNAL_ERROR]
    assert internal["message"].startswith("ZeroDivisionError: a bug met on this row")
    assert internal["source"].endswith("part-0.csv") and internal["row_number"] == 11
    (too_large,) = by_reason[row_checks.IMAGE_TOO_LARGE]
    assert "625000000 pixels" in too_large["message"]
    tail = next(q for q in by_reason[row_checks.MALFORMED_ROW] if q["source"].endswith("part-2.jsonl.gz"))
    assert "corrupt gzip" in tail["message"]

    # The truncated shard keeps the rows before the cut, in order; the rest is its one quarantined row.
    from_truncated = tail["row_number"] - 1
    assert 0 < from_truncated < len(truncated_shard)
    kept += truncated_shard[:from_truncated]
    assert sorted(_kept_ids(result.examples_dir)) == sorted(kept)
    assert sum(metrics["kept"].values()) == len(kept)
    assert metrics["rows_in"] == len(kept) + len(lines) == (6 + 5 + 2) + (4 + 2 + 2) + (from_truncated + 1)


def _kept_ids(examples_dir):
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(examples_dir, "*", "*.tfrecord.gz"))
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    return [
        tf.io.parse_single_example(record, spec)[features.ID_KEY].numpy().decode()
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP")
    ]
