"""`python -m pipeline benchmark` on real products, and the arithmetic of its tables."""
import json
import os

import pytest
import tensorflow as tf

from pipeline.__main__ import main
from tests.conftest import write_small_catalog
from common import features
from trainer import ablation


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory, tiny_bert_handle):
    root = tmp_path_factory.mktemp("benchmark")
    catalog = write_small_catalog(root / "catalog.csv", 90)
    args = [
        "benchmark", "--catalog", str(catalog), "--label-column", "articleType", "--out", str(root / "out"),
        "--seeds", "2", "--models", "text_only,image_only,decision_level,hanet",
        "--bert-handle", str(tiny_bert_handle), "--text-pooling", "pooled", "--image-weights", "",
        "--image-variant", "b0", "--image-size", "32", "--max-seq-length", "16", "--fusion-width", "32",
        "--learning-rates", "1e-2,3e-2", "--max-epochs", "4", "--patience", "2", "--validation-fraction", "0.2",
        "--beam-arg=--direct_running_mode=in_memory",
    ]
    assert main(args) == 0
    with open(root / "out" / "results.json") as f:
        return root / "out", json.load(f)


def _ids(directory):
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string)}
    files = tf.io.gfile.glob(os.path.join(directory, "*"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(lambda r: tf.io.parse_single_example(r, spec))
    return [e[features.ID_KEY].decode() for e in dataset.as_numpy_iterator()]


def test_validation_is_carved_out_of_train_and_eval_is_untouched(benchmark_run):
    out, _ = benchmark_run
    train = _ids(out / "examples" / features.TRAIN_SPLIT)
    validation = _ids(out / "examples" / ablation.VALIDATION_SPLIT)
    original_train = _ids(out / "preprocess" / "examples" / features.TRAIN_SPLIT)
    assert not set(train) & set(validation)
    assert sorted(train + validation) == sorted(original_train)
    assert all(ablation.is_validation(i.encode(), 0.2) for i in validation)
    assert _ids(out / "examples" / features.EVAL_SPLIT) == _ids(out / "preprocess" / "examples" / features.EVAL_SPLIT)


def test_every_model_and_seed_is_reported_consistently(benchmark_run):
    out, results = benchmark_run
    summary, raw = results["summary"], results["raw"]
    assert set(summary["models"]) == {"text_only", "image_only", "decision_level", "hanet"}
    eval_size = results["summary"]["examples"]
    assert eval_size == len(_ids(out / "examples" / features.EVAL_SPLIT))
    for run in raw["runs"]:
        table = run["eval"]["table1"]["text_only"]
        cells = [table[c]["percent"] for c, _, _ in ablation.UnimodalAgreement.CELLS]
        assert sum(cells) == pytest.approx(100.0)
        # Table 1 and the per-model figures are two computations of the same predictions.
        assert table["text_only_top1_accuracy"] == pytest.approx(run["eval"]["text_only"]["top1_accuracy"])
        assert table["image_only_top1_accuracy"] == pytest.approx(run["eval"]["image_only"]["top1_accuracy"])
        for name, figures in run["eval"].items():
            if name != "table1":
                assert figures["examples"] == eval_size
                assert 0.0 <= figures["top1_accuracy"] <= figures["top5_accuracy"] <= 1.0
    for name, model in summary["models"].items():
        assert model["top1_accuracy"]["n"] == 2
        assert model["learning_rate"] in (1e-2, 3e-2)
    markdown = (out / "results.md").read_text()
    assert "## Table 1" in markdown and "| hanet |" in markdown and "2 seeds" in markdown


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


def test_decision_level_heads_are_trained_after_the_unimodal_ones():
    order = ablation.AblationConfig(models=("policy", "hanet")).training_order()
    assert order.index("text_only") < order.index("policy") and order.index("image_only") < order.index("policy")
    assert ablation.AblationConfig(models=("hanet",)).training_order() == ["hanet"]


def test_an_unknown_model_is_a_one_line_error(tmp_path, capsys, fashion_catalog):
    assert main(["benchmark", "--catalog", str(fashion_catalog), "--label-column", "articleType",
                 "--models", "hanet,late", "--out", str(tmp_path)]) == 1
    assert "unknown models ['late']" in capsys.readouterr().err
