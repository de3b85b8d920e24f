"""The whole Kubeflow pipeline through kfp.local, as a new user runs it: CLI in, served model out."""
import csv

import tensorflow as tf

from pipeline.__main__ import main
from tests.conftest import FASHION_DIR, write_small_catalog
from common import features


def test_compile_writes_the_pipeline_spec(tmp_path):
    import yaml

    assert main(["compile", "--output", str(tmp_path / "p.yaml")]) == 0
    # The pipeline spec, then the Kubernetes platform spec (node selector, tolerations) as a second document.
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    assert set(spec["root"]["dag"]["tasks"]) == {"preprocess", "train", "evaluate", "condition-1"}


def test_run_local_pushes_a_versioned_model_that_predicts_catalog_labels(tmp_path, tiny_bert_handle, capsys):
    catalog = write_small_catalog(tmp_path / "catalog.csv", 40)
    with open(catalog, newline="") as f:
        label_set = {row["articleType"] for row in csv.DictReader(f)}
    args = [
        "run-local", "--catalog", str(catalog), "--label-column", "articleType", "--work-dir", str(tmp_path / "run"),
        "--bert-handle", str(tiny_bert_handle), "--image-weights", "", "--image-variant", "b0",
        "--image-size", "32", "--max-seq-length", "16", "--epochs", "1", "--batch-size", "8",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    version_dir = tmp_path / "run" / "serving" / features.MODEL_NAME / "1"
    assert f"pushed model: {version_dir}" in out
    assert "top1_accuracy" in out
    model = tf.saved_model.load(str(version_dir))
    prediction = model.signatures[features.SERVING_SIGNATURE](
        title=tf.constant(["Fila Men Cush Flex Black Slippers"]),
        image_bytes=tf.constant([(FASHION_DIR / "images" / "18653.jpg").read_bytes()]),
    )
    assert {c.decode() for c in prediction["classes"].numpy().ravel()} <= label_set | {"[OOV]"}


def test_run_local_fails_in_one_line_on_a_missing_catalog(tmp_path, capsys):
    code = main(["run-local", "--catalog", str(tmp_path / "nope.csv"), "--label-column", "x", "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().count("\n") == 0 and "nope.csv does not exist" in err
