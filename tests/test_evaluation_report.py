"""The evaluate stage's HTML report (components/evaluation_report.py): verdict, tables, products with
their photo, and the pictures (reliability diagram, coverage–precision curve, stream weights, per-class
F1) embedded as PNGs that decode to real, non-blank images. (A real browser's rendering is checked by
scripts/report_screenshot.py, with Chromium, which CI does not have.)"""
import base64
import html.parser
import io

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax

from common.calibration import Calibration, ReviewThreshold
from common.metrics import ClassCounts, StreamWeightCounts, top_k_ids
from components.evaluate import Evaluation, ModelCalibration, Verdict
from components.evaluation_report import render_html
from tests.conftest import FASHION_DIR

NAMES = [f"class {i}" for i in range(70)]  # more than the F1 chart's 60 bars: it shows both ends


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def _evaluation(with_streams: bool = True) -> Evaluation:
    """An Evaluation from the real streaming counts of an overconfident model's random predictions."""
    rng = np.random.default_rng(0)
    n, k = 3000, len(NAMES)
    logits = rng.normal(size=(n, k)) * 1.5
    labels = (softmax(logits, -1).cumsum(-1) > rng.random((n, 1))).argmax(-1)
    logits[:, 3] += 3  # class 3 predicted often: F1 spreads out
    logits *= 6
    counts = ClassCounts(k)
    counts.add(labels, top_k_ids(logits))
    calibration = ModelCalibration(Calibration(5.0, (ReviewThreshold(0.98, 0.6, 0.3),), 0.98))
    calibration.add(logits, labels)
    weights = StreamWeightCounts()
    weights.add(np.stack([s := rng.beta(5, 2, n), 1 - s], -1), logits.argmax(-1) == labels)
    photo = (FASHION_DIR / "images" / "15970.jpg").read_bytes()
    sample = {"id": "15970", "title": "Turtle <Check> Shirt", "image_jpeg": photo, "true": "class 3",
              "predicted": [("class 3", 0.9), ("class 1", 0.05)], "needs_review": True,
              **({"text_weight": 0.8, "image_weight": 0.2} if with_streams else {})}
    return Evaluation(
        metrics=counts.metrics(),
        per_class=counts.per_class(NAMES),
        confused_pairs=counts.confused_pairs(NAMES),
        confusion_matrix=counts.confusion_matrix(NAMES),
        table1={"text_right_image_wrong": {"products": 1, "percent": 25.0, "fused_right_percent": 100.0},
                "text_wrong_image_right": {"products": 0, "percent": 0.0, "fused_right_percent": None},
                "both_right": {"products": 2, "percent": 50.0, "fused_right_percent": 100.0},
                "both_wrong": {"products": 1, "percent": 25.0, "fused_right_percent": 0.0},
                "text_only_top1_accuracy": 0.75, "image_only_top1_accuracy": 0.5},
        served={"served_version": 3, "examples": 4, "served_top1_accuracy": 0.5, "candidate_top1_accuracy": 0.75,
                "served_mean_top1_score": 0.6, "candidate_mean_top1_score": 0.7},
        samples={"right": [sample], "wrong": []},
        calibration=calibration.figures(),
        curves=calibration.curves(),
        stream_weights={"summary": weights.summary(), "histogram": weights.histogram()} if with_streams else None,
    )


def _decoded(src: str) -> Image.Image:
    header, payload = src.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def _is_a_picture(image: Image.Image) -> bool:
    """Not blank: a drawn chart has axes, text and marks in several colours on much white."""
    pixels = np.asarray(image.convert("RGB"), np.int64)
    colours = len(np.unique(pixels.reshape(-1, 3) @ np.array([65536, 256, 1])))
    inked = np.mean(pixels.sum(-1) < 600)  # share of pixels that are not (near) white
    return colours > 20 and 0.01 < inked < 0.6


@pytest.fixture(scope="module")
def page():
    evaluation = _evaluation()
    parsed = _Page()
    parsed.feed(render_html(evaluation, Verdict(False, "top-1 accuracy 0.7500 < threshold 0.8000"), "model/uri"))
    return evaluation, parsed


def test_the_report_embeds_its_four_pictures_as_real_pngs(page):
    _, parsed = page
    charts = {i["alt"]: i["src"] for i in parsed.images if i.get("class") == "chart"}
    assert set(charts) == {"reliability diagram", "coverage-precision curve", "stream weights", "per-class F1"}
    for name, src in charts.items():
        image = _decoded(src)
        image.load()
        assert image.format == "PNG" and image.width >= 400 and image.height >= 250, name
        assert _is_a_picture(image), name
    # The per-class chart has a bar per shown class: taller than wide with 60 of them.
    f1 = _decoded(charts["per-class F1"])
    assert f1.height > f1.width
    blank = Image.new("RGB", (500, 400), "white")
    assert not _is_a_picture(blank)


def test_the_report_shows_verdict_calibration_streams_products_and_classes(page):
    evaluation, parsed = page
    text = " ".join(parsed.text)
    assert "Not blessed" in text and "0.7500 < threshold 0.8000" in text
    c = evaluation.calibration
    assert f"{100 * c['ece']:.2f}%" in text and f"{100 * c['ece_uncalibrated']:.2f}%" in text
    assert c["ece_uncalibrated"] > 0.3 > c["ece"]  # the fixture's model is overconfident, and T = 5 fixes most of it
    review = c["review"]
    assert f"Review threshold {review['threshold']:.4f}" in text and f"{100 * review['auto_share']:.2f}%" in text
    assert "Which stream decided" in text and "classified wrong" in text
    photos = [i["src"] for i in parsed.images if i["src"].startswith("data:image/jpeg")]
    assert photos == ["data:image/jpeg;base64," + base64.b64encode((FASHION_DIR / "images" / "15970.jpg").read_bytes()).decode()]
    assert "Turtle <Check> Shirt" in text  # escaped: it shows as text, not markup
    assert "needs review" in text and "stream weights: text 0.80, image 0.20" in text
    assert "text model right, image model wrong" in text and "served version 3" in text
    assert "75.00%" in text  # the candidate's top-1 through serving_default


def test_a_model_that_weighs_no_streams_has_no_stream_section():
    parsed = _Page()
    parsed.feed(render_html(_evaluation(with_streams=False), Verdict(True, "ok"), "model/uri"))
    assert "Which stream decided" not in " ".join(parsed.text)
    assert {i["alt"] for i in parsed.images if i.get("class") == "chart"} == {
        "reliability diagram", "coverage-precision curve", "per-class F1"}


def test_the_report_shows_the_lexical_share_and_tfidf_image_poe_beside_the_candidate():
    import dataclasses

    rng = np.random.default_rng(3)
    weights = StreamWeightCounts()
    s_lexical = rng.beta(2, 3, 200) * 0.5
    s_t = s_lexical + 0.3
    right = rng.random(200) < 0.7
    weights.add(np.stack([s_t, 1 - s_t, s_lexical], -1), right)
    routing = {"products": 200, "text_weight_mean": float(s_t.mean()), "text_weight_std": float(s_t.std()),
               "lexical_weight_mean": float(s_lexical.mean()), "lexical_weight_std": float(s_lexical.std())}
    paired = {"examples": 100, "both_right": 70, "candidate_only_right": 9, "baseline_only_right": 4, "both_wrong": 17,
              "mcnemar_p_value": 0.27}
    poe_baseline = {"model": "tfidf_image_poe", "train_products": 812, "fit_seconds": 3.2, "examples": 100,
                    "choices": {"text_c": 30.0, "image_c": 0.003}, "top1_accuracy": 0.74, "top5_accuracy": 0.97,
                    "macro_f1": 0.7, "paired": paired}
    evaluation = dataclasses.replace(
        _evaluation(), stream_weights={"summary": weights.summary(), "histogram": weights.histogram(), "routing": routing},
        poe_baseline=poe_baseline)
    evaluation.samples["right"][0].update(lexical_weight=0.35)
    parsed = _Page()
    parsed.feed(render_html(evaluation, Verdict(True, "ok"), "model/uri"))
    text = " ".join(parsed.text)
    assert "mean s_lex" in text and f"{s_lexical[right].mean():.3f}" in text and f"{s_lexical[~right].mean():.3f}" in text
    assert f"standard deviation {s_lexical.std():.3f}" in text
    assert "stream weights: text 0.80 (lexical 0.35), image 0.20" in text
    assert "Against the title and photo model a user builds" in text and "C = 30" in text and "C = 0.003" in text
    assert "74.00%" in text and "97.00%" in text and "p = 0.27" in text and "does not tell them apart" in text

    failed = dataclasses.replace(evaluation, poe_baseline={"model": "tfidf_image_poe",
                                                           "error": "the tfidf_image_poe baseline was not fitted: why"})
    parsed = _Page()
    parsed.feed(render_html(failed, Verdict(True, "ok"), "model/uri"))
    assert "the tfidf_image_poe baseline was not fitted: why" in " ".join(parsed.text)
    # A two-stream head's report has no lexical column.
    assert "mean s_lex" not in " ".join(_page_text(_evaluation()))


def _page_text(evaluation) -> list[str]:
    parsed = _Page()
    parsed.feed(render_html(evaluation, Verdict(True, "ok"), "model/uri"))
    return parsed.text
