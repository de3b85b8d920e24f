import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

from components.evaluate import ClassCounts, gate


def test_streamed_counts_match_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    num_classes = 9
    labels = rng.integers(0, num_classes - 2, size=500)  # two classes never true: F1 must still count them
    probabilities = rng.dirichlet(np.ones(num_classes), size=500)
    probabilities[np.arange(250), labels[:250]] += 0.5  # make half of them right
    counts = ClassCounts(num_classes)
    for start in range(0, 500, 64):  # batches of uneven size, as the eval loop feeds them
        counts.add(labels[start : start + 64], probabilities[start : start + 64])
    figures = counts.metrics()
    predicted = probabilities.argmax(-1)
    assert figures["examples"] == 500
    assert figures["top1_accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert figures["top5_accuracy"] == pytest.approx(
        top_k_accuracy_score(labels, probabilities, k=5, labels=np.arange(num_classes))
    )
    assert figures["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_empty_eval_split_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="eval split is empty"):
        ClassCounts(3).metrics()


def test_gate_blesses_only_at_or_above_the_threshold():
    assert gate({"top1_accuracy": 0.8}, 0.8).blessed
    verdict = gate({"top1_accuracy": 0.79}, 0.8)
    assert not verdict.blessed
    assert "0.7900 < threshold 0.8000" in verdict.reason
