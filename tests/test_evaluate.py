"""The evaluate stage's streaming figures against scikit-learn, Table 1 against a direct count, the
calibration scalars it logs, and the gate's verdicts. (The HTML report: test_evaluation_report.py.)"""
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from common.calibration import Calibration, ReviewThreshold
from common.metrics import OTHER_CLASSES, CalibrationCounts, ClassCounts, PairedCounts, UnimodalAgreement, top_k_ids
from components.evaluate import Evaluation, ModelCalibration, gate


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


def test_scalars_hold_every_calibration_figure_flat_and_leave_out_undefined_ones():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(400, 5)) * 8
    labels = np.where(rng.random(400) < 0.6, logits.argmax(-1), rng.integers(0, 5, 400))
    fitted = Calibration(4.0, (ReviewThreshold(0.95, 0.9, 0.4), ReviewThreshold(0.98, None, 0.0)), 0.98)
    candidate, text = ModelCalibration(fitted), ModelCalibration(Calibration())
    candidate.add(logits, labels)
    text.add(logits, labels)
    counts = ClassCounts(5)
    counts.add(labels, top_k_ids(logits))
    evaluation = Evaluation(
        metrics=counts.metrics(), per_class=[], confused_pairs=[], confusion_matrix=([], []), table1=None,
        served=None, samples={"right": [], "wrong": []}, calibration=candidate.figures(),
        unimodal_calibration={"text_only": text.figures()},
    )
    scalars = evaluation.scalars()
    direct = CalibrationCounts()
    direct.add(logits / 4.0, labels)
    assert scalars["ece"] == pytest.approx(direct.ece()) and scalars["temperature"] == 4.0
    assert scalars["coverage_at_98"] == direct.coverage_at(0.98)[0]
    assert scalars["ece_uncalibrated"] == pytest.approx(scalars["text_only_ece"])  # T = 1: the same logits
    # The 98 % target was not reached on validation: every product is reviewed, no threshold to log.
    assert scalars["review_share"] == 1.0 and "review_threshold" not in scalars and "auto_precision" not in scalars
    assert scalars["text_only_review_threshold"] == 0.0 and scalars["text_only_review_share"] == 0.0
    assert all(isinstance(v, (int, float)) for v in scalars.values())


def _exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value, by its definition: twice the binomial(b + c, 1/2) tail."""
    import math

    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_paired_counts_match_a_direct_count_and_the_exact_mcnemar_test():
    rng = np.random.default_rng(7)
    candidate = rng.random(700) < 0.8
    baseline = rng.random(700) < 0.7
    paired = PairedCounts()
    for start in range(0, 700, 64):
        paired.add(candidate[start:start + 64], baseline[start:start + 64])
    figures = paired.figures()
    b, c = int(np.sum(candidate & ~baseline)), int(np.sum(~candidate & baseline))
    assert (figures["candidate_only_right"], figures["baseline_only_right"]) == (b, c)
    assert figures["both_right"] == int(np.sum(candidate & baseline)) and figures["examples"] == 700
    assert figures["both_wrong"] == int(np.sum(~candidate & ~baseline))
    assert figures["mcnemar_p_value"] == pytest.approx(_exact_mcnemar(b, c))
    assert figures["mcnemar_p_value"] < 0.01  # 80 % against 70 % right on 700 products
    even = PairedCounts()
    even.add(np.array([True, False, True, False]), np.array([False, True, True, False]))
    assert even.figures()["mcnemar_p_value"] == pytest.approx(1.0)
    same = PairedCounts()
    same.add(np.array([True, False]), np.array([True, False]))
    assert same.figures()["mcnemar_p_value"] == 1.0  # no disagreement: nothing tells them apart


def test_the_baseline_scores_only_classes_it_saw_and_survives_hostile_titles():
    from common.baselines import TfidfSvm, decode_titles

    titles = ["red cotton shirt", "blue denim shirt", "leather wallet", "brown wallet", "steel watch", "gold watch"]
    labels = np.array([0, 0, 2, 2, 3, 3])
    baseline = TfidfSvm(titles, labels, num_classes=5)
    hostile = decode_titles([b"\xff\xfe not utf-8", b"", b"wallet " * 10_000, "\u0000\ud7ff".encode()])
    scores = baseline.scores(hostile + ["leather wallet"])
    assert scores.shape == (5, 5)
    assert np.all(np.isinf(scores[:, [1, 4]])) and np.all(np.isfinite(scores[:, [0, 2, 3]]))
    assert scores[-1].argmax() == 2 and scores[2].argmax() == 2
    alone = TfidfSvm(["a shirt", "another shirt"], np.array([1, 1]), num_classes=3)  # one class: nothing to learn
    assert alone.scores(["a wallet"]).argmax() == 1
    with pytest.raises(ValueError, match="no training titles"):
        TfidfSvm([], np.zeros([0], np.int64), num_classes=3)
    with pytest.raises(ValueError, match=r"label ids must be in \[0, 5\)"):
        TfidfSvm(titles, labels + 3, num_classes=5)


def test_below_baseline_is_one_line_only_when_the_candidate_is_below():
    from common.baselines import below_baseline

    line = below_baseline({"top1_accuracy": 0.39, "baseline_top1_accuracy": 0.8})
    assert "0.3900 is below the tfidf_svm baseline's 0.8000" in line and "\n" not in line
    assert below_baseline({"top1_accuracy": 0.8, "baseline_top1_accuracy": 0.8}) is None
    assert below_baseline({"top1_accuracy": 0.39}) is None  # no baseline fitted: nothing to say


def test_gate_names_the_baseline_and_refuses_only_beyond_its_tolerance():
    baseline = {"model": "tfidf_svm", "top1_accuracy": 0.98}
    refused = gate({"top1_accuracy": 0.97}, 0.5, baseline=baseline)  # default tolerance 0: below is refused
    assert not refused.blessed and "worse by 0.0100" in refused.reason
    assert gate({"top1_accuracy": 0.98}, 0.5, baseline=baseline).blessed  # matching it is enough
    reported = gate({"top1_accuracy": 0.97}, 0.5, baseline=baseline, baseline_tolerance=1.0)  # run-local's: reported
    assert reported.blessed and "tfidf_svm baseline's top-1 on the same products is 0.9800" in reported.reason
    assert "0.0100 below it, is blessed only by that tolerance" in reported.reason
    assert gate({"top1_accuracy": 0.97}, 0.5, baseline=baseline, baseline_tolerance=0.01).blessed
    refused = gate({"top1_accuracy": 0.97}, 0.5, baseline=baseline, baseline_tolerance=0.005)
    assert not refused.blessed and "worse by 0.0100" in refused.reason and "baseline tolerance 0.0050" in refused.reason
    # The threshold is judged first; the served model still gets its say after the baseline.
    assert "threshold" in gate({"top1_accuracy": 0.4}, 0.5, baseline=baseline).reason
    served = {"served_version": 2, "examples": 10, "served_top1_accuracy": 0.99, "candidate_top1_accuracy": 0.97}
    assert not gate({"top1_accuracy": 0.97}, 0.5, served, 0.0, baseline, 0.05).blessed


def test_the_lexical_experts_share_is_summarized_beside_the_stream_weights_and_logged_flat():
    """hanet_experts' third stream-weight output: its mean on right and wrong products, its mean and
    spread over all, in the evaluation and its flat scalars; a two-stream head's figures stay as they were."""
    import tensorflow as tf

    from common import features
    from components.evaluate import EvalFigures

    rng = np.random.default_rng(11)
    n, k = 300, 4
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels] * (rng.random((n, 1)) < 0.7)
    s_lexical = rng.beta(2, 3, n) * 0.6
    s_t = s_lexical + rng.beta(2, 5, n) * 0.4
    figures = EvalFigures([str(c) for c in range(k)], ModelCalibration(Calibration()), {}, samples_per_kind=0)
    plain = EvalFigures([str(c) for c in range(k)], ModelCalibration(Calibration()), {}, samples_per_kind=0)
    for start in range(0, n, 64):
        rows = slice(start, start + 64)
        batch = {features.LABEL_ID_KEY: tf.constant(labels[rows])}
        outputs = {features.OUTPUT_LOGITS_KEY: logits[rows], features.OUTPUT_TEXT_WEIGHT_KEY: s_t[rows],
                   features.OUTPUT_IMAGE_WEIGHT_KEY: 1 - s_t[rows]}
        plain.add(batch, dict(outputs))
        figures.add(batch, {**outputs, features.OUTPUT_LEXICAL_WEIGHT_KEY: s_lexical[rows]})
    evaluation = figures.evaluation(None)
    right = logits.argmax(-1) == labels
    summary = evaluation.stream_weights["summary"]
    for kind, mask in (("right", right), ("wrong", ~right)):
        assert summary[kind]["mean_lexical_weight"] == pytest.approx(s_lexical[mask].mean())
        assert summary[kind]["mean_text_weight"] == pytest.approx(s_t[mask].mean())
    routing = evaluation.stream_weights["routing"]
    assert routing["lexical_weight_mean"] == pytest.approx(s_lexical.mean())
    assert routing["lexical_weight_std"] == pytest.approx(s_lexical.std())
    scalars = evaluation.scalars()
    assert scalars["right_mean_lexical_weight"] == pytest.approx(s_lexical[right].mean())
    assert scalars["lexical_weight_std"] == pytest.approx(s_lexical.std())
    without = plain.evaluation(None)
    assert not any("lexical" in name for name in without.scalars())
    assert without.stream_weights["summary"]["right"]["mean_text_weight"] == summary["right"]["mean_text_weight"]
