"""The evaluate stage on real models: a first model is blessed on the threshold alone, a deliberately
worse one is refused against the model served; and the KFP component writes what the pipeline UI
shows (metrics, confusion matrix, Table 1 from real unimodal models, the HTML report, the verdict)."""
import csv
import html.parser
import json
import os

import pytest
from kfp import dsl

from components import kfp_components
from components.evaluate import evaluate_model, gate
from components.push import newest_served_model, push
from tests.conftest import DISTINCT_CLASSES, FASHION_CATALOG, train_small_model
from common import features

TOLERANCE = 0.05


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
    assert worse.served["candidate_top1_accuracy"] < worse.served["served_top1_accuracy"] - TOLERANCE
    verdict = gate(worse.metrics, 0.0, worse.served, TOLERANCE)  # threshold 0: only the comparison can refuse
    assert not verdict.blessed
    assert "served version 1" in verdict.reason and "more than the tolerance 0.0500" in verdict.reason


@pytest.fixture(scope="module")
def image_model(distinct_preprocessed, tiny_bert_handle, tmp_path_factory):
    return train_small_model(
        distinct_preprocessed, tmp_path_factory.mktemp("image") / "model", "image_only", 1, 1e-3, tiny_bert_handle
    )


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = 0, []

    def handle_starttag(self, tag, attrs):
        self.images += tag == "img" and dict(attrs)["src"].startswith("data:image/jpeg;base64,")

    def handle_data(self, data):
        self.text.append(data.strip())


def test_the_kfp_component_writes_metrics_confusion_matrix_table1_report_and_verdict(
    distinct_preprocessed, text_models, image_model, tmp_path
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
        accuracy_threshold=0.5,
        accuracy_tolerance=TOLERANCE,
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
