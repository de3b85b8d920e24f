"""Temperature scaling and the review thresholds (trainer/calibration.py), their format in the model
(common/calibration.py), and the streamed calibration figures they rest on (common.metrics:
CalibrationCounts, StreamWeightCounts): against hand-computed cases, direct per-product computations
and scikit-learn."""
import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss

from common import calibration as calibration_format
from common.calibration import Calibration, ReviewThreshold
from common.metrics import CalibrationCounts, StreamWeightCounts, cell_edge, first_cell_at
from trainer import calibration as calibrations


def _calibrated_logits(rng, n: int, classes: int = 8, scale: float = 1.5):
    """Logits z and labels drawn from softmax(z): a model calibrated by construction."""
    logits = rng.normal(size=(n, classes)) * scale
    labels = (softmax(logits, axis=-1).cumsum(-1) > rng.random((n, 1))).argmax(-1)
    return logits, labels


def _binary_logits(confidences, right):
    """2-class logits whose top-1 softmax is `confidences` on class 0; the label is 0 where right."""
    c = np.asarray(confidences, np.float64)
    return np.stack([np.log(c), np.log1p(-c)], -1), np.where(right, 0, 1)


def test_an_overconfident_model_logits_times_10_gets_a_temperature_near_10_and_becomes_calibrated():
    rng = np.random.default_rng(0)
    logits, labels = _calibrated_logits(rng, 20000)
    fitted = calibrations.fit(10 * logits[:10000], labels[:10000])
    assert fitted.temperature == pytest.approx(10, rel=0.05)
    assert fitted.validation["ece_before"] > 0.3 and fitted.validation["ece_after"] < 0.02
    # On other products of the same model: calibrated, and top-1 unchanged (T > 0 keeps the argmax).
    held_out = 10 * logits[10000:]
    before, after = CalibrationCounts(), CalibrationCounts()
    before.add(held_out, labels[10000:])
    after.add(held_out / fitted.temperature, labels[10000:])
    assert before.ece() > 0.3 and after.ece() < 0.02
    assert after.nll_sum < before.nll_sum / 3
    np.testing.assert_array_equal(np.argmax(softmax(held_out / fitted.temperature, -1), -1), np.argmax(held_out, -1))
    assert before.figures()["accuracy"] == after.figures()["accuracy"]
    # ... and an already calibrated model keeps T near 1.
    assert calibrations.fit(logits[:10000], labels[:10000]).temperature == pytest.approx(1, rel=0.05)


def test_the_temperature_minimises_the_nll():
    rng = np.random.default_rng(1)
    logits, labels = _calibrated_logits(rng, 3000)
    logits *= 4
    t = calibrations.fit_temperature(logits, labels)
    for other in (t * 0.97, t * 1.03):
        assert calibrations.nll(logits, labels, other) > calibrations.nll(logits, labels, t)
    assert calibrations.nll(logits, labels, 1.0) == pytest.approx(log_loss(labels, softmax(logits, -1), labels=range(8)))


def test_a_validation_split_without_errors_leaves_the_temperature_at_1():
    logits = np.array([[5.0, 0.0], [0.0, 3.0], [4.0, 1.0]])
    assert calibrations.fit(logits, np.array([0, 1, 0])).temperature == 1.0


class _RecordingLogits(calibrations.SpilledLogits):
    """SpilledLogits that records the rows of every read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = []

    def __getitem__(self, rows):
        chunk = super().__getitem__(rows)
        self.reads.append(len(chunk))
        return chunk


def test_the_fit_reads_spilled_logits_a_bounded_step_at_a_time_and_equals_the_fit_in_memory(monkeypatch, tmp_path):
    # 8 classes, steps of 8 × 64 logits: 64 rows a step, so 3,000 products are read in 47 steps a pass,
    # never all at once, whatever their number (the bound is the step, not the products × classes).
    monkeypatch.setattr(calibrations, "CHUNK_VALUES", 8 * 64)
    rng = np.random.default_rng(3)
    logits, labels = _calibrated_logits(rng, 3000)
    logits = (4 * logits).astype(np.float32)
    with _RecordingLogits(8, directory=str(tmp_path)) as spilled:
        for start in range(0, 3000, 256):  # as the trainer writes them: a batch at a time
            spilled.append(logits[start:start + 256])
        assert spilled.shape == (3000, 8) and len(list(tmp_path.iterdir())) == 0  # an unnamed temporary file
        np.testing.assert_array_equal(spilled[100:900], logits[100:900])
        spilled.reads.clear()
        fitted = calibrations.fit(spilled, labels)
        assert spilled.reads and max(spilled.reads) == 64
        assert sum(spilled.reads) >= 10 * 3000  # a pass per NLL evaluation: the logits are kept, not held
    in_memory = calibrations.fit(logits, labels)
    assert fitted.temperature == pytest.approx(in_memory.temperature, rel=1e-6)
    assert fitted.review_thresholds == in_memory.review_thresholds
    assert fitted.validation == pytest.approx(in_memory.validation, rel=1e-9)
    with pytest.raises(ValueError, match=r"need logits \[batch, 8\]"):
        calibrations.SpilledLogits(8).append(np.zeros((2, 7), np.float32))


def test_steps_hold_chunk_values_logits_whatever_the_classes():
    assert calibrations.chunk_rows(8) == calibrations.CHUNK_VALUES // 8
    assert calibrations.chunk_rows(5600) * 5600 <= calibrations.CHUNK_VALUES
    assert calibrations.chunk_rows(10 * calibrations.CHUNK_VALUES) == 1


# A hand-computed case: 10 products, 5 pairs of equal top-1 confidence, so 5 equal-mass bins are the pairs.
HAND_CONFIDENCES = [0.55, 0.55, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.95, 0.95]
HAND_RIGHT = [1, 0, 1, 0, 1, 1, 1, 0, 1, 1]


def test_ece_nll_brier_and_coverage_on_a_hand_computed_case():
    counts = CalibrationCounts()
    logits, labels = _binary_logits(HAND_CONFIDENCES, HAND_RIGHT)
    counts.add(logits[:3], labels[:3])  # in two batches, as the eval loop streams them
    counts.add(logits[3:], labels[3:])
    # Bins (accuracy, confidence): (.5, .55), (.5, .6), (1, .7), (.5, .8), (1, .95); each 1/5 of the products.
    assert [b["products"] for b in counts.reliability(5)] == [2] * 5
    assert counts.ece(5) == pytest.approx((0.05 + 0.1 + 0.3 + 0.3 + 0.05) / 5)
    c, r = np.array(HAND_CONFIDENCES), np.array(HAND_RIGHT)
    p_true = np.where(r == 1, c, 1 - c)
    figures = counts.figures(target_precisions=(0.95, 0.83, 0.75, 0.7, 0.6))
    assert figures["nll"] == pytest.approx(-np.mean(np.log(p_true)))
    assert figures["brier"] == pytest.approx(np.mean(2 * (1 - p_true) ** 2))  # two classes: twice the top-1 error²
    assert figures["accuracy"] == 0.7 and figures["mean_confidence"] == pytest.approx(c.mean())
    # From the most confident down: precision 2/2, 3/4, 5/6, 6/8, 7/10 at coverage .2, .4, .6, .8, 1.
    for target, coverage, threshold in ((0.95, 0.2, 0.95), (0.83, 0.6, 0.7), (0.75, 0.8, 0.6), (0.7, 1.0, 0.55)):
        name = f"{100 * target:g}"
        assert figures[f"coverage_at_{name}"] == pytest.approx(coverage), target
        # The threshold is the lowest edge of the admitted confidence's cell: 1 - c resolved to 0.2 %.
        assert threshold - 0.002 * (1 - threshold) <= figures[f"threshold_at_{name}"] <= threshold, target
        filed = counts.at_threshold(figures[f"threshold_at_{name}"])
        assert filed["auto_share"] == pytest.approx(coverage) and filed["auto_precision"] >= target
    assert counts.at_threshold(None) == {"threshold": None, "auto_share": 0.0, "review_share": 1.0, "auto_precision": None}
    assert counts.at_threshold(0.0)["auto_share"] == 1.0


def test_a_precision_above_every_products_is_not_reached():
    counts = CalibrationCounts()
    counts.add(*_binary_logits([0.9, 0.8], [0, 1]))  # the most confident product is wrong
    assert counts.coverage_at(0.99) == (0.0, None)


def test_streamed_figures_match_a_per_product_computation():
    rng = np.random.default_rng(2)
    logits, labels = _calibrated_logits(rng, 1500, classes=6, scale=2.0)
    logits *= 3
    counts = CalibrationCounts()
    for start in range(0, 1500, 128):
        counts.add(logits[start : start + 128], labels[start : start + 128])
    p = softmax(logits, -1)
    confidence, right = p.max(-1), p.argmax(-1) == labels
    order = np.argsort(confidence)
    reference = sum(len(b) / 1500 * abs(right[b].mean() - confidence[b].mean()) for b in np.array_split(order, 15))
    assert counts.ece() == pytest.approx(reference, rel=1e-9)
    assert counts.nll_sum / 1500 == pytest.approx(log_loss(labels, p, labels=range(6)))
    assert counts.brier_sum / 1500 == pytest.approx(np.mean(((p - np.eye(6)[labels]) ** 2).sum(-1)))
    # Coverage at 95 %: the largest top-confidence set with precision >= 95 %, product by product.
    descending = np.argsort(-confidence)
    precision = np.cumsum(right[descending]) / np.arange(1, 1501)
    best = np.flatnonzero(precision >= 0.95).max() + 1
    coverage, threshold = counts.coverage_at(0.95)
    assert coverage == pytest.approx(best / 1500)
    assert confidence[descending[best - 1]] * (1 - 1e-3) <= threshold <= confidence[descending[best - 1]]
    curve = counts.coverage_curve()
    assert curve[-1]["coverage"] == 1.0 and curve[-1]["precision"] == pytest.approx(right.mean())
    assert all(a["coverage"] <= b["coverage"] for a, b in zip(curve, curve[1:]))


def test_a_score_that_rounds_to_1_in_float32_keeps_its_doubt():
    counts = CalibrationCounts()
    counts.add(np.array([[80.0, 0.0], [20.0, 0.0]], np.float32), np.array([1, 0]))  # 1 - c = 1.8e-35 and 2e-9
    assert np.float32(softmax(np.array([20.0, 0.0]))[0]) == 1.0
    assert list(np.flatnonzero(counts.products)) == [int(20 / 0.002), counts.products.size - 1]
    assert counts.figures()["nll"] == pytest.approx(80 / 2, rel=1e-6)


def test_cell_edges_and_thresholds_agree():
    for cell in (0, 1, 347, 2302, 15000):
        assert first_cell_at(float(cell_edge(cell))) == cell
    # Past 1 - c = 2^-54 every edge is 1.0 in float64: a threshold of 1.0 admits all those cells.
    first_at_1 = first_cell_at(1.0)
    assert cell_edge(first_at_1) == 1.0 > cell_edge(first_at_1 - 1)
    assert first_cell_at(float(cell_edge(39999))) == first_at_1 and first_cell_at(1.5) == 40000
    assert first_cell_at(0.98) == math.ceil(-math.log(0.02) / 0.002)


def test_the_calibration_round_trips_through_the_model_assets(tmp_path):
    fitted = Calibration(temperature=2.0, target_precision=0.98, validation_products=10,
                         review_thresholds=(ReviewThreshold(0.95, 0.7, 0.8), ReviewThreshold(0.98, None, 0.0)))
    assert fitted.review_threshold == math.inf  # an unreached target: every product needs review
    calibration_format.write(fitted, str(tmp_path))
    assert calibration_format.read(str(tmp_path)) == fitted
    assert calibration_format.read(str(tmp_path / "older-model")) == Calibration()
    assert Calibration().review_threshold == 0.0  # no calibration: nothing needs review
    with pytest.raises(ValueError, match="target precision 0.99 has no review threshold"):
        Calibration(target_precision=0.99, review_thresholds=(ReviewThreshold(0.95, 0.7, 0.8),))
    with pytest.raises(ValueError, match="positive"):
        Calibration(temperature=0.0)


def test_stream_weights_are_summarised_for_right_and_wrong_products():
    rng = np.random.default_rng(3)
    s_t = rng.beta(2, 5, size=4000)
    right = rng.random(4000) < 0.7
    counts = StreamWeightCounts()
    for start in range(0, 4000, 500):
        batch = slice(start, start + 500)
        counts.add(np.stack([s_t[batch], 1 - s_t[batch]], -1), right[batch])
    summary = counts.summary()
    for kind, mask in (("right", right), ("wrong", ~right)):
        row = summary[kind]
        assert row["products"] == mask.sum()
        assert row["mean_text_weight"] == pytest.approx(s_t[mask].mean())
        assert row["mean_image_weight"] == pytest.approx(1 - s_t[mask].mean())
        for q in (10, 50, 90):
            assert row[f"text_weight_q{q}"] == pytest.approx(np.quantile(s_t[mask], q / 100), abs=2e-3)
    histogram = counts.histogram(20)
    assert sum(histogram["right"]) == right.sum() and sum(histogram["wrong"]) == (~right).sum()
    assert histogram["right"] == np.histogram(s_t[right], bins=histogram["edges"])[0].tolist()
    assert histogram["edges"][0] <= s_t.min() and s_t.max() < histogram["edges"][-1]


def test_the_stream_weight_histogram_spans_the_weights_a_head_gives():
    counts = StreamWeightCounts()
    s_t = np.linspace(0.951, 0.968, 300)  # a head whose title always weighs about 0.96
    counts.add(np.stack([s_t, 1 - s_t], -1), np.arange(300) % 3 > 0)
    histogram = counts.histogram(10)
    width = histogram["edges"][1] - histogram["edges"][0]
    # From the first occupied cell to at most one bar past the last one ([0.968, 0.969)).
    assert histogram["edges"][0] == pytest.approx(0.951) and 0.969 <= histogram["edges"][-1] <= 0.969 + width + 1e-9
    assert len(histogram["right"]) == 10 and min(histogram["right"][:9]) > 0  # spread over the bars, not one
    assert histogram["right"] == np.histogram(s_t[np.arange(300) % 3 > 0], bins=histogram["edges"])[0].tolist()
