"""The evaluate stage on real models: a first model is blessed on the threshold alone, a deliberately
worse one is refused against the model served; a served model of another image size is fed the
original photos, as the candidate is; and the KFP component writes what the pipeline UI shows
(metrics, confusion matrix, Table 1 from real unimodal models, the HTML report, the verdict)."""
import csv
import html.parser
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
from kfp import dsl

from common import features
from components.evaluate import evaluate_model, gate
from components.push import newest_served_model, push
from pipeline import kfp_components
from tests import conftest
from tests.conftest import DISTINCT_CLASSES, FASHION_CATALOG

TOLERANCE = 0.05
OTHER_IMAGE_SIZE = 64  # the served image model's; the candidates' is conftest's 32


def test_a_deliberately_worse_model_is_refused_against_the_served_one(distinct_preprocessed, text_models, tmp_path):
    records = (distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir)
    base = str(tmp_path / "serving")

    first = evaluate_model(text_models["trained"], *records, served_model=newest_served_model(base))
    verdict = gate(first.metrics, 0.5, first.served, TOLERANCE)
    assert first.served is None
    assert verdict.blessed and "nothing is served yet" in verdict.reason, verdict.reason
    push(text_models["trained"], base)

    served = newest_served_model(base)
    assert served == (1, os.path.join(base, features.MODEL_NAME, "1"))
    worse = evaluate_model(text_models["untrained"], *records, served_model=served)
    # Through its raw-input signature the served model scores on the same products what its own
    # evaluation measured; so does the candidate; and the untrained candidate is far behind.
    assert worse.served["examples"] == first.metrics["examples"] == worse.metrics["examples"]
    assert worse.served["served_top1_accuracy"] == pytest.approx(first.metrics["top1_accuracy"])
    assert worse.served["candidate_top1_accuracy"] == pytest.approx(worse.metrics["top1_accuracy"])
    assert worse.served["served_mean_top1_score"] == pytest.approx(first.calibration["mean_confidence"], rel=1e-4)
    assert worse.served["candidate_top1_accuracy"] < worse.served["served_top1_accuracy"] - TOLERANCE
    verdict = gate(worse.metrics, 0.0, worse.served, TOLERANCE)  # threshold 0: only the comparison can refuse
    assert not verdict.blessed
    assert "served version 1" in verdict.reason and "more than the tolerance 0.0500" in verdict.reason


def export_image_model(preprocessed, image_size: int, export_dir, bert_handle) -> str:
    """An image_only model on ImageNet EfficientNet-Lite0 features with an untrained head (seeded: the
    same head at every size), exported at `image_size`. Its scores move with every photo, which a
    randomly initialised encoder's hardly do, so a test comparing how models see photos can fail."""
    import tensorflow_transform as tft

    from common.labels import num_classes
    from trainer import export
    from trainer.fusion import HeadConfig
    from trainer.model import ModelConfig, build_model

    weights = conftest.PRETRAINED_DIR / "efficientnet_lite0_imagenet.h5"
    if not weights.exists():
        pytest.fail(f"{weights} not found: run scripts/setup_encoders.sh first (see README)")
    tft_output = tft.TFTransformOutput(preprocessed.transform_graph_dir)
    config = ModelConfig(fusion="image_only", bert_handle=str(bert_handle), image_weights=str(weights),
                         image_variant="lite0", image_size=image_size, max_seq_length=conftest.SMALL_MODEL_SEQ_LENGTH,
                         head=HeadConfig(width=32))
    tf.keras.utils.set_random_seed(0)
    model = build_model(config, num_classes(tft_output))
    export.export_serving_model(model, tft_output, str(export_dir), image_size=image_size,
                                max_seq_length=conftest.SMALL_MODEL_SEQ_LENGTH)
    return str(export_dir)


@pytest.fixture(scope="module")
def image_model(distinct_preprocessed, tiny_bert_handle, tmp_path_factory):
    return export_image_model(distinct_preprocessed, conftest.SMALL_MODEL_IMAGE_SIZE,
                              tmp_path_factory.mktemp("image") / "model", tiny_bert_handle)


@pytest.fixture(scope="module")
def other_size_image_model(distinct_preprocessed, tiny_bert_handle, tmp_path_factory):
    """The same image model at OTHER_IMAGE_SIZE, with the same products' records at that size (its own
    preprocess run)."""
    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import preprocess
    from components.preprocess.transform import TransformOptions

    root = tmp_path_factory.mktemp("other_size")
    source = pathlib.Path(distinct_preprocessed.examples_dir).parent
    options = TransformOptions(vocab_file=str(tiny_bert_handle / "assets" / "vocab.txt"),
                               max_seq_length=conftest.SMALL_MODEL_SEQ_LENGTH, image_size=OTHER_IMAGE_SIZE)
    preprocessed = preprocess(
        catalog=str(source / "catalog.csv"), columns=CatalogColumns(label="articleType"), options=options,
        examples_dir=str(root / "examples"), transform_graph_dir=str(root / "transform_graph"),
        quarantine_file=str(root / "quarantine.jsonl"), metrics_file=str(root / "metrics.json"),
        eval_fraction=0.25, beam_args=["--direct_running_mode=in_memory"],
    )
    return preprocessed, export_image_model(preprocessed, OTHER_IMAGE_SIZE, root / "model", tiny_bert_handle)


def test_a_served_model_of_another_image_size_sees_the_original_photos(
    distinct_preprocessed, image_model, other_size_image_model, tmp_path
):
    other_records, other_model = other_size_image_model
    base = str(tmp_path / "serving")
    push(other_model, base)
    compared = evaluate_model(image_model, distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir,
                              served_model=newest_served_model(base))
    # The served model scores on the raw eval products what it scores on its own records, made from
    # the same original photos at its own size: the same products right, the same confidence.
    own = evaluate_model(other_model, other_records.examples_dir, other_records.transform_graph_dir)
    assert compared.served["examples"] == own.metrics["examples"] == compared.metrics["examples"]
    assert compared.served["served_top1_accuracy"] == pytest.approx(own.metrics["top1_accuracy"])
    assert compared.served["served_mean_top1_score"] == pytest.approx(own.calibration["mean_confidence"], rel=1e-4)
    assert compared.served["candidate_top1_accuracy"] == pytest.approx(compared.metrics["top1_accuracy"])
    assert compared.served["candidate_mean_top1_score"] == pytest.approx(compared.calibration["mean_confidence"], rel=1e-4)
    # Not a check that always passes: fed the candidate's stored 32 px JPEGs, the served model's
    # confidence moves far beyond that tolerance.
    stored = {features.TITLE_KEY: tf.io.FixedLenFeature([], tf.string), features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    files = tf.io.gfile.glob(os.path.join(distinct_preprocessed.examples_dir, features.EVAL_SPLIT, "*"))
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1000).map(
        lambda s: tf.io.parse_example(s, stored))))
    upscaled = tf.saved_model.load(other_model).signatures[features.SERVING_SIGNATURE](
        title=batch[features.TITLE_KEY], image_bytes=batch[features.IMAGE_KEY])
    mean_upscaled = float(np.mean(upscaled[features.OUTPUT_SCORES_KEY].numpy()[:, 0]))
    assert abs(mean_upscaled - compared.served["served_mean_top1_score"]) > 1e-3 * compared.served["served_mean_top1_score"]


def test_a_served_model_without_raw_eval_examples_fails_in_one_line_naming_the_directory(
    distinct_preprocessed, text_models, tmp_path
):
    examples = tmp_path / "examples"
    shutil.copytree(distinct_preprocessed.examples_dir, examples, ignore=shutil.ignore_patterns(features.RAW_EXAMPLES_DIR))
    base = str(tmp_path / "serving")
    push(text_models["trained"], base)
    expected = os.path.join(str(examples), features.RAW_EXAMPLES_DIR, features.EVAL_SPLIT)
    with pytest.raises(ValueError, match="raw examples") as error:
        evaluate_model(text_models["trained"], str(examples), distinct_preprocessed.transform_graph_dir,
                       served_model=newest_served_model(base))
    assert expected in str(error.value) and "\n" not in str(error.value)


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = 0, []

    def handle_starttag(self, tag, attrs):
        self.images += tag == "img" and dict(attrs)["src"].startswith("data:image/jpeg;base64,")

    def handle_data(self, data):
        self.text.append(data.strip())


def test_the_kfp_component_writes_metrics_confusion_matrix_table1_report_and_verdict(
    distinct_preprocessed, text_models, image_model, poe_features, tmp_path
):
    base = str(tmp_path / "serving")
    push(text_models["untrained"], base)  # what is served: the candidate must beat it
    out = tmp_path / "outputs"
    out.mkdir()
    metrics = dsl.Metrics(uri=str(out / "metrics"))
    confusion = dsl.ClassificationMetrics(uri=str(out / "confusion"))
    report = dsl.HTML(uri=str(out / "report"))
    blessing = dsl.Artifact(uri=str(out / "blessing"))
    blessed = kfp_components.evaluate(
        model=dsl.Model(uri=text_models["trained"]),
        text_model=dsl.Model(uri=text_models["trained"]),
        image_model=dsl.Model(uri=image_model),
        examples=dsl.Dataset(uri=distinct_preprocessed.examples_dir),
        transform_graph=dsl.Artifact(uri=distinct_preprocessed.transform_graph_dir),
        poe_features=dsl.Dataset(uri=poe_features),
        accuracy_threshold=0.5,
        accuracy_tolerance=TOLERANCE,
        baseline_max_train_products=100_000,
        baseline_tolerance=1.0,
        serving_base=base,
        model_name=features.MODEL_NAME,
        metrics=metrics,
        confusion_matrix=confusion,
        report=report,
        blessing=blessing,
    )
    assert blessed is True and blessing.metadata["blessed"] is True and blessing.metadata["served_version"] == 1
    figures = metrics.metadata
    assert figures["served_version"] == 1 and figures["served_top1_accuracy"] < figures["top1_accuracy"]

    # Table 1: the candidate here is the text model itself, so it is right exactly where the text model is.
    image_alone = evaluate_model(image_model, distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir)
    with open(blessing.path) as f:
        summary = json.load(f)
    table1 = summary["table1"]
    assert table1["text_only_top1_accuracy"] == pytest.approx(figures["top1_accuracy"])
    assert table1["image_only_top1_accuracy"] == pytest.approx(image_alone.metrics["top1_accuracy"])
    assert sum(table1[c]["percent"] for c in ("text_right_image_wrong", "text_wrong_image_right", "both_right", "both_wrong")) == pytest.approx(100)
    for cell, fused_right in (("text_right_image_wrong", 100), ("both_right", 100), ("text_wrong_image_right", 0), ("both_wrong", 0)):
        if table1[cell]["products"]:
            assert table1[cell]["fused_right_percent"] == fused_right
    assert figures["table1_both_right_percent"] == table1["both_right"]["percent"]

    matrix = confusion.metadata["confusionMatrix"]
    categories = [a["displayName"] for a in matrix["annotationSpecs"]]
    assert set(categories) <= set(DISTINCT_CLASSES) | {"[OOV]"}
    assert sum(map(sum, (row["row"] for row in matrix["rows"]))) == figures["examples"]
    assert {r["label"] for r in summary["per_class"]} <= set(categories)

    # The report shows real eval products: their photo and their title as the catalog has it.
    with open(FASHION_CATALOG, newline="") as f:
        titles = {row["id"]: row["title"] for row in csv.DictReader(f)}
    page = _Page()
    with open(report.path) as f:
        page.feed(f.read())
    shown = summary["samples"]["right"] + summary["samples"]["wrong"]
    assert shown and page.images == len(shown)
    for product in shown:
        assert product["title"] == titles[product["id"]] and product["title"] in page.text
    assert "Table 1: top-1 errors of the unimodal models" in page.text
    # The baseline beside the candidate, in the metrics the UI compares across runs and in the report.
    assert figures["baseline_top1_accuracy"] == summary["baseline"]["top1_accuracy"]
    assert "Against the baseline a user already has" in page.text and "tfidf_svm" in " ".join(page.text)
    assert "tfidf_svm baseline's top-1" in blessing.metadata["reason"]
    assert figures["tfidf_image_poe_top1_accuracy"] == summary["poe_baseline"]["top1_accuracy"]
    assert "Against the title and photo model a user builds" in page.text


def _split_titles(examples_dir: str, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(titles, label ids, ids) of a transformed split, read directly."""
    spec = {features.TITLE_KEY: tf.io.FixedLenFeature([], tf.string), features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64)}
    titles, labels, ids = [], [], []
    for record in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(examples_dir, split, "*")), compression_type="GZIP"):
        parsed = tf.io.parse_single_example(record, spec)
        titles.append(parsed[features.TITLE_KEY].numpy().decode("utf-8"))
        labels.append(int(parsed[features.LABEL_ID_KEY]))
        ids.append(parsed[features.ID_KEY].numpy())
    return titles, np.array(labels), np.array(ids)


def test_the_baseline_is_tfidf_svm_on_the_train_titles_scored_beside_the_candidate_on_the_same_products(
    distinct_preprocessed, text_models
):
    from common.baselines import TfidfSvm

    records = (distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir)
    evaluation = evaluate_model(text_models["untrained"], *records)
    train_titles, train_labels, _ = _split_titles(distinct_preprocessed.examples_dir, features.TRAIN_SPLIT)
    eval_titles, eval_labels, _ = _split_titles(distinct_preprocessed.examples_dir, features.EVAL_SPLIT)
    classes = int(max(train_labels.max(), eval_labels.max())) + 1
    direct = TfidfSvm(train_titles, train_labels, classes).scores(eval_titles).argmax(axis=-1)
    baseline = evaluation.baseline
    assert baseline["model"] == "tfidf_svm" and baseline["train_products"] == len(train_titles)
    assert baseline["examples"] == len(eval_titles) == evaluation.metrics["examples"]
    assert baseline["top1_accuracy"] == pytest.approx(np.mean(direct == eval_labels))
    assert baseline["top1_accuracy"] > 0.8  # the three classes' titles name them: the baseline is strong here
    # Paired on the same products: the cells add up to each model's own top-1.
    paired = baseline["paired"]
    examples = paired["examples"]
    assert examples == baseline["examples"]
    assert (paired["both_right"] + paired["baseline_only_right"]) / examples == pytest.approx(baseline["top1_accuracy"])
    assert (paired["both_right"] + paired["candidate_only_right"]) / examples == pytest.approx(
        evaluation.metrics["top1_accuracy"])
    # An untrained candidate far below the baseline: refused at the default tolerance 0, blessed (and told) at
    # run-local's 1.0.
    assert evaluation.metrics["top1_accuracy"] < baseline["top1_accuracy"] - 0.2
    refused = gate(evaluation.metrics, 0.0, None, baseline=baseline)
    assert not refused.blessed and "tfidf_svm baseline's top-1" in refused.reason and "worse by" in refused.reason
    assert gate(evaluation.metrics, 0.0, None, baseline=baseline, baseline_tolerance=1.0).blessed


def test_the_baseline_trains_on_a_hash_sample_when_the_train_split_is_larger_than_its_cap(
    distinct_preprocessed, text_models
):
    records = (distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir)
    _, _, ids = _split_titles(distinct_preprocessed.examples_dir, features.TRAIN_SPLIT)
    sampled = evaluate_model(text_models["trained"], *records, baseline_max_train_products=len(ids) // 2)
    again = evaluate_model(text_models["trained"], *records, baseline_max_train_products=len(ids) // 2)
    assert 0 < sampled.baseline["train_products"] < len(ids)
    assert again.baseline == {**sampled.baseline, "fit_seconds": again.baseline["fit_seconds"]}  # the same sample
    none = evaluate_model(text_models["trained"], *records, baseline_max_train_products=0)
    assert none.baseline is None and not any(k.startswith("baseline_") for k in none.scalars())


def test_a_baseline_that_cannot_be_fitted_is_said_and_the_candidate_still_judged(
    distinct_preprocessed, text_models, monkeypatch
):
    from components import evaluate
    from components.evaluation_report import render_html

    def unfittable(*args, **kwargs):  # a train split whose titles were all sampled away
        from common.baselines import TfidfSvm

        return TfidfSvm([], np.zeros([0], np.int64), 3)

    monkeypatch.setattr(evaluate, "fit_baseline", unfittable)
    evaluation = evaluate_model(text_models["trained"], distinct_preprocessed.examples_dir,
                                distinct_preprocessed.transform_graph_dir)
    assert evaluation.metrics["examples"] > 0 and "no training titles" in evaluation.baseline["error"]
    assert not any(k.startswith("baseline_") for k in evaluation.scalars())
    verdict = gate(evaluation.metrics, 0.0, None, baseline=evaluation.baseline, baseline_tolerance=0.0)
    assert verdict.blessed and "baseline could not be fitted" in verdict.reason
    assert "baseline could not be fitted" in render_html(evaluation, verdict, "model")


@pytest.fixture(scope="module")
def feature_cache(distinct_preprocessed, tiny_bert_handle, tmp_path_factory) -> str:
    """The trainer's frozen-feature cache of distinct_preprocessed (a fifth of train carved out for
    validation), as a tune frozen or top run leaves it in its work directory."""
    from trainer import features_cache
    from trainer.fusion import HeadConfig
    from trainer.model import ModelConfig

    cache_dir = str(tmp_path_factory.mktemp("state") / "feature_cache")
    config = ModelConfig(fusion="image_only", bert_handle=str(tiny_bert_handle), image_weights=None,
                         image_size=conftest.SMALL_MODEL_IMAGE_SIZE, max_seq_length=conftest.SMALL_MODEL_SEQ_LENGTH,
                         head=HeadConfig(width=16))
    features_cache.cache_features(examples_dir=distinct_preprocessed.examples_dir,
                                  transform_graph_dir=distinct_preprocessed.transform_graph_dir, cache_dir=cache_dir,
                                  model_config=config, validation_fraction=0.2)
    return cache_dir


def _write_poe_features(cache_dir: str, preprocessed, poe_dir) -> str:
    """What the train component writes beside its work directory: the poe features of its cache."""
    from trainer.features_cache import write_poe_features

    write_poe_features(cache_dir, preprocessed.transform_graph_dir, str(poe_dir))
    return str(poe_dir)


@pytest.fixture(scope="module")
def poe_features(distinct_preprocessed, feature_cache, tmp_path_factory) -> str:
    """The train component's poe_features artifact of feature_cache."""
    return _write_poe_features(feature_cache, distinct_preprocessed, tmp_path_factory.mktemp("poe") / "poe_features")


def _poe_fit(poe_dir: str, records: tuple):
    """What the KFP shell passes the evaluate stage: tfidf_image_poe fitted on the poe features a
    training run wrote from its cache of `records` (examples, transform graph)."""
    from trainer.features_cache import fit_poe

    return lambda classes: fit_poe(poe_dir, *records, classes)


def _cached_split(cache_dir: str, split: str, titles: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(titles, image features, label ids) of a cached split, its titles looked up by id."""
    from trainer import features_cache

    ids, images, labels = [], [], []
    for inputs, batch_labels, batch_ids in features_cache.make_feature_dataset(cache_dir, split, 16, False,
                                                                               with_ids=True):
        ids += list(batch_ids.numpy())
        images.append(inputs[features.IMAGE_FEATURES_KEY].numpy())
        labels.append(batch_labels.numpy())
    return [titles[i] for i in ids], np.concatenate(images), np.concatenate(labels)


def test_tfidf_image_poe_is_fitted_on_the_trainers_cache_and_paired_with_the_candidate_on_the_same_products(
    distinct_preprocessed, text_models, feature_cache, poe_features
):
    from common import poe

    records = (distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir)
    evaluation = evaluate_model(text_models["untrained"], *records, poe_fit=_poe_fit(poe_features, records))
    titles = {}
    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        split_titles, _, ids = _split_titles(distinct_preprocessed.examples_dir, split)
        titles.update(zip(ids, split_titles))
    train, validation, evaluated = (_cached_split(feature_cache, s, titles) for s in (
        features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT))
    assert len(validation[0]) > 0  # C is chosen on a validation split
    classes = len(DISTINCT_CLASSES) + 1  # and the out-of-vocabulary class
    direct = poe.TfidfImagePoe(train, validation, classes)
    expected = np.mean(direct.scores(evaluated[0], evaluated[1]).argmax(1) == evaluated[2])
    fitted = evaluation.poe_baseline
    assert fitted["model"] == "tfidf_image_poe" and fitted["train_products"] == len(train[0]) + len(validation[0])
    assert fitted["choices"] == direct.choices()
    assert fitted["examples"] == len(evaluated[0]) == evaluation.metrics["examples"]
    assert fitted["top1_accuracy"] == pytest.approx(expected)
    assert fitted["top1_accuracy"] > evaluation.metrics["top1_accuracy"] + 0.2  # against an untrained candidate
    paired = fitted["paired"]
    assert (paired["both_right"] + paired["baseline_only_right"]) / paired["examples"] == pytest.approx(expected)
    assert (paired["both_right"] + paired["candidate_only_right"]) / paired["examples"] == pytest.approx(
        evaluation.metrics["top1_accuracy"])
    scalars = evaluation.scalars()
    assert scalars["tfidf_image_poe_top1_accuracy"] == fitted["top1_accuracy"]
    assert scalars["tfidf_image_poe_only_right"] == paired["baseline_only_right"]
    # Reported, not gated on: the gate reads the tfidf_svm baseline only.
    verdict = gate(evaluation.metrics, 0.0, None, baseline=evaluation.baseline, baseline_tolerance=1.0)
    assert verdict.blessed and "tfidf_image_poe" not in verdict.reason
    none = evaluate_model(text_models["untrained"], *records, poe_fit=_poe_fit(poe_features, records),
                          baseline_max_train_products=0)
    assert none.poe_baseline is None and not any(k.startswith("tfidf_image_poe") for k in none.scalars())


def test_the_poe_features_give_the_very_predictions_the_feature_cache_gave(distinct_preprocessed, feature_cache,
                                                                           poe_features):
    """The artifact against the cache it came from: what evaluate fitted on before it had the artifact
    (the cache read by titles_and_image_features, as the benchmark still reads it), product by product."""
    from common import poe
    from trainer.features_cache import fit_poe, poe_split_file, titles_and_image_features

    examples, transform_graph = distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir
    classes = len(DISTINCT_CLASSES) + 1
    train, validation, evaluated = (titles_and_image_features(feature_cache, examples, s, 0.2) for s in (
        features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT))
    from_cache = poe.fit_for_eval(train[:3], validation[:3], (evaluated[0], evaluated[1], evaluated[3]), classes)
    from_artifact = fit_poe(poe_features, examples, transform_graph, classes)
    assert set(from_artifact.top_ids) == set(from_cache.top_ids) == set(evaluated[3])
    for product, top in from_cache.top_ids.items():
        np.testing.assert_array_equal(from_artifact.top_ids[product], top)
    assert from_artifact.choices == from_cache.choices and from_artifact.train_products == from_cache.train_products
    # The same float32 features, bit for bit: nothing was rounded on the way.
    with np.load(poe_split_file(poe_features, features.EVAL_SPLIT)) as archive:
        stored = dict(zip(archive["ids"].tolist(), archive[features.IMAGE_FEATURES_KEY]))
    np.testing.assert_array_equal(np.stack([stored[i] for i in evaluated[3]]), evaluated[1])


def _poe_files(poe_dir: str) -> set[str]:
    return set(os.listdir(poe_dir))


def test_poe_features_that_cannot_serve_tfidf_image_poe_are_said_and_the_candidate_still_judged(
    distinct_preprocessed, text_models, feature_cache, poe_features, tmp_path, monkeypatch
):
    from common import poe
    from components.evaluation_report import render_html
    from trainer.features_cache import POE_METADATA_FILE

    records = (distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir)
    other = tmp_path / "other"
    shutil.copytree(feature_cache, other)
    metadata = json.loads((other / "cache.json").read_text())
    (other / "cache.json").write_text(json.dumps({**metadata, "data": "0123456789abcdef"}))
    refused = _write_poe_features(str(tmp_path / "none"), distinct_preprocessed, tmp_path / "poe_none")
    assert _poe_files(refused) == {POE_METADATA_FILE}  # the trainer ran tune full: nothing but why
    with monkeypatch.context() as patch:
        patch.setattr(poe, "MAX_EVALUATE_COST", 10)
        past_cap = _write_poe_features(feature_cache, distinct_preprocessed, tmp_path / "poe_past_cap")
    assert _poe_files(past_cap) == {POE_METADATA_FILE}
    cases = {"no finished feature cache": refused,
             "built from other examples": _write_poe_features(str(other), distinct_preprocessed, tmp_path / "poe_other"),
             "classes is past what the evaluate stage fits (10)": past_cap}
    for reason, poe_dir in cases.items():
        evaluation = evaluate_model(text_models["trained"], *records, poe_fit=_poe_fit(poe_dir, records))
        assert evaluation.metrics["examples"] > 0 and evaluation.baseline["top1_accuracy"] > 0
        assert reason in evaluation.poe_baseline["error"] and evaluation.poe_baseline["error"].startswith(
            "the tfidf_image_poe baseline was not fitted: ")
        assert not any(k.startswith("tfidf_image_poe") for k in evaluation.scalars())
        assert reason in render_html(evaluation, gate(evaluation.metrics, 0.0), "model")
    # The cap holds at the fit too, for features written under a higher one.
    monkeypatch.setattr(poe, "MAX_EVALUATE_COST", 10)
    evaluation = evaluate_model(text_models["trained"], *records, poe_fit=_poe_fit(poe_features, records))
    assert "classes is past what the evaluate stage fits (10)" in evaluation.poe_baseline["error"]


def _truncated(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _one_byte_flipped(path: pathlib.Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the image features: only zip's CRC can tell
    path.write_bytes(bytes(raw))


def _wrong_shape(path: pathlib.Path) -> None:
    with np.load(path) as archive:
        arrays = dict(archive)
    np.savez(path, ids=arrays["ids"][:-1], image_features=arrays[features.IMAGE_FEATURES_KEY])


def _pickled(path: pathlib.Path) -> None:
    np.savez(path, ids=np.array([b"a", None], dtype=object), image_features=np.zeros([2, 3]))


@pytest.mark.parametrize("damage, file, says", [
    (_truncated, "train.npz", "cannot be read"),
    (_one_byte_flipped, "train.npz", "cannot be read"),
    (lambda path: path.write_bytes(b""), "validation.npz", "cannot be read"),
    (lambda path: path.unlink(), "eval.npz", "cannot be read"),
    (_wrong_shape, "eval.npz", "its metadata says"),
    (_pickled, "train.npz", "cannot be read"),
    (lambda path: path.write_text('{"data": '), "poe_features.json", "is not the JSON"),
    (lambda path: path.write_text("[]"), "poe_features.json", "is not the metadata"),
], ids=["truncated", "one byte flipped", "empty", "missing", "wrong shape", "pickled", "cut json", "not metadata"])
def test_damaged_poe_features_are_refused_in_one_line_naming_the_file(
    distinct_preprocessed, poe_features, tmp_path, damage, file, says
):
    from trainer.features_cache import fit_poe

    damaged = tmp_path / "poe_features"
    shutil.copytree(poe_features, damaged)
    damage(damaged / file)
    with pytest.raises(ValueError, match=says) as error:
        fit_poe(str(damaged), distinct_preprocessed.examples_dir, distinct_preprocessed.transform_graph_dir,
                len(DISTINCT_CLASSES) + 1)
    assert str(damaged / file) in str(error.value) and "\n" not in str(error.value)
