"""Batch prediction (components/batch_predict) on real fashion products: the job's predictions are the
SavedModel's own answers, bad rows are quarantined with preprocess's reasons and never reach the model,
and the figures are the evaluate stage's ClassCounts."""
import collections
import csv
import functools
import json
import os

import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from common import features
from common.labels import OOV_LABEL
from common.metrics import ClassCounts, top_k_ids
from pipeline import kfp_components
from components.batch_predict import job
from components.batch_predict.model import ModelError, resolve
from components.batch_predict.summary import render_html
from components.preprocess import row_checks
from pipeline.__main__ import main
from tests.conftest import DISTINCT_CLASSES, FASHION_CATALOG, FASHION_DIR

UNKNOWN_CLASS = "Shirts"  # not one of DISTINCT_CLASSES: the model cannot predict it
PER_CLASS = 6
MAX_PIXELS = 60_000  # above the fashion photos' 224 x 224, below the 300 x 300 test image
# One process, one thread: a few dozen products do not pay for more (and the shared cores stay free).
IN_MEMORY = ["--direct_running_mode=in_memory"]


def _fashion_rows() -> list[dict]:
    with open(FASHION_CATALOG, newline="") as f:
        rows = list(csv.DictReader(f))
    # Past the first 20 of each class, which distinct_preprocessed trains on.
    picked = [r for label in DISTINCT_CLASSES for r in [r for r in rows if r["articleType"] == label][20:20 + PER_CLASS]]
    picked += [r for r in rows if r["articleType"] == UNKNOWN_CLASS][:2]
    for row in picked:
        row["image"] = str(FASHION_DIR / row["image"])
    return picked


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A CSV of good products and one bad row per reason. Returns (path, good rows, {reason: ids or rows})."""
    root = tmp_path_factory.mktemp("batch_catalog")
    good = _fashion_rows()
    template = dict(good[0])
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(open(good[1]["image"], "rb").read()[:2000])
    large = root / "large.png"
    PIL.Image.new("RGB", (300, 300), (200, 10, 10)).save(large)
    bad = [
        {**template, "id": "b-missing-image", "image": str(root / "absent.jpg")},
        {**template, "id": "b-corrupt", "image": str(corrupt)},
        {**template, "id": "b-truncated", "image": str(truncated)},
        {**template, "id": "b-large", "image": str(large)},
        {**template, "id": "b-no-title", "title": "   "},
        {**template, "id": "b-no-label", "articleType": ""},
        {**template, "id": ""},
        dict(good[2]),  # a duplicate id: the first row is kept
    ]
    path = root / "catalog.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(template))
        writer.writeheader()
        writer.writerows(good + bad)
    with open(path, "a") as f:
        f.write("b-cells,A Title,x.jpg,Watches,a,b,c,d,one too many\n")  # a row with more cells than the header
    expected = {
        row_checks.MISSING_IMAGE: ["b-missing-image"],
        row_checks.UNREADABLE_IMAGE: ["b-corrupt", "b-truncated"],
        row_checks.IMAGE_TOO_LARGE: ["b-large"],
        row_checks.MISSING_TITLE: ["b-no-title"],
        row_checks.MISSING_LABEL: ["b-no-label"],
        row_checks.MISSING_ID: [None],
        row_checks.DUPLICATE_ID: [good[2]["id"]],
        row_checks.MALFORMED_ROW: ["b-cells"],
    }
    return path, good, expected


@pytest.fixture(scope="module")
def text_model(text_models) -> str:
    """A trained text_only model of DISTINCT_CLASSES, exported with the serving signatures (its k is 4:
    3 classes + OOV)."""
    return text_models["trained"]


@functools.lru_cache(maxsize=None)
def _load(model_dir: str):
    return tf.saved_model.load(model_dir)


def direct_answers(model_dir: str, rows: list[dict]) -> dict:
    """The SavedModel's serving_default called directly on the products' titles and photo files."""
    signature = _load(model_dir).signatures[features.SERVING_SIGNATURE]
    images = [open(r["image"], "rb").read() for r in rows]
    answer = signature(title=tf.constant([r["title"] for r in rows]), image_bytes=tf.constant(images))
    answer = {k: v.numpy() for k, v in answer.items()}
    return {row["id"]: {k: v[i] for k, v in answer.items()} for i, row in enumerate(rows)}


def read_jsonl(directory) -> list[dict]:
    records = []
    for name in sorted(os.listdir(directory)):
        assert name.startswith("part-") and name.endswith(".jsonl"), name
        with open(os.path.join(directory, name)) as f:
            records += [json.loads(line) for line in f]
    return records


@pytest.fixture(scope="module")
def labelled_run(catalog, text_model, tmp_path_factory):
    path, _, _ = catalog
    out = tmp_path_factory.mktemp("labelled_run")
    result = job.predict_catalog_to_dir(
        output_dir=str(out),
        catalog=str(path),
        model_dir=text_model,
        label_column="articleType",
        max_image_pixels=MAX_PIXELS,
        batch_size=8,
        beam_args=IN_MEMORY,
    )
    return result, out


def test_predictions_are_the_saved_models_answers_for_every_good_product(labelled_run, catalog, text_model):
    result, out = labelled_run
    _, good, _ = catalog
    records = read_jsonl(out / "predictions")
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records) == len(good)
    direct = direct_answers(text_model, good)
    # classes and scores, and whichever of needs_review and the stream weights the export has.
    outputs = resolve(text_model).outputs
    assert outputs[:2] == ("classes", "scores")
    for row in good:
        record, expected = by_id[row["id"]], direct[row["id"]]
        # The model returns its top 4 (3 classes and OOV): --top-k 5 gives those.
        assert record["classes"] == [c.decode() for c in expected["classes"]]
        np.testing.assert_allclose(record["scores"], expected["scores"], atol=1e-6)
        for name in outputs[2:]:
            assert record[name] == pytest.approx(expected[name].item(), abs=1e-6), name
        assert record["label"] == row["articleType"]
        assert record["model"] == text_model and record["model_version"] is None
        assert set(record) == {"id", "label", "model_version", "model", *outputs}
    assert result.metrics["top_k"] == 4


def test_bad_rows_are_quarantined_with_preprocess_reasons_and_none_is_lost(labelled_run, catalog):
    result, out = labelled_run
    _, good, expected = catalog
    metrics = result.metrics
    assert metrics["quarantined"] == {reason: len(ids) for reason, ids in expected.items()}
    assert metrics["rows_in"] == len(good) + sum(len(ids) for ids in expected.values())
    assert metrics["predicted"] == len(good) == metrics["rows_in"] - sum(metrics["quarantined"].values())
    with open(out / "quarantine.jsonl") as f:
        quarantined = [json.loads(line) for line in f]
    got = {}
    for q in quarantined:
        got.setdefault(q["reason"], []).append(q["id"])
        assert q["source"] == str(catalog[0]) and q["row_number"] >= 1 and q["message"]
    assert {k: sorted(v, key=str) for k, v in got.items()} == {k: sorted(v, key=str) for k, v in expected.items()}
    duplicate = next(q for q in quarantined if q["reason"] == row_checks.DUPLICATE_ID)
    assert duplicate["row_number"] > len(good) and "row 3" in duplicate["message"]  # the first one is kept
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_figures_are_class_counts_of_the_predictions_with_unknown_labels_wrong(labelled_run, catalog, text_model):
    result, _ = labelled_run
    _, good, _ = catalog
    evaluation = result.metrics["evaluation"]
    direct = direct_answers(text_model, good)
    vocabulary = resolve(text_model).label_vocabulary
    assert set(vocabulary[:-1]) == set(DISTINCT_CLASSES) and vocabulary[-1] == OOV_LABEL
    # The evaluate stage's way: ClassCounts over [batch, k] class ids, labels the model does not know
    # given ids no prediction has.
    names = [*vocabulary, UNKNOWN_CLASS]
    ids = {n: i for i, n in enumerate(names)}
    counts = ClassCounts(len(names))
    counts.add(
        np.array([ids[r["articleType"]] for r in good]),
        np.array([[ids[c.decode()] for c in direct[r["id"]]["classes"]] for r in good]),
    )
    assert evaluation["label_ids_from"] == job.FROM_MODEL_VOCABULARY
    assert {k: evaluation[k] for k in counts.metrics()} == pytest.approx(counts.metrics())
    assert evaluation["examples"] == len(good)  # the two Shirts are counted, as wrong
    assert evaluation["labels_unknown_to_model"] == {UNKNOWN_CLASS: 2}
    assert evaluation["per_class"] == counts.per_class(names)
    top1 = collections.Counter(direct[r["id"]]["classes"][0].decode() for r in good)
    assert result.metrics["predicted_classes"] == dict(top1)


def test_the_reduced_counts_give_exactly_what_class_counts_gives_on_every_product():
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(9)]
    labels = rng.integers(0, 9, 500)
    probabilities = rng.random((500, 7))  # the model knows classes c0..c6; c7 and c8 are unknown to it
    top = top_k_ids(probabilities)
    direct = ClassCounts(9)
    direct.add(labels, top)
    reduced = {}
    for label, row in zip(labels, top):
        key = (names[label], names[row[0]], bool(label in row[:5]))
        reduced[key] = reduced.get(key, 0) + 1
    evaluation = job.evaluate_counts(collections.Counter(reduced), names[:7], "label")
    assert {k: evaluation[k] for k in direct.metrics()} == pytest.approx(direct.metrics())
    assert evaluation["per_class"] == direct.per_class(names)
    assert evaluation["confused_pairs"] == direct.confused_pairs(names)
    assert evaluation["labels_unknown_to_model"] == {n: int((labels == i).sum()) for i, n in enumerate(names) if i >= 7}
    # Without a vocabulary the ids come from the names seen: the same figures.
    seen = job.evaluate_counts(collections.Counter(reduced), None, "label")
    assert seen["label_ids_from"] == job.FROM_LABELS_SEEN
    assert {k: seen[k] for k in direct.metrics()} == pytest.approx(direct.metrics())


def test_command_writes_parquet_from_the_newest_served_version_without_labels(catalog, text_model, tmp_path, capsys):
    path, good, expected = catalog
    base = tmp_path / "serving" / features.MODEL_NAME
    base.mkdir(parents=True)
    (base / "2").symlink_to(text_model)
    (base / "3").symlink_to(text_model)
    (base / "4").mkdir()  # a version still being copied: no saved_model.pb, so not the newest complete one
    out = tmp_path / "out"
    code = main([
        "predict-catalog", "--model", str(base), "--catalog", str(path), "--output", str(out), "--top-k", "2",
        "--format", "parquet", "--max-image-pixels", str(MAX_PIXELS), *IN_MEMORY,
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "(version 3)" in printed
    table = pq.read_table(out / "predictions")
    assert table.schema.names == ["id", *resolve(text_model).outputs, "model_version", "model"]
    records = {r["id"]: r for r in table.to_pylist()}
    # Without a label column, a row without a label is a product like any other.
    assert set(records) == {r["id"] for r in good} | {"b-no-label"}
    direct = direct_answers(text_model, good)
    for row in good:
        record = records[row["id"]]
        assert record["classes"] == [c.decode() for c in direct[row["id"]]["classes"][:2]]
        np.testing.assert_allclose(record["scores"], direct[row["id"]]["scores"][:2], rtol=1e-6, atol=1e-6)
        assert record["model_version"] == 3 and record["model"] == str(base / "3")
    metrics = json.loads((out / "metrics.json").read_text())
    assert "evaluation" not in metrics and row_checks.MISSING_LABEL not in metrics["quarantined"]
    assert metrics["rows_in"] == metrics["predicted"] + sum(metrics["quarantined"].values())


def test_large_model_shares_one_model_between_two_worker_processes_and_answers_the_same(
        catalog, text_model, tmp_path, capsys):
    """--large-model: the model lives in one process and the others call it through a proxy, so every
    answer crosses a process boundary as plain values; they are still the SavedModel's own."""
    path, good, expected = catalog
    out = tmp_path / "out"
    code = main([
        "predict-catalog", "--model", text_model, "--catalog", str(path), "--output", str(out),
        "--label-column", "articleType", "--max-image-pixels", str(MAX_PIXELS), "--batch-size", "4",
        "--large-model", "--direct_running_mode=multi_processing", "--direct_num_workers=2",
    ])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    records = {r["id"]: r for r in read_jsonl(out / "predictions")}
    assert set(records) == {r["id"] for r in good}
    direct = direct_answers(text_model, good)
    for row in good:
        assert records[row["id"]]["classes"] == [c.decode() for c in direct[row["id"]]["classes"]]
        np.testing.assert_allclose(records[row["id"]]["scores"], direct[row["id"]]["scores"], atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["predicted"] == len(good)
    assert metrics["quarantined"] == {reason: len(ids) for reason, ids in expected.items()}


def _attention_model(export_dir, fail: bool = False) -> str:
    """A SavedModel with the coming serving outputs (needs_review, logits, the stream weights): class by
    a hash of the title, image weight from the photo's pixels. It decodes every photo, so one that is
    not an image would fail the batch it is in."""
    names = tf.constant(list(DISTINCT_CLASSES))

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=features.TITLE_KEY),
                                      tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_KEY)])
        def serve(self, title, image_bytes):
            def brightness(data):
                pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.reduce_mean(tf.cast(pixels, tf.float32)) / 255.0

            image_weight = tf.map_fn(brightness, image_bytes, fn_output_signature=tf.float32)
            if fail:
                tf.debugging.assert_less(image_weight, -1.0, message="a model that fails on every batch")
            logits = 3.0 * tf.one_hot(tf.strings.to_hash_bucket_fast(title, 3), 3) + image_weight[:, None]
            scores, indices = tf.math.top_k(tf.nn.softmax(logits), k=3)
            return {
                features.OUTPUT_CLASSES_KEY: tf.gather(names, indices),
                features.OUTPUT_SCORES_KEY: scores,
                features.OUTPUT_LOGITS_KEY: tf.gather(logits, indices, batch_dims=1),
                features.OUTPUT_NEEDS_REVIEW_KEY: scores[:, 0] < 0.8,
                features.OUTPUT_TEXT_WEIGHT_KEY: 1.0 - image_weight,
                features.OUTPUT_IMAGE_WEIGHT_KEY: image_weight,
            }

    model = Model()
    tf.saved_model.save(model, str(export_dir), signatures={features.SERVING_SIGNATURE: model.serve})
    return str(export_dir)


def test_the_kfp_shell_writes_every_per_product_output_and_the_ui_artifacts(catalog, tmp_path):
    from kfp.dsl import HTML, Artifact, Dataset, Metrics

    path, good, expected = catalog
    model_dir = _attention_model(tmp_path / "attention")
    assert resolve(model_dir).label_vocabulary is None
    artifacts = {
        "predictions": Dataset(name="predictions", uri=str(tmp_path / "a" / "predictions")),
        "quarantine": Dataset(name="quarantine", uri=str(tmp_path / "a" / "quarantine")),
        "report": Artifact(name="report", uri=str(tmp_path / "a" / "report")),
        "metrics": Metrics(name="metrics", uri=str(tmp_path / "a" / "metrics")),
        "summary": HTML(name="summary", uri=str(tmp_path / "a" / "summary")),
    }
    kfp_components.batch_predict(
        model_dir=model_dir, catalog=str(path), label_column="articleType", top_k=5, output_format="jsonl",
        batch_size=4, id_column="id", title_column="title", image_column="image", extra_text_columns="",
        text_separator=" | ", max_image_pixels=MAX_PIXELS, beam_args=IN_MEMORY, **artifacts,
    )
    records = {r["id"]: r for r in read_jsonl(tmp_path / "a" / "predictions")}
    direct = direct_answers(model_dir, good)
    assert set(records) == {r["id"] for r in good}
    for row in good:
        record, answer = records[row["id"]], direct[row["id"]]
        assert set(record) == {"id", "label", "classes", "scores", "needs_review", "text_weight", "image_weight",
                               "model_version", "model"}  # not logits
        assert record["classes"] == [c.decode() for c in answer["classes"]]
        assert record["needs_review"] == bool(answer["needs_review"])
        assert record["image_weight"] == pytest.approx(float(answer["image_weight"]), abs=1e-6)
        assert record["text_weight"] == pytest.approx(float(answer["text_weight"]), abs=1e-6)
    metrics = json.loads(open(artifacts["report"].path).read())
    assert metrics["needs_review"] == sum(bool(direct[r["id"]]["needs_review"]) for r in good)
    assert metrics["evaluation"]["label_ids_from"] == job.FROM_LABELS_SEEN
    logged = artifacts["metrics"].metadata
    assert logged["rows_in"] == metrics["rows_in"] and logged["predicted"] == len(good)
    assert logged["quarantined_unreadable_image"] == 2 and logged["top1_accuracy"] == metrics["evaluation"]["top1_accuracy"]
    assert artifacts["predictions"].metadata["products"] == len(good)
    assert artifacts["quarantine"].metadata["rows"] == sum(len(ids) for ids in expected.values())
    page = open(artifacts["summary"].path).read()
    assert page == render_html(metrics)
    for text in ("unreadable_image", "image_too_large", "Watches", "needs review", "macro-F1"):
        assert text in page


def test_parquet_columns_follow_the_signature(tmp_path):
    model = resolve(_attention_model(tmp_path / "attention"))
    schema = job.parquet_schema(model, labelled=True)
    assert schema.names == ["id", "label", "classes", "scores", "needs_review", "text_weight", "image_weight",
                            "model_version", "model"]
    assert str(schema.field("needs_review").type) == "bool" and str(schema.field("scores").type) == "list<item: float>"


def test_errors_are_one_line_and_come_before_any_work(catalog, text_model, tmp_path, capsys):
    path, _, _ = catalog
    used = tmp_path / "used"
    (used / "predictions").mkdir(parents=True)
    (used / "predictions" / "part-00000-of-00001.jsonl").write_text("{}\n")
    cases = [
        (["--model", str(tmp_path / "nothing"), "--catalog", str(path)], "does not exist"),
        (["--model", str(tmp_path), "--catalog", str(path)], "no saved_model.pb and no complete version"),
        (["--model", text_model, "--catalog", str(tmp_path / "absent-*.csv")], "matches no file"),
        (["--model", text_model, "--catalog", str(path), "--label-column", "category"], "has no column 'category'"),
        (["--model", text_model, "--catalog", str(path), "--output", str(used)], "already holds predictions"),
    ]
    for args, message in cases:
        if "--output" not in args:
            args = [*args, "--output", str(tmp_path / "out")]
        assert main(["predict-catalog", *args]) == 1, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()
    # The job itself failing (here: a model whose signature breaks on every batch) is one line as well.
    broken = _attention_model(tmp_path / "broken", fail=True)
    assert main(["predict-catalog", "--model", broken, "--catalog", str(path), "--output", str(tmp_path / "o2"),
                 "--max-image-pixels", str(MAX_PIXELS), *IN_MEMORY]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the batch prediction job failed: ") and "--traceback shows where" in err, err
    with pytest.raises(ModelError):
        resolve(str(tmp_path / "nothing"))


def test_only_a_beam_command_takes_options_it_does_not_know(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "--output", "x.yaml", "--direct_running_mode=in_memory"])
    assert "unrecognized arguments: --direct_running_mode=in_memory" in capsys.readouterr().err

