"""The evaluate stage's streaming figures against scikit-learn, Table 1 against a direct count, the
gate's verdicts, and the HTML report."""
import base64
import html.parser

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from common.metrics import OTHER_CLASSES, ClassCounts, UnimodalAgreement, top_k_ids
from components.evaluate import Evaluation, Verdict, gate
from components.evaluation_report import render_html
from tests.conftest import FASHION_DIR


def _streamed(labels, probabilities, num_classes, batch=64) -> ClassCounts:
    counts = ClassCounts(num_classes)
    for start in range(0, len(labels), batch):  # batches of uneven size, as the eval loop feeds them
        counts.add(labels[start : start + batch], top_k_ids(probabilities[start : start + batch]))
    return counts


@pytest.fixture
def random_predictions():
    rng = np.random.default_rng(0)
    num_classes = 9
    labels = rng.integers(0, num_classes - 2, size=500)  # two classes never true: F1 must still count them
    probabilities = rng.dirichlet(np.ones(num_classes), size=500)
    probabilities[np.arange(250), labels[:250]] += 0.5  # make half of them right
    return labels, probabilities, num_classes


def test_streamed_counts_match_scikit_learn_on_random_predictions(random_predictions):
    labels, probabilities, num_classes = random_predictions
    counts = _streamed(labels, probabilities, num_classes)
    figures = counts.metrics()
    predicted = probabilities.argmax(-1)
    assert figures["examples"] == 500
    assert figures["top1_accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert figures["top5_accuracy"] == pytest.approx(
        top_k_accuracy_score(labels, probabilities, k=5, labels=np.arange(num_classes))
    )
    assert figures["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_per_class_figures_and_confusions_match_scikit_learn(random_predictions):
    labels, probabilities, num_classes = random_predictions
    names = [f"class-{i}" for i in range(num_classes)]
    counts = _streamed(labels, probabilities, num_classes)
    predicted = probabilities.argmax(-1)
    present = sorted(set(labels) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=present, zero_division=0
    )
    rows = {r["label"]: r for r in counts.per_class(names)}
    assert set(rows) == {names[c] for c in present}
    for i, c in enumerate(present):
        row = rows[names[c]]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
        assert row["support"] == support[i]
    assert [r["support"] for r in counts.per_class(names)] == sorted(support, reverse=True)

    reference = confusion_matrix(labels, predicted, labels=np.arange(num_classes))
    categories, matrix = counts.confusion_matrix(names, max_classes=num_classes)
    order = [names.index(c) for c in categories]
    np.testing.assert_array_equal(np.array(matrix), reference[np.ix_(order, order)])
    off_diagonal = reference - np.diag(np.diag(reference))
    pairs = counts.confused_pairs(names, limit=3)
    assert [p["count"] for p in pairs] == sorted(off_diagonal.ravel(), reverse=True)[:3]
    top = pairs[0]
    t, p = names.index(top["true"]), names.index(top["predicted"])
    assert off_diagonal[t, p] == top["count"]
    assert top["share_of_true"] == pytest.approx(top["count"] / reference[t].sum())


def test_many_classes_pool_the_rare_ones_and_keep_every_count():
    rng = np.random.default_rng(1)
    num_classes = 200
    labels = np.minimum(rng.zipf(1.5, size=3000) - 1, num_classes - 1)  # a long tail, as the paper's 5.6K
    probabilities = rng.random((3000, num_classes))
    probabilities[np.arange(1500), labels[:1500]] += 1.0
    names = [f"c{i}" for i in range(num_classes)]
    counts = _streamed(labels, probabilities, num_classes)
    categories, matrix = counts.confusion_matrix(names, max_classes=20)
    matrix = np.array(matrix)
    assert len(categories) == 21 and categories[-1] == OTHER_CLASSES
    assert matrix.sum() == 3000
    frequent = [names.index(c) for c in categories[:-1]]
    assert frequent == list(np.argsort(-np.bincount(labels, minlength=num_classes), kind="stable")[:20])
    rare = sorted(set(range(num_classes)) - set(frequent))
    reference = confusion_matrix(labels, probabilities.argmax(-1), labels=np.arange(num_classes))
    np.testing.assert_array_equal(matrix[:-1, :-1], reference[np.ix_(frequent, frequent)])
    np.testing.assert_array_equal(matrix[:-1, -1], reference[np.ix_(frequent, rare)].sum(1))
    np.testing.assert_array_equal(matrix[-1, :-1], reference[np.ix_(rare, frequent)].sum(0))
    assert matrix[-1, -1] == reference[np.ix_(rare, rare)].sum()


def test_table1_cells_count_which_unimodal_model_is_right():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=1000)
    text = np.where(rng.random(1000) < 0.8, labels, (labels + 1) % 4)
    image = np.where(rng.random(1000) < 0.5, labels, (labels + 2) % 4)
    fused = np.where(rng.random(1000) < 0.85, labels, (labels + 3) % 4)
    agreement = UnimodalAgreement()
    for start in range(0, 1000, 128):
        s = slice(start, start + 128)
        agreement.add(labels[s], text[s], image[s], fused[s])
    table = agreement.table()
    t, i, f = text == labels, image == labels, fused == labels
    expected = {
        "text_right_image_wrong": t & ~i,
        "text_wrong_image_right": ~t & i,
        "both_right": t & i,
        "both_wrong": ~t & ~i,
    }
    for name, cell in expected.items():
        assert table[name]["products"] == cell.sum()
        assert table[name]["percent"] == pytest.approx(100 * cell.mean())
        assert table[name]["fused_right_percent"] == pytest.approx(100 * f[cell].mean())
    assert sum(table[name]["percent"] for name in expected) == pytest.approx(100.0)
    assert table["text_only_top1_accuracy"] == pytest.approx(t.mean())
    assert table["image_only_top1_accuracy"] == pytest.approx(i.mean())


def test_empty_eval_split_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="eval split is empty"):
        ClassCounts(3).metrics()


def test_gate_blesses_only_at_or_above_the_threshold():
    assert gate({"top1_accuracy": 0.8}, 0.8).blessed
    verdict = gate({"top1_accuracy": 0.79}, 0.8)
    assert not verdict.blessed
    assert "0.7900 < threshold 0.8000" in verdict.reason


def test_first_run_is_judged_on_the_threshold_alone_and_says_so():
    verdict = gate({"top1_accuracy": 0.6}, 0.5, served=None, accuracy_tolerance=0.0)
    assert verdict.blessed
    assert "nothing is served yet" in verdict.reason


def test_gate_refuses_a_candidate_worse_than_the_served_model_beyond_the_tolerance():
    served = {"served_version": 7, "examples": 100, "served_top1_accuracy": 0.80, "candidate_top1_accuracy": 0.76}
    refused = gate({"top1_accuracy": 0.76}, 0.5, served, accuracy_tolerance=0.02)
    assert not refused.blessed
    assert "served version 7 0.8000" in refused.reason and "worse by 0.0400" in refused.reason
    assert "tolerance 0.0200" in refused.reason
    assert gate({"top1_accuracy": 0.76}, 0.5, served, accuracy_tolerance=0.05).blessed
    # The threshold still applies when the candidate beats the served model.
    better = dict(served, candidate_top1_accuracy=0.9)
    assert not gate({"top1_accuracy": 0.4}, 0.5, better).blessed


class _Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_shows_the_verdict_tables_and_products_with_their_photo():
    photo = (FASHION_DIR / "images" / "15970.jpg").read_bytes()
    names = ["Shirts", "Tshirts", "Watches"]
    counts = ClassCounts(3)
    counts.add(np.array([0, 0, 1, 2]), np.array([[0, 1, 2], [1, 0, 2], [1, 0, 2], [2, 0, 1]]))
    evaluation = Evaluation(
        metrics=counts.metrics(),
        per_class=counts.per_class(names),
        confused_pairs=counts.confused_pairs(names),
        confusion_matrix=counts.confusion_matrix(names),
        table1={"text_right_image_wrong": {"products": 1, "percent": 25.0, "fused_right_percent": 100.0},
                "text_wrong_image_right": {"products": 0, "percent": 0.0, "fused_right_percent": None},
                "both_right": {"products": 2, "percent": 50.0, "fused_right_percent": 100.0},
                "both_wrong": {"products": 1, "percent": 25.0, "fused_right_percent": 0.0},
                "text_only_top1_accuracy": 0.75, "image_only_top1_accuracy": 0.5},
        served={"served_version": 3, "examples": 4, "served_top1_accuracy": 0.5, "candidate_top1_accuracy": 0.75},
        samples={"right": [{"id": "15970", "title": "Turtle <Check> Shirt", "image_jpeg": photo, "true": "Shirts",
                            "predicted": [("Shirts", 0.9), ("Tshirts", 0.05)]}], "wrong": []},
    )
    page = render_html(evaluation, Verdict(False, "top-1 accuracy 0.7500 < threshold 0.8000"), "model/uri")
    collected = _Collector()
    collected.feed(page)
    text = " ".join(collected.text)
    assert "Not blessed" in text and "0.7500 < threshold 0.8000" in text
    assert "Turtle <Check> Shirt" in text and "<Check>" not in page  # the title is escaped, not markup
    assert collected.images == ["data:image/jpeg;base64," + base64.b64encode(photo).decode()]
    assert "text model right, image model wrong" in text and "served version 3" in text
    assert "Tshirts" in text and "Watches" in text  # per-class rows and the confused pair Shirts → Tshirts
    assert "75.00%" in text  # top-1 accuracy
