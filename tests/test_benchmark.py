"""`python -m pipeline benchmark` on real products: the shipped trainer in both tunes, the baseline,
and the arithmetic of its tables."""
import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from common import features
from pipeline.__main__ import main
from pipeline import benchmark
from tests.conftest import (DISTINCT_EVAL_FRACTION, FROZEN_VALIDATION_FRACTION as VALIDATION_FRACTION,
                            SMALL_MODEL_IMAGE_SIZE, SMALL_MODEL_SEQ_LENGTH, catalog_of, copy_preprocessed)
from trainer import ablation, data, features_cache
from trainer.model import FROZEN, TOP

MODELS = {"text_only", "image_only", "decision_level", "hanet"}


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory, tiny_bert_handle, distinct_preprocessed):
    """The command on distinct_preprocessed's catalog: its preprocess run (the same sequence length and
    image size) is copied where the command looks for its own, which it reuses. (root, results, catalog)"""
    root = tmp_path_factory.mktemp("benchmark")
    copy_preprocessed(distinct_preprocessed, root / "out" / benchmark.PREPROCESS_DIR)
    catalog = catalog_of(distinct_preprocessed)
    args = [
        "benchmark", "--catalog", str(catalog), "--label-column", "articleType", "--out", str(root / "out"),
        "--seeds", "1", "--models", ",".join(sorted(MODELS)), "--tune", "frozen,top",
        "--bert-handle", str(tiny_bert_handle), "--text-pooling", "pooled", "--image-weights", "",
        "--image-variant", "b0", "--image-size", str(SMALL_MODEL_IMAGE_SIZE),
        "--max-seq-length", str(SMALL_MODEL_SEQ_LENGTH), "--head-width", "32",
        "--learning-rates", "1e-2,3e-2", "--max-epochs", "3", "--patience", "2", "--top-epochs", "1",
        # One fine-tuning rate and one EfficientNet block (the default's two are test_features_cache's):
        # the benchmark's own logic is what this module tests, at the least training that shows it.
        "--top-learning-rates", "1e-4", "--image-top-blocks", "1",
        "--crossfit-folds", "2", "--validation-fraction", str(VALIDATION_FRACTION),
        "--eval-fraction", str(DISTINCT_EVAL_FRACTION), "--beam-arg=--direct_running_mode=in_memory",
    ]
    assert main(args) == 0
    with open(root / "out" / "results.json") as f:
        return root, json.load(f), catalog


def _cached_ids(out, split):
    dataset = features_cache.make_feature_dataset(str(out / "feature_cache"), split, 256, False, with_ids=True)
    return [i.decode() for _, _, ids in dataset for i in ids.numpy()]


def test_validation_is_carved_out_of_train_and_eval_is_untouched(benchmark_run):
    root, _, _ = benchmark_run
    out = root / "out"
    train, validation = _cached_ids(out, features.TRAIN_SPLIT), _cached_ids(out, features.VALIDATION_SPLIT)
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}

    def preprocessed(split):
        files = tf.io.gfile.glob(str(out / "preprocess" / "examples" / split / "*"))
        return [e[features.ID_KEY].decode() for e in tf.data.TFRecordDataset(files, "GZIP").map(
            lambda r: tf.io.parse_single_example(r, spec)).as_numpy_iterator()]

    assert validation and not set(train) & set(validation)
    assert sorted(train + validation) == sorted(preprocessed(features.TRAIN_SPLIT))
    assert data.in_validation(tf.constant(validation), VALIDATION_FRACTION).numpy().all()
    # The cache orders products by a hash of their id: the same products, each once, in its own order.
    assert sorted(_cached_ids(out, features.EVAL_SPLIT)) == sorted(preprocessed(features.EVAL_SPLIT))


def test_every_model_seed_and_tune_is_reported_consistently(benchmark_run):
    _, results, _ = benchmark_run
    summary, raw = results["summary"], results["raw"]
    assert set(summary["tunes"]) == {FROZEN, TOP} and summary["tune"] == TOP
    # the last tune's models, and the baselines
    assert set(summary["models"]) == MODELS | {"tfidf_svm", "tfidf_image_poe"}
    for tune in (FROZEN, TOP):
        assert set(summary["tunes"][tune]["models"]) == MODELS
        for run in raw[tune]["runs"]:
            for name in MODELS:
                figures, table = run["eval"][name], run["eval"]["table1"][name]
                assert figures["examples"] == summary["tunes"][tune]["examples"]
                # Table 1 and the per-model figures are two counts of the same predictions: the products
                # of its cells, and the model's right ones among them, give each model's top-1.
                cells = [table[c] for c, _, _ in ablation.UnimodalAgreement.CELLS]
                assert sum(c["products"] for c in cells) == figures["examples"]
                right = sum(c["products"] * c["fused_right_percent"] / 100 for c in cells if c["products"])
                assert right / figures["examples"] == pytest.approx(figures["top1_accuracy"])
                for unimodal in ("text_only", "image_only"):
                    assert table[f"{unimodal}_top1_accuracy"] == pytest.approx(run["eval"][unimodal]["top1_accuracy"])
            # Only heads that weigh the streams report how they route, over every eval product.
            assert {name for name in MODELS if "routing" in run["eval"][name]} == {"hanet"}
            routing, text_table = run["eval"]["hanet"]["routing"], run["eval"]["table1"]["text_only"]
            assert routing["products"] == summary["tunes"][tune]["examples"]
            assert routing["text_decides_products"] == text_table["text_right_image_wrong"]["products"]
            assert routing["image_decides_products"] == text_table["text_wrong_image_right"]["products"]
    markdown = (benchmark_run[0] / "out" / "results.md").read_text()
    assert "## Table 1, tune top" in markdown and "| hanet | top |" in markdown and "| tfidf_svm | text |" in markdown
    assert "## Which stream decided" in markdown


def test_the_chosen_learning_rate_and_decision_training_are_the_best_on_validation(benchmark_run):
    _, results, _ = benchmark_run
    for tune in (FROZEN, TOP):
        raw = results["raw"][tune]
        for model, candidates in raw["selection"].items():
            best = max(candidates, key=lambda c: c["validation_top1_accuracy"])["validation_top1_accuracy"]
            chosen = [c for c in candidates if c["learning_rate"] == raw["learning_rates"][model]
                      and c["decision_training"] == raw["decision_training"].get(model, c["decision_training"])]
            assert chosen and chosen[0]["validation_top1_accuracy"] == best
    # Both ways of fitting the decision-level head were compared in the frozen tune, on validation only.
    kinds = {c["decision_training"] for c in results["raw"][FROZEN]["selection"]["decision_level"]}
    assert kinds == {"crossfit", "in_sample"}


def test_top_fine_tunes_from_the_frozen_heads_and_the_tuned_blocks_train(benchmark_run):
    root, results, _ = benchmark_run
    work = root / "out" / "runs"
    for seed in (0,):
        rate = results["raw"][TOP]["learning_rates"]["text_only"]
        top = work / TOP / "stages" / f"seed{seed}" / f"text_only-lr{rate:g}"
        # No head phase of its own: it started from the frozen tune's text_only of the same seed.
        assert (top / "top" / "done.json").exists() and not (top / "head").exists()
        settings = json.loads((top / "top" / "settings.json").read_text())
        assert settings["form"] == TOP and settings["model"]["text_top_blocks"] == 1
        # So do the cross-fitted unimodal models of the decision-level heads, from the frozen tune's folds.
        for model in ("text_only", "image_only"):
            for fold in range(2):
                name = f"{model}-fold{fold}of2"
                assert (work / FROZEN / "stages" / f"seed{seed}" / name / "done.json").exists()
                tuned = work / TOP / "stages" / f"seed{seed}" / name
                assert (tuned / "top" / "done.json").exists() and not (tuned / "head").exists()


def test_the_baseline_is_tfidf_svm_on_the_same_titles_and_split(benchmark_run):
    from common.baselines import TfidfSvm

    root, results, catalog = benchmark_run
    out = root / "out"
    with open(catalog, newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    train = [rows[i] for i in _cached_ids(out, features.TRAIN_SPLIT)]
    evaluated = [rows[i] for i in _cached_ids(out, features.EVAL_SPLIT)]
    names = sorted({r["articleType"] for r in train + evaluated})
    classifier = TfidfSvm([r["title"] for r in train], np.array([names.index(r["articleType"]) for r in train]),
                          len(names))
    predicted = classifier.scores([r["title"] for r in evaluated]).argmax(axis=-1)
    # Label ids are numbered otherwise there; SGD breaks a tie between classes by id, so a product may differ.
    expected = np.mean(predicted == np.array([names.index(r["articleType"]) for r in evaluated]))
    baseline = results["raw"]["baseline"]["tfidf_svm"]
    assert baseline["eval"]["top1_accuracy"] == pytest.approx(expected, abs=2 / len(evaluated))
    assert baseline["eval"]["top1_accuracy"] <= baseline["eval"]["top5_accuracy"]
    assert 0.0 < baseline["eval"]["macro_f1"] <= 1.0
    assert results["summary"]["models"]["tfidf_svm"]["top1_accuracy"]["mean"] == pytest.approx(
        baseline["eval"]["top1_accuracy"])


def test_tfidf_image_poe_is_the_product_of_its_experts_on_the_cached_image_features(benchmark_run):
    from common import poe

    root, results, catalog = benchmark_run
    out = root / "out"
    with open(catalog, newline="") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    names = sorted({r["articleType"] for r in rows.values()})

    def split(name):
        dataset = features_cache.make_feature_dataset(str(out / "feature_cache"), name, 256, False, with_ids=True)
        ids, images = [], []
        for inputs, _, batch_ids in dataset:
            ids += [i.decode() for i in batch_ids.numpy()]
            images.append(inputs[features.IMAGE_FEATURES_KEY].numpy())
        return ([rows[i]["title"] for i in ids], np.concatenate(images),
                np.array([names.index(rows[i]["articleType"]) for i in ids]))

    train, validation, evaluated = (split(s) for s in (features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT))
    raw = results["raw"]["baseline"]["tfidf_image_poe"]
    fitted = poe.TfidfImagePoe(train, validation, len(names))
    assert raw["choices"]["text_c"] == fitted.text_c and raw["choices"]["image_c"] == fitted.image_c
    expected = np.mean(fitted.scores(evaluated[0], evaluated[1]).argmax(1) == evaluated[2])
    assert raw["eval"]["top1_accuracy"] == pytest.approx(expected)
    assert results["summary"]["models"]["tfidf_image_poe"]["top1_accuracy"]["mean"] == pytest.approx(expected)


def test_headroom_arithmetic_on_a_hand_made_run():
    def run(text, image, hanet, headroom_percent, hanet_right_there):
        return {
            "text_only": {"top1_accuracy": text}, "image_only": {"top1_accuracy": image},
            "hanet": {"top1_accuracy": hanet},
            "table1": {"hanet": {"text_wrong_image_right": {
                "percent": headroom_percent, "fused_right_percent": hanet_right_there}}},
        }

    figures = ablation._headroom([run(0.80, 0.60, 0.82, 4.0, 75.0), run(0.80, 0.60, 0.81, 5.0, 50.0)], "hanet")
    assert figures["recovered_percent"]["mean"] == pytest.approx(62.5)
    # (0.82 - 0.80) / 0.04 = 50 %, (0.81 - 0.80) / 0.05 = 20 %.
    assert figures["net_gain_percent_of_headroom"]["mean"] == pytest.approx(35.0)
    assert ablation._headroom([run(0.8, 0.6, 0.8, 0.0, None)], "hanet") is None


def test_the_unimodal_models_are_trained_before_the_models_that_use_them():
    order = ablation.AblationConfig(models=("policy", "hanet")).training_order()
    assert order.index("text_only") < order.index("policy") and order.index("image_only") < order.index("policy")
    assert order.index("image_only") < order.index("hanet")
    assert ablation.AblationConfig(models=("text_only",)).training_order() == ["text_only"]


def test_an_unknown_model_is_a_one_line_error(tmp_path, capsys, fashion_catalog):
    assert main(["benchmark", "--catalog", str(fashion_catalog), "--label-column", "articleType",
                 "--models", "hanet,late", "--out", str(tmp_path)]) == 1
    assert "unknown models ['late']" in capsys.readouterr().err


def test_validation_and_folds_are_stable_functions_of_the_id():
    """Fixed ids, fixed answers: a change of the hash would silently change every split."""
    ids = tf.constant([f"product-{i}" for i in range(20000)])
    share = data.in_validation(ids, 0.125).numpy().mean()
    assert share == pytest.approx(0.125, abs=0.01)
    folds = np.bincount(data.fold_of(ids, 3).numpy(), minlength=3) / 20000
    np.testing.assert_allclose(folds, 1 / 3, atol=0.015)
    assert list(data.in_validation(tf.constant(["15970", "39386", "59263", "21379"]), 0.5).numpy()) == KNOWN_VALIDATION
    assert list(data.fold_of(tf.constant(["15970", "39386", "59263", "21379"]), 3).numpy()) == KNOWN_FOLDS


# Computed once with FarmHash Fingerprint64 (tf.strings.to_hash_bucket_fast) and the salts of trainer/data.py.
KNOWN_VALIDATION = [False, True, False, False]
KNOWN_FOLDS = [1, 0, 2, 0]
