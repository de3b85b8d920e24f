"""common/metrics.py's streamed figures against independent computations on the whole arrays
(scikit-learn, SciPy, brute force over products), fed in several batches."""
import collections

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from common import metrics

NAMES = [f"class_{c:02d}" for c in range(30)]


def _batches(*arrays, size=7):
    for start in range(0, len(arrays[0]), size):
        yield tuple(a[start:start + size] for a in arrays)


def _predictions(n=200, classes=30, seed=0):
    """Labels and class scores of a model right about half the time, over `classes` classes of uneven size."""
    rng = np.random.default_rng(seed)
    labels = np.minimum(rng.geometric(0.15, n) - 1, classes - 1)
    scores = rng.normal(size=(n, classes))
    scores[np.arange(n), labels] += rng.choice([0.0, 4.0], n)
    return labels, scores


def test_top_k_ids_rank_by_decreasing_probability_ties_by_class_id():
    p = np.array([[0.1, 0.4, 0.1, 0.4], [0.7, 0.1, 0.2, 0.0]])
    np.testing.assert_array_equal(metrics.top_k_ids(p, 3), [[1, 3, 0], [0, 2, 1]])
    assert metrics.top_k_ids(p).shape == (2, 4)  # k above the number of classes: all of them
    assert metrics.top_k_ids(np.zeros((1, 9))).tolist() == [[0, 1, 2, 3, 4]]  # TOP_K = 5 by default


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_k_ids_of_many_classes_equal_a_full_stable_sort_ties_nan_and_inf_included(k):
    # Past 8 × k classes top_k_ids partitions first; a full stable sort is the independent answer.
    rng = np.random.default_rng(k)
    p = rng.random((12, 200)).astype(np.float32)
    p[1, [7, 50, 120, 199]] = 2.0  # four tied at the top: more than k for k = 1, 3
    p[2, :] = 0.5  # every class tied
    p[3, 60] = np.nan
    p[4, [3, 9]] = -np.inf
    p[5, [10, 11, 12, 13, 14, 15]] = 1.5  # a tie across the k-th place for every k here
    p[6] = np.round(p[6], 1)  # many ties everywhere
    expected = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(metrics.top_k_ids(p, k), expected)


def test_class_counts_match_scikit_learn_over_several_batches():
    labels, scores = _predictions()
    counts = metrics.ClassCounts(30)
    for batch_labels, batch_scores in _batches(labels, scores):
        counts.add(batch_labels, metrics.top_k_ids(batch_scores))
    predicted = scores.argmax(-1)
    top5 = np.argsort(-scores, -1)[:, :5]
    figures = counts.metrics()
    assert figures["examples"] == 200
    assert figures["top1_accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert figures["top5_accuracy"] == pytest.approx(np.mean([y in row for y, row in zip(labels, top5)]))
    assert figures["top5_accuracy"] > figures["top1_accuracy"]
    assert figures["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))

    present = sorted(set(labels) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=present, zero_division=0)
    expected = sorted(
        ({"label": NAMES[c], "support": int(s), "predicted": int(np.sum(predicted == c)), "precision": pytest.approx(p),
          "recall": pytest.approx(r), "f1": pytest.approx(f)} for c, p, r, f, s in zip(present, precision, recall, f1, support)),
        key=lambda row: (-row["support"], row["label"]))
    assert counts.per_class(NAMES) == expected


def test_per_class_figures_are_0_where_undefined_as_scikit_learns_zero_division_0():
    # Class 2 is never predicted (no precision), class 3 never true (no recall): the random
    # predictions above predict every class, so neither case occurs there.
    labels, predicted = np.array([0, 0, 1, 2, 2]), np.array([0, 3, 1, 1, 0])
    counts = metrics.ClassCounts(5)
    counts.add(labels, predicted[:, None])
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=[0, 1, 2, 3],
                                                                     zero_division=0)
    rows = {row["label"]: row for row in counts.per_class(NAMES)}
    assert sorted(rows) == NAMES[:4]  # class 4 neither true nor predicted: not a row
    for c in range(4):
        assert (rows[NAMES[c]]["precision"], rows[NAMES[c]]["recall"], rows[NAMES[c]]["f1"]) == pytest.approx(
            (precision[c], recall[c], f1[c])), c
    assert rows[NAMES[2]]["precision"] == 0.0 and rows[NAMES[3]]["recall"] == 0.0


def test_top5_counts_only_the_first_five_of_longer_rankings():
    counts = metrics.ClassCounts(8)
    counts.add(np.array([5, 6]), np.array([[0, 1, 2, 3, 4, 5, 6, 7], [6, 0, 1, 2, 3, 4, 5, 7]]))
    assert counts.metrics()["top5_accuracy"] == 0.5 and counts.metrics()["top1_accuracy"] == 0.5


def test_confused_pairs_are_the_most_frequent_errors_with_their_share_of_the_true_class():
    labels, scores = _predictions(seed=1)
    predicted = scores.argmax(-1)
    counts = metrics.ClassCounts(30)
    for batch_labels, batch_scores in _batches(labels, scores, size=13):
        counts.add(batch_labels, metrics.top_k_ids(batch_scores))
    errors = collections.Counter((int(t), int(p)) for t, p in zip(labels, predicted) if t != p)
    expected = [{"true": NAMES[t], "predicted": NAMES[p], "count": n, "share_of_true": n / np.sum(labels == t)}
                for (t, p), n in sorted(errors.items(), key=lambda kv: (-kv[1], NAMES[kv[0][0]], NAMES[kv[0][1]]))]
    assert counts.confused_pairs(NAMES, limit=1000) == expected
    assert counts.confused_pairs(NAMES, limit=4) == expected[:4]
    assert len(counts.confused_pairs(NAMES)) == min(len(expected), metrics.CONFUSED_PAIRS) == 20


# None: the default, what components/evaluate.py shows: the 20 most frequent classes and the rest pooled.
@pytest.mark.parametrize("max_classes", [5, 30, None])
def test_the_confusion_matrix_pools_all_but_the_most_frequent_classes_and_still_adds_up(max_classes):
    labels, scores = _predictions(seed=2)
    predicted = scores.argmax(-1)
    counts = metrics.ClassCounts(30)
    counts.add(labels, metrics.top_k_ids(scores))
    if max_classes is None:
        categories, matrix = counts.confusion_matrix(NAMES)
        max_classes = 20
    else:
        categories, matrix = counts.confusion_matrix(NAMES, max_classes)

    present = set(labels) | set(predicted)
    order = sorted(present, key=lambda c: (-np.sum(labels == c), NAMES[c]))
    shown = order[:max_classes]
    pooled = len(order) > max_classes
    other = len(shown)
    to_row = np.vectorize(lambda c: shown.index(c) if c in shown else other)
    expected = confusion_matrix(to_row(labels), to_row(predicted), labels=range(len(shown) + int(pooled)))
    assert categories == [NAMES[c] for c in shown] + ([metrics.OTHER_CLASSES] if pooled else [])
    assert pooled == (max_classes < 30)
    np.testing.assert_array_equal(matrix, expected)
    assert np.sum(matrix) == 200


def test_counts_of_nothing():
    counts = metrics.ClassCounts(3)
    assert counts.macro_f1() == 0.0
    with pytest.raises(ValueError, match=r"^no eval examples: the eval split is empty$"):
        counts.metrics()
    assert counts.per_class(NAMES) == [] and counts.confused_pairs(NAMES) == []
    assert counts.confusion_matrix(NAMES) == ([], [])


def test_unimodal_agreement_is_table_1_counted_per_product():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 300)
    text, image, fused = (np.where(rng.random(300) < p, labels, (labels + 1) % 4) for p in (0.8, 0.5, 0.85))
    agreement = metrics.UnimodalAgreement()
    for batch in _batches(labels, text, image, fused, size=64):
        agreement.add(*batch)
    table = agreement.table()
    t_right, i_right, f_right = text == labels, image == labels, fused == labels
    for name, t, i in (("text_right_image_wrong", True, False), ("text_wrong_image_right", False, True),
                       ("both_right", True, True), ("both_wrong", False, False)):
        cell = (t_right == t) & (i_right == i)
        assert table[name] == {"products": int(cell.sum()), "percent": pytest.approx(100 * cell.mean()),
                               "fused_right_percent": pytest.approx(100 * f_right[cell].mean())}
    assert table["text_only_top1_accuracy"] == pytest.approx(t_right.mean())
    assert table["image_only_top1_accuracy"] == pytest.approx(i_right.mean())


def test_an_empty_cell_of_table_1_has_no_fused_share():
    agreement = metrics.UnimodalAgreement()
    agreement.add(np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), np.array([0, 0]))
    table = agreement.table()
    assert table["both_right"] == {"products": 2, "percent": 100.0, "fused_right_percent": 50.0}
    assert table["both_wrong"] == {"products": 0, "percent": 0.0, "fused_right_percent": None}


def test_paired_counts_give_mcnemars_exact_test_on_the_disagreements():
    rng = np.random.default_rng(4)
    candidate, baseline = rng.random(500) < 0.75, rng.random(500) < 0.6
    paired = metrics.PairedCounts()
    for batch in _batches(candidate, baseline, size=50):
        paired.add(*batch)
    candidate_only, baseline_only = int(np.sum(candidate & ~baseline)), int(np.sum(~candidate & baseline))
    assert paired.figures() == {
        "examples": 500, "both_right": int(np.sum(candidate & baseline)), "candidate_only_right": candidate_only,
        "baseline_only_right": baseline_only, "both_wrong": int(np.sum(~candidate & ~baseline)),
        "mcnemar_p_value": pytest.approx(binomtest(candidate_only, candidate_only + baseline_only, 0.5).pvalue)}
    assert paired.figures()["mcnemar_p_value"] < 0.05  # 75 % against 60 % on 500 products
    same = metrics.PairedCounts()
    same.add(candidate, candidate)
    assert same.figures()["mcnemar_p_value"] == 1.0


# ---- Calibration ---------------------------------------------------------------------------------

def test_precision_names_and_the_doubt_scale():
    assert [metrics.precision_name(p) for p in (0.95, 0.98, 0.995)] == ["95", "98", "99_5"]
    np.testing.assert_allclose(metrics.cell_edge([0, 1, 500]), [0.0, 1 - np.exp(-0.002), 1 - np.exp(-1.0)])
    edges = metrics.cell_edge(np.arange(metrics.DOUBT_CELLS))
    assert metrics.DOUBT_CELLS == 40000
    for threshold in (1e-9, 0.3, 0.5, 0.9, 0.99, 0.999999, 1.0):
        # The first cell whose lowest confidence clears the threshold, by brute force.
        assert metrics.first_cell_at(threshold) == int(np.argmax(edges >= threshold)), threshold
    assert metrics.first_cell_at(-0.5) == metrics.first_cell_at(0.0) == 0
    assert metrics.first_cell_at(1.5) == metrics.DOUBT_CELLS
    assert edges[metrics.first_cell_at(1.0) - 1] < 1.0


def _spread_logits(n=150, seed=5):
    """Logits of 3 classes whose top-1 confidences fall in distinct doubt cells, right with probability ≈ c."""
    rng = np.random.default_rng(seed)
    confidence = np.sort(rng.choice(np.arange(220, 2000), n, replace=False))  # distinct cells
    c = -np.expm1(-(confidence + 0.5) * metrics.DOUBT_CELL)  # mid-cell
    logits = np.log(np.stack([c, (1 - c) / 2, (1 - c) / 2], -1))
    labels = np.where(rng.random(n) < c, 0, rng.integers(1, 3, n))
    order = rng.permutation(n)  # streamed in no particular order
    return logits[order], labels[order], c[order]


def _reference_coverage(c, right, target):
    """Brute force over thresholds at each product's confidence: the largest share at precision ≥ target."""
    best = (0.0, None)
    for t in np.sort(c)[::-1]:
        admitted = c >= t
        if right[admitted].mean() >= target - 1e-12:
            best = (admitted.mean(), t)
    return best


def test_calibration_figures_match_a_direct_computation_on_all_products():
    logits, labels, c = _spread_logits()
    counts = metrics.CalibrationCounts()
    for batch in _batches(logits, labels, size=40):
        counts.add(*batch)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    right = labels == 0
    onehot = np.eye(3)[labels]
    figures = counts.figures(target_precisions=(0.9, 0.95, 0.999), bins=5)
    assert figures["accuracy"] == pytest.approx(right.mean())
    assert figures["mean_confidence"] == pytest.approx(c.mean())
    assert figures["nll"] == pytest.approx(log_loss(labels, p, labels=[0, 1, 2]))
    assert figures["brier"] == pytest.approx(np.mean(np.sum((p - onehot) ** 2, -1)))

    # Equal-mass bins of 30 products each, by increasing confidence.
    order = np.argsort(c)
    bins = [{"products": 30, "confidence": pytest.approx(c[i].mean()), "accuracy": pytest.approx(right[i].mean())}
            for i in np.split(order, 5)]
    assert counts.reliability(5) == bins
    ece = sum(30 * abs(right[i].mean() - c[i].mean()) for i in np.split(order, 5)) / 150
    assert figures["ece"] == pytest.approx(ece)

    for target, name in ((0.9, "90"), (0.95, "95"), (0.999, "99_9")):
        coverage, threshold = _reference_coverage(c, right, target)
        assert figures[f"coverage_at_{name}"] == pytest.approx(coverage)
        if threshold is None:
            assert figures[f"threshold_at_{name}"] is None
        else:  # the lowest confidence of the admitted product's cell
            cell = np.floor(-np.log1p(-threshold) / metrics.DOUBT_CELL)
            assert figures[f"threshold_at_{name}"] == pytest.approx(metrics.cell_edge(cell))
    assert 0 < figures["coverage_at_90"] < 1 and figures["coverage_at_99_9"] < figures["coverage_at_90"]


def test_a_threshold_files_the_products_that_clear_it_and_reviews_the_rest():
    logits, labels, c = _spread_logits(seed=6)
    counts = metrics.CalibrationCounts()
    counts.add(logits, labels)
    right = labels == 0
    for threshold in (0.0, 0.6, 0.9, 0.97):
        edge = float(metrics.cell_edge(metrics.first_cell_at(threshold)))  # on a cell edge: exact
        auto = c >= edge
        assert counts.at_threshold(edge) == {
            "threshold": edge, "auto_share": pytest.approx(auto.mean()), "review_share": pytest.approx(1 - auto.mean()),
            "auto_precision": pytest.approx(right[auto].mean()) if auto.any() else None}
    assert counts.at_threshold(None) == {"threshold": None, "auto_share": 0.0, "review_share": 1.0,
                                         "auto_precision": None}


def test_the_coverage_curve_runs_from_the_most_confident_products_to_all_of_them():
    logits, labels, c = _spread_logits(seed=7)
    counts = metrics.CalibrationCounts()
    counts.add(logits, labels)
    right = labels == 0
    curve = counts.coverage_curve(points=10)
    assert 8 <= len(curve) <= 10
    assert curve[0]["coverage"] == pytest.approx(1 / 150) and curve[-1]["coverage"] == 1.0
    assert all(a["coverage"] < b["coverage"] and a["threshold"] > b["threshold"] for a, b in zip(curve, curve[1:]))
    for point in curve:
        admitted = c >= point["threshold"]
        assert point["coverage"] == pytest.approx(admitted.mean())
        assert point["precision"] == pytest.approx(right[admitted].mean())
    assert len(counts.coverage_curve()) == 150  # fewer products than CURVE_POINTS: every one
    assert metrics.CalibrationCounts().coverage_curve() == []


def test_a_confidence_that_rounds_to_one_keeps_its_doubt():
    counts = metrics.CalibrationCounts()
    counts.add(np.array([[60.0, 0.0], [0.0, 200.0]], np.float32), np.array([0, 0]))
    # 1 - c = e^-60: cell 30000, not the last one; e^-200 is below the scale and pooled in the last cell.
    assert np.flatnonzero(counts.products).tolist() == [30000, metrics.DOUBT_CELLS - 1]
    assert counts.nll_sum == pytest.approx(np.exp(-60) + 200)
    assert counts.right.tolist()[30000] == 1 and counts.right[-1] == 0


def test_calibration_of_nothing_is_an_error():
    with pytest.raises(ValueError, match=r"^no products: the split is empty$"):
        metrics.CalibrationCounts().figures()


# ---- Stream weights ------------------------------------------------------------------------------

def test_stream_weight_summary_matches_numpy_on_right_and_wrong_products():
    rng = np.random.default_rng(8)
    s_t = rng.beta(2, 5, 400)
    weights = np.stack([s_t, 1 - s_t], -1)
    right = rng.random(400) < 0.6
    counts = metrics.StreamWeightCounts()
    for batch in _batches(weights, right, size=33):
        counts.add(*batch)
    summary = counts.summary()
    assert summary["outside_0_1"] == 0
    for kind, mask in (("right", right), ("wrong", ~right)):
        row = summary[kind]
        assert row["products"] == mask.sum()
        assert row["mean_text_weight"] == pytest.approx(s_t[mask].mean())
        assert row["mean_image_weight"] == pytest.approx(1 - s_t[mask].mean())
        for q in (10, 50, 90):  # resolved to a cell of 1/1000
            assert row[f"text_weight_q{q}"] == pytest.approx(np.quantile(s_t[mask], q / 100, method="inverted_cdf"),
                                                             abs=1e-3)


def test_a_quantile_that_falls_exactly_on_a_cells_running_count_is_that_cell():
    # 10 products: q10 and q50 are reached exactly (1 and 5 products) at the end of a cell followed by a gap.
    s_t = np.array([0.1004] + [0.2004] * 4 + [0.9004] * 5)
    counts = metrics.StreamWeightCounts()
    counts.add(np.stack([s_t, 1 - s_t], -1), np.ones(10, bool))
    row = counts.summary()["right"]
    for q in (10, 50, 90):
        assert row[f"text_weight_q{q}"] == pytest.approx(np.quantile(s_t, q / 100, method="inverted_cdf"), abs=1e-3)


def test_stream_weights_outside_0_1_are_counted_and_pooled_in_the_end_cells():
    counts = metrics.StreamWeightCounts()
    counts.add(np.array([[-0.5, 1.5], [1.2, 0.1], [0.5, 0.5], [1.0, 0.0]]), np.array([True, False, True, True]))
    summary = counts.summary()
    assert summary["outside_0_1"] == 2
    assert counts.cells[1, 0] == 1 and counts.cells[0, -1] == 1 and counts.cells[1, -1] == 1 and counts.cells[1, 500] == 1
    assert summary["wrong"] == {"products": 1, "mean_text_weight": 1.2, "mean_image_weight": pytest.approx(0.1),
                                "text_weight_q10": 0.9995, "text_weight_q50": 0.9995, "text_weight_q90": 0.9995}
    assert metrics.StreamWeightCounts().summary() == {"outside_0_1": 0, "right": {"products": 0},
                                                      "wrong": {"products": 0}}
    # components/evaluate.py reads the summary's rows by KINDS.
    assert set(metrics.StreamWeightCounts.KINDS) == set(summary) - {"outside_0_1"}


def test_the_histogram_spans_the_range_the_weights_occupy():
    rng = np.random.default_rng(9)
    s_t = rng.uniform(0.95, 0.97, 300)
    right = rng.random(300) < 0.5
    counts = metrics.StreamWeightCounts()
    counts.add(np.stack([s_t, 1 - s_t], -1), right)
    histogram = counts.histogram(bins=10)
    edges = np.array(histogram["edges"])
    assert len(edges) == 11 and edges[0] <= s_t.min() and edges[-1] >= s_t.max() and edges[-1] - edges[0] < 0.03
    np.testing.assert_allclose(np.diff(edges), 0.002)
    assert histogram["right"] == np.histogram(s_t[right], edges)[0].tolist()
    assert histogram["wrong"] == np.histogram(s_t[~right], edges)[0].tolist()

    spread = metrics.StreamWeightCounts()
    spread.add(np.array([[0.0, 1.0], [0.999, 0.001]]), np.array([True, False]))
    histogram = spread.histogram()  # the default, as components/evaluate.py calls it: 20 bins
    assert histogram["edges"] == pytest.approx(np.linspace(0, 1, 21).tolist())
    assert histogram["right"] == [1] + [0] * 19 and histogram["wrong"] == [0] * 19 + [1]
    assert metrics.StreamWeightCounts().histogram() == {"edges": [0.0, 1.0], "right": [0], "wrong": [0]}


def test_a_narrow_range_at_the_top_keeps_whole_bins_inside_0_1():
    counts = metrics.StreamWeightCounts()
    counts.add(np.array([[0.9995, 0.0005], [0.99, 0.01]]), np.array([True, True]))
    histogram = counts.histogram(bins=20)
    assert histogram["edges"][-1] == 1.0 and len(histogram["edges"]) == 21
    assert sum(histogram["right"]) == 2


def test_weights_on_fewer_cells_than_bins_are_shown_cell_by_cell():
    counts = metrics.StreamWeightCounts()
    counts.add(np.array([[0.5001, 0.4999], [0.5032, 0.4968], [0.5057, 0.4943]]), np.array([True, False, True]))
    histogram = counts.histogram(bins=20)
    # Six occupied cells of 1/1000: twenty bins of one cell (the finest the cells resolve) from the first.
    np.testing.assert_allclose(np.diff(histogram["edges"]), 0.001)
    assert histogram["edges"][0] == pytest.approx(0.5)
    assert histogram["right"][0] == histogram["right"][5] == 1 and histogram["wrong"][3] == 1


def test_bins_that_do_not_divide_the_cells_still_count_every_product_from_0():
    s_t = np.array([0.0, 0.0004, 0.31, 0.77, 0.9999])
    counts = metrics.StreamWeightCounts()
    counts.add(np.stack([s_t, 1 - s_t], -1), np.array([True, True, False, True, False]))
    histogram = counts.histogram(bins=7)  # 7 bins of 143 cells overrun 1000 cells: the last one is cut at 1
    assert histogram["edges"][0] == 0.0 and histogram["edges"][-1] == 1.0
    assert sum(histogram["right"]) == 3 and sum(histogram["wrong"]) == 2
    assert histogram["right"][0] == 2


def test_the_default_figures_give_coverage_at_the_catalog_teams_precisions():
    logits, labels, c = _spread_logits(seed=10)
    counts = metrics.CalibrationCounts()
    counts.add(logits, labels)
    figures = counts.figures()
    for target, name in ((0.95, "95"), (0.98, "98"), (0.99, "99")):
        assert figures[f"coverage_at_{name}"] == pytest.approx(_reference_coverage(c, labels == 0, target)[0])
    assert len(figures) == 5 + 2 * 3


def test_by_default_the_report_has_15_equal_mass_bins_and_a_curve_of_200_points():
    """The defaults components/evaluate.py reports with, against a direct computation."""
    logits, labels, c = _spread_logits(seed=10)
    counts = metrics.CalibrationCounts()
    counts.add(logits, labels)
    right = labels == 0
    order = np.split(np.argsort(c), 15)  # 150 products in distinct cells: 15 bins of 10
    assert counts.reliability() == [{"products": 10, "confidence": pytest.approx(c[i].mean()),
                                     "accuracy": pytest.approx(right[i].mean())} for i in order]
    assert counts.figures()["ece"] == pytest.approx(sum(abs(right[i].mean() - c[i].mean()) for i in order) / 15)

    logits, labels, c = _spread_logits(n=600, seed=11)
    many = metrics.CalibrationCounts()
    many.add(logits, labels)
    curve = many.coverage_curve()
    assert len(curve) == 200
    coverage = np.array([point["coverage"] for point in curve])
    assert coverage[0] == 1 / 600 and coverage[-1] == 1.0
    assert np.all(np.diff(coverage) <= 4 / 600)  # evenly spread: 599 steps of 1/600 over 199 gaps, rounded


def test_a_cells_lowest_confidence_as_threshold_admits_that_cell():
    """A threshold on a cell edge (what coverage_at gives, and what at_threshold is exact for) starts
    at that cell, not the next: brute force over the edges, where float64 still resolves them."""
    edges = metrics.cell_edge(np.arange(3000))
    for cell in range(1, 3000, 7):
        assert metrics.first_cell_at(float(edges[cell])) == int(np.argmax(edges >= edges[cell])) == cell


def test_a_precision_exactly_at_the_target_reaches_it():
    # 10 products in distinct cells, the least confident one wrong: 9 / 10 right is precision 0.9 exactly.
    cells = np.arange(400, 1400, 100)  # confidences 0.55 to 0.93 over 2 classes: class 0 is the top-1
    c = -np.expm1(-(cells + 0.5) * metrics.DOUBT_CELL)
    labels = np.where(cells == 400, 1, 0)
    counts = metrics.CalibrationCounts()
    counts.add(np.log(np.stack([c, 1 - c], -1)), labels)
    assert _reference_coverage(c, labels == 0, 0.9)[0] == 1.0
    assert counts.coverage_at(0.9) == (1.0, pytest.approx(float(metrics.cell_edge(400))))
    assert counts.coverage_at(0.95) == (0.9, pytest.approx(float(metrics.cell_edge(500))))
    # The most confident product wrong instead: no threshold reaches 0.95, nothing is filed automatically.
    top_wrong = metrics.CalibrationCounts()
    top_wrong.add(np.log(np.stack([c, 1 - c], -1)), np.where(cells == 1300, 1, 0))
    assert _reference_coverage(c, cells != 1300, 0.95) == (0.0, None)
    assert top_wrong.coverage_at(0.95) == (0.0, None)
    assert top_wrong.figures(target_precisions=(0.95,))["coverage_at_95"] == 0.0


def test_a_product_of_confidence_below_0_002_is_in_the_first_bin():
    # Near-uniform scores over 1000 classes: confidence 0.001, the doubt scale's first cell.
    logits = np.zeros((4, 1000))
    logits[2:, 0] = 20.0
    labels = np.array([0, 1, 0, 0])
    counts = metrics.CalibrationCounts()
    counts.add(logits, labels)
    confident = np.exp(20.0) / (np.exp(20.0) + 999)
    assert counts.reliability(2) == [
        {"products": 2, "confidence": pytest.approx(0.001), "accuracy": 0.5},
        {"products": 2, "confidence": pytest.approx(confident), "accuracy": 1.0}]


def test_reliability_bins_split_at_cell_edges_when_neighbouring_cells_are_full():
    cells = np.arange(500, 520)  # 20 products in 20 adjacent doubt cells
    c = -np.expm1(-(cells + 0.5) * metrics.DOUBT_CELL)
    counts = metrics.CalibrationCounts()
    counts.add(np.log(np.stack([c, 1 - c], -1)), np.where(np.arange(20) % 3 == 0, 0, 1))
    right = np.arange(20) % 3 == 0
    assert counts.reliability(4) == [
        {"products": 5, "confidence": pytest.approx(c[i:i + 5].mean()), "accuracy": pytest.approx(right[i:i + 5].mean())}
        for i in range(0, 20, 5)]


def test_stream_weights_of_another_width_are_an_error_naming_the_shape():
    with pytest.raises(ValueError, match=r"^stream weights must be \[batch, 2\] or \[batch, 3\], got shape \(4, 4\)$"):
        metrics.StreamWeightCounts().add(np.full((4, 4), 0.25), np.ones(4, bool))


def test_the_lexical_experts_share_is_summed_over_batches_as_numpy_computes_it():
    """The expert fusions' third weight column: per kind its mean, and over all products its mean and
    std, streamed in uneven batches, equal NumPy's on the whole arrays; two-column weights say nothing of it."""
    from common.metrics import RoutingCounts, StreamWeightCounts

    rng = np.random.default_rng(3)
    s_t = rng.uniform(0.05, 0.95, 50)
    weights = np.stack([s_t, 1 - s_t, s_t * rng.uniform(0.1, 0.9, 50)], axis=1)
    right = rng.uniform(size=50) < 0.6
    counts, routing = StreamWeightCounts(), RoutingCounts()
    for start, stop in ((0, 7), (7, 30), (30, 50)):
        counts.add(weights[start:stop], right[start:stop])
        routing.add(weights[start:stop, 0], lexical_weight=weights[start:stop, 2])
    summary = counts.summary()
    for kind, mask in (("right", right), ("wrong", ~right)):
        assert summary[kind]["mean_lexical_weight"] == pytest.approx(weights[mask, 2].mean(), rel=1e-12)
        assert summary[kind]["mean_text_weight"] == pytest.approx(weights[mask, 0].mean(), rel=1e-12)
    figures = routing.figures()
    assert figures["lexical_weight_mean"] == pytest.approx(weights[:, 2].mean(), rel=1e-12)
    assert figures["lexical_weight_std"] == pytest.approx(weights[:, 2].std(), rel=1e-9)
    two_columns = StreamWeightCounts()
    two_columns.add(weights[:, :2], right)
    assert "mean_lexical_weight" not in two_columns.summary()["right"]
    without = RoutingCounts()
    without.add(s_t)
    assert "lexical_weight_mean" not in RoutingCounts().figures() and "lexical_weight_mean" not in without.figures()


def test_a_weight_of_exactly_0_or_1_is_inside_the_range_not_counted_outside():
    from common.metrics import StreamWeightCounts

    counts = StreamWeightCounts()
    counts.add(np.array([[0.0, 1.0], [1.0, 0.0], [-0.01, 1.01], [1.01, -0.01]]), np.array([True, False, True, False]))
    assert counts.summary()["outside_0_1"] == 2
