"""The evaluate stage's HTML report: the verdict, the figures, calibration, Table 1, which stream
decided, confusions, per-class figures and a few eval products with their photo, title, true and
predicted class.

Pictures where people would rather look than read: the reliability diagram (before and after
calibration), the coverage–precision curve with the review threshold marked, the stream weights of
right and wrong products, per-class F1 sorted. Drawn with matplotlib (no pyplot: no global state, no
display) as PNGs inline in data: URIs, like the photos, so the report stays one self-contained file:
KFP's UI shows it as the HTML artifact, and run-local writes it next to the run.
"""
from __future__ import annotations

import base64
import io

import jinja2

from common import features
from common.metrics import OTHER_CLASSES, TARGET_PRECISIONS, precision_name
from components.evaluate import Evaluation, Verdict

# Per-class F1 bars: every class up to this many, else the lowest and highest half of it each.
F1_BARS = 60
_DPI = 100
_BEFORE, _AFTER, _RIGHT, _WRONG = "#b3261e", "#1f5fbf", "#176f2c", "#b3261e"

_TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Evaluation of {{ model }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td.name { text-align: left; }
.blessed { color: #176f2c; } .refused { color: #b3261e; }
.products { display: flex; flex-wrap: wrap; gap: 1em; }
.product { width: 15em; border: 1px solid #ccc; padding: 0.5em; }
.product img { width: 100%; image-rendering: pixelated; }
.review { color: #8a5a00; font-weight: bold; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
img.chart { max-width: 100%; border: 1px solid #ddd; }
</style></head><body>
{% macro paired_table(b) %}
<table>
<tr><th>model</th><th>top-1 accuracy</th><th>top-5 accuracy</th><th>macro-F1</th><th>right where the other is wrong</th></tr>
<tr><td class="name">candidate</td><td>{{ pct(e.metrics.top1_accuracy) }}</td><td>{{ pct(e.metrics.top5_accuracy) }}</td>
<td>{{ '%.4f' % e.metrics.macro_f1 }}</td><td>{{ b.paired.candidate_only_right }}</td></tr>
<tr><td class="name">{{ b.model }}</td><td>{{ pct(b.top1_accuracy) }}</td><td>{{ pct(b.top5_accuracy) }}</td>
<td>{{ '%.4f' % b.macro_f1 }}</td><td>{{ b.paired.baseline_only_right }}</td></tr>
</table>
<p>McNemar's exact test on the {{ b.paired.candidate_only_right + b.paired.baseline_only_right }} products on which
exactly one of them is right: p = {{ '%.3g' % b.paired.mcnemar_p_value }}{% if b.paired.mcnemar_p_value >= 0.05 %}
(at 5 %, this eval split does not tell them apart){% endif %}.</p>
{% endmacro %}
<h1>Evaluation of {{ model }}</h1>
<h2 class="{{ 'blessed' if verdict.blessed else 'refused' }}">{{ 'Blessed' if verdict.blessed else 'Not blessed' }}</h2>
<p>{{ verdict.reason }}</p>

<h2>Figures on the eval split</h2>
<table>
<tr><th>products</th><th>top-1 accuracy</th><th>top-5 accuracy</th><th>macro-F1</th></tr>
<tr><td>{{ e.metrics.examples }}</td><td>{{ pct(e.metrics.top1_accuracy) }}</td>
<td>{{ pct(e.metrics.top5_accuracy) }}</td><td>{{ '%.4f' % e.metrics.macro_f1 }}</td></tr>
</table>
{% if e.served %}
<h3>Against the served model</h3>
<table>
<tr><th>through {{ serving_signature }}, same {{ e.served.examples }} raw products</th><th>top-1 accuracy</th><th>mean top-1 score</th></tr>
<tr><td class="name">served version {{ e.served.served_version }}</td><td>{{ pct(e.served.served_top1_accuracy) }}</td><td>{{ pct(e.served.served_mean_top1_score) }}</td></tr>
<tr><td class="name">candidate</td><td>{{ pct(e.served.candidate_top1_accuracy) }}</td><td>{{ pct(e.served.candidate_mean_top1_score) }}</td></tr>
</table>
{% endif %}

{% if e.baseline and 'error' in e.baseline %}
<h3>Against the baseline a user already has</h3>
<p>{{ e.baseline.error }}</p>
{% elif e.baseline %}{% set b = e.baseline %}
<h3>Against the baseline a user already has</h3>
<p>{{ b.model }}: hashed TF-IDF of word 1–2 and character 2–5-grams + a linear SVM, fitted on the text of {{ b.train_products }}
train products in {{ '%.1f' % b.fit_seconds }} s, on the same {{ b.examples }} eval products.</p>
{{ paired_table(b) }}
{% endif %}

{% if e.poe_baseline %}{% set b = e.poe_baseline %}
<h3>Against the title and photo model a user builds</h3>
{% if 'error' in b %}<p>{{ b.error }}</p>{% else %}
<p>{{ b.model }}: the product of two logistic regressions, one on TF-IDF of the title's word and character n-grams
(C = {{ '%g' % b.choices.text_c }}), one on the frozen image encoder's features the trainer cached
(C = {{ '%g' % b.choices.image_c }}), each C chosen on the validation split; fitted on {{ b.train_products }} products in
{{ '%.1f' % b.fit_seconds }} s, on the same {{ b.examples }} eval products. Reported, not gated on.</p>
{{ paired_table(b) }}
{% endif %}{% endif %}

{% if e.calibration %}{% set c = e.calibration %}
<h2>Calibration: can the scores be trusted?</h2>
<p>Scores are softmax(logits / T) with the temperature T = {{ '%.3f' % c.temperature }} fitted on the
validation split (T = 1: not calibrated). ECE over 15 equal-mass bins of the top-1 score; coverage at a
precision: the largest share of eval products whose top-1 score clears a threshold at which they are right
that often, and that threshold.</p>
<table>
<tr><th></th><th>ECE</th><th>NLL</th><th>Brier</th><th>mean top-1 score</th>
{% for p in targets %}<th>coverage at {{ p.label }} (threshold)</th>{% endfor %}</tr>
{% for name, m in calibration_rows %}
<tr><td class="name">{{ name }}</td><td>{{ pct(m.ece) }}</td><td>{{ '%.4f' % m.nll }}</td><td>{{ '%.4f' % m.brier }}</td>
<td>{{ pct(m.mean_confidence) }}</td>
{% for p in targets %}<td>{{ pct(m['coverage_at_' ~ p.name]) }}{% if m['threshold_at_' ~ p.name] is not none %} ({{ '%.4f' % m['threshold_at_' ~ p.name] }}){% endif %}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% set r = c.review %}
<p>{% if r.target_precision is none %}The model has no review threshold: no product is sent to review.
{% elif r.threshold is none %}The review threshold for {{ pct(r.target_precision) }} precision was not reached on validation: every product is sent to review.
{% else %}Review threshold {{ '%.4f' % r.threshold }} (for {{ pct(r.target_precision) }} precision on validation): on eval it files
{{ pct(r.auto_share) }} of the products automatically{% if r.auto_precision is not none %}, {{ pct(r.auto_precision) }} of them right{% endif %},
and sends {{ pct(r.review_share) }} to review.{% endif %}</p>
<div class="figures">
{% for name, src in charts.calibration %}<img class="chart" src="{{ src }}" alt="{{ name }}">{% endfor %}
</div>
{% endif %}

{% if e.stream_weights %}{% set w = e.stream_weights.summary %}
<h2>Which stream decided</h2>
<p>The head's stream weights (s_t, s_i) per eval product: s_t near 1, the title decided; near 0, the photo.{% if lexical %}
s_t is the title's share: the text model's and the lexical expert's (s_lex, the title's word and character n-grams), together.{% endif %}</p>
<table>
<tr><th></th><th>products</th><th>mean s_t</th><th>mean s_i</th>{% if lexical %}<th>mean s_lex</th>{% endif %}<th>s_t 10 %</th><th>s_t median</th><th>s_t 90 %</th></tr>
{% for kind in ("right", "wrong") %}{% set row = w[kind] %}
<tr><td class="name">classified {{ kind }}</td><td>{{ row.products }}</td>
{% if row.products %}<td>{{ '%.3f' % row.mean_text_weight }}</td><td>{{ '%.3f' % row.mean_image_weight }}</td>
{% if lexical %}<td>{{ '%.3f' % row.mean_lexical_weight }}</td>{% endif %}
<td>{{ '%.3f' % row.text_weight_q10 }}</td><td>{{ '%.3f' % row.text_weight_q50 }}</td><td>{{ '%.3f' % row.text_weight_q90 }}</td>
{% else %}<td></td><td></td>{% if lexical %}<td></td>{% endif %}<td></td><td></td><td></td>{% endif %}</tr>
{% endfor %}
</table>
{% set r = e.stream_weights.get('routing') or {} %}{% if r.get('products') %}
<p>Does the head route? s_t varies over the products by a standard deviation of {{ '%.3f' % r.text_weight_std }}
(mean {{ '%.3f' % r.text_weight_mean }}).{% if 'lexical_weight_mean' in r %} The lexical expert's share s_lex: mean
{{ '%.3f' % r.lexical_weight_mean }}, standard deviation {{ '%.3f' % r.lexical_weight_std }}.{% endif %}{% if 'routing_auc' in r %} On the {{ r.text_decides_products }}
products only the text model gets right, mean s_t
{{ '%.3f' % r.text_decides_mean_text_weight if r.text_decides_mean_text_weight is not none else '–' }}; on the
{{ r.image_decides_products }} only the image model gets right,
{{ '%.3f' % r.image_decides_mean_text_weight if r.image_decides_mean_text_weight is not none else '–' }}: routing AUC
{{ '%.2f' % r.routing_auc if r.routing_auc is not none else '–' }} (0.5: the same weights whichever stream is right;
1: always more weight on the right one).{% endif %}</p>
{% endif %}
{% for name, src in charts.streams %}<img class="chart" src="{{ src }}" alt="{{ name }}">{% endfor %}
{% endif %}

{% if e.table1 %}
<h2>Table 1: top-1 errors of the unimodal models</h2>
<table>
<tr><th></th><th>% of products</th><th>fused model right (% of the row)</th></tr>
{% for key, label in table1_rows %}{% set cell = e.table1[key] %}
<tr><td class="name">{{ label }}</td><td>{{ '%.2f' % cell.percent }}</td>
<td>{{ '%.2f' % cell.fused_right_percent if cell.fused_right_percent is not none else '–' }}</td></tr>
{% endfor %}
</table>
<p>Top-1 accuracy: text_only {{ pct(e.table1.text_only_top1_accuracy) }},
image_only {{ pct(e.table1.image_only_top1_accuracy) }}, fused {{ pct(e.metrics.top1_accuracy) }}.</p>
{% endif %}

<h2>Most confused classes</h2>
{% if e.confused_pairs %}
<table>
<tr><th>true class</th><th>predicted as</th><th>products</th><th>% of the true class</th></tr>
{% for p in e.confused_pairs %}
<tr><td class="name">{{ p.true }}</td><td class="name">{{ p.predicted }}</td><td>{{ p.count }}</td><td>{{ pct(p.share_of_true) }}</td></tr>
{% endfor %}
</table>
{% else %}<p>No errors.</p>{% endif %}

<h2>Confusion matrix{% if categories[-1] == other %} of the {{ categories|length - 1 }} most frequent classes{% endif %}</h2>
<p>Rows: true class; columns: predicted class.</p>
<table>
<tr><th></th>{% for c in categories %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in matrix %}
<tr><th>{{ categories[loop.index0] }}</th>{% for n in row %}<td>{{ n if n else '' }}</td>{% endfor %}</tr>
{% endfor %}
</table>

<h2>Eval products</h2>
{% for kind, title in (("right", "Classified right"), ("wrong", "Classified wrong")) %}
<h3>{{ title }}</h3>
<div class="products">
{% for s in e.samples[kind] %}
<div class="product"><img src="data:image/jpeg;base64,{{ b64(s.image_jpeg) }}" alt="product {{ s.id }}">
<div><b>{{ s.title }}</b> ({{ s.id }})</div>
<div>true: {{ s.true }}</div>
<div>predicted: {% for name, score in s.predicted %}{{ name }} {{ pct(score) }}{{ ', ' if not loop.last }}{% endfor %}</div>
{% if s.needs_review %}<div class="review">needs review</div>{% endif %}
{% if s.text_weight is defined %}<div>stream weights: text {{ '%.2f' % s.text_weight }}{% if s.lexical_weight is defined %} (lexical {{ '%.2f' % s.lexical_weight }}){% endif %}, image {{ '%.2f' % s.image_weight }}</div>{% endif %}
</div>
{% else %}<p>None.</p>
{% endfor %}
</div>
{% endfor %}

<h2>Per class</h2>
{% for name, src in charts.per_class %}<img class="chart" src="{{ src }}" alt="{{ name }}">{% endfor %}
<table>
<tr><th>class</th><th>products</th><th>predicted</th><th>precision</th><th>recall</th><th>F1</th></tr>
{% for r in e.per_class %}
<tr><td class="name">{{ r.label }}</td><td>{{ r.support }}</td><td>{{ r.predicted }}</td>
<td>{{ '%.3f' % r.precision }}</td><td>{{ '%.3f' % r.recall }}</td><td>{{ '%.3f' % r.f1 }}</td></tr>
{% endfor %}
</table>
</body></html>
"""

TABLE1_ROWS = (
    ("text_right_image_wrong", "text model right, image model wrong"),
    ("text_wrong_image_right", "text model wrong, image model right"),
    ("both_right", "both right"),
    ("both_wrong", "both wrong"),
)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots()


def reliability_diagram(curves: dict, calibration: dict) -> str:
    """Accuracy against mean top-1 score per equal-mass bin, before and after the temperature; a
    calibrated model's points lie on the diagonal."""
    figure, axes = _figure(5, 4.6)
    axes.plot([0, 1], [0, 1], color="#888", linestyle="--", linewidth=1, label="calibrated")
    for key, color, label, ece in (
        ("reliability_uncalibrated", _BEFORE, "before (T = 1)", calibration["ece_uncalibrated"]),
        ("reliability", _AFTER, f"after (T = {calibration['temperature']:.2f})", calibration["ece"]),
    ):
        bins = curves[key]
        axes.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", color=color,
                  label=f"{label}: ECE {100 * ece:.2f} %")
    axes.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="mean top-1 score in the bin", ylabel="accuracy in the bin",
             title="Reliability (15 equal-mass bins)")
    axes.legend(loc="upper left", fontsize="small")
    return _png(figure)


def coverage_precision_curve(curves: dict, calibration: dict) -> str:
    """Top-1 precision of the products filed automatically against their share, as the threshold
    falls; the target precisions and the model's review threshold marked."""
    figure, axes = _figure(5, 4.6)
    points = curves["coverage_precision"]
    axes.plot([p["coverage"] for p in points], [p["precision"] for p in points], color=_AFTER)
    for target in TARGET_PRECISIONS:
        axes.axhline(target, color="#888", linewidth=0.8, linestyle=":")
        axes.text(0.01, target, f"{100 * target:g} %", fontsize="x-small", va="bottom", color="#555")
    review = calibration["review"]
    if review["threshold"] is not None and review["auto_precision"] is not None:
        axes.plot([review["auto_share"]], [review["auto_precision"]], marker="D", markersize=9, color=_BEFORE,
                  linestyle="none", label=f"review threshold {review['threshold']:.3f}: "
                                          f"{100 * review['auto_share']:.1f} % filed")
        axes.legend(loc="lower left", fontsize="small")
    low = min([p["precision"] for p in points] + [min(TARGET_PRECISIONS)])
    axes.set(xlim=(0, 1.01), ylim=(max(0.0, low - 0.02), 1.005), xlabel="coverage (share filed automatically)",
             ylabel="top-1 precision of the filed products", title="Coverage against precision")
    return _png(figure)


def per_class_f1_chart(per_class: list[dict], limit: int = F1_BARS) -> str:
    """Per-class F1, sorted, one bar per class (with many classes, the lowest and highest)."""
    rows = sorted(per_class, key=lambda r: (-r["f1"], r["label"]))
    title = "F1 per class"
    if len(rows) > limit:
        rows = rows[: limit // 2] + [None] + rows[-(limit // 2):]
        title += f" (the {limit // 2} highest and lowest of {len(per_class)})"
    figure, axes = _figure(6, 0.6 + 0.18 * len(rows))
    positions = range(len(rows))[::-1]
    axes.barh(list(positions), [r["f1"] if r else 0 for r in rows], color=_AFTER, height=0.7)
    axes.set_yticks(list(positions), [f"{r['label']} ({r['support']})" if r else "…" for r in rows], fontsize="x-small")
    axes.set(xlim=(0, 1), xlabel="F1 (eval products in the class)", title=title)
    return _png(figure)


def stream_weight_histogram(stream_weights: dict) -> str:
    """The text stream's weight s_t on eval products classified right and wrong (shares of each)."""
    histogram = stream_weights["histogram"]
    edges = histogram["edges"]
    width = edges[1] - edges[0]
    figure, axes = _figure(6, 3.2)
    for kind, color, offset in (("right", _RIGHT, 0.0), ("wrong", _WRONG, 0.5)):
        counts = histogram[kind]
        total = sum(counts) or 1
        axes.bar([e + offset * width for e in edges[:-1]], [c / total for c in counts], width=width / 2,
                 align="edge", color=color, label=f"classified {kind} ({sum(counts)})")
    axes.set(xlim=(edges[0], edges[-1]), xlabel="s_t: weight of the title (1 - s_i for softmax heads)",
             ylabel="share of the products", title="Which stream decided")
    axes.legend(fontsize="small")
    return _png(figure)


def charts(evaluation: Evaluation) -> dict:
    """{section: [(name, PNG data: URI)]}: every picture of the report."""
    drawn = {"calibration": [], "streams": [], "per_class": []}
    if evaluation.calibration and evaluation.curves:
        drawn["calibration"] = [
            ("reliability diagram", reliability_diagram(evaluation.curves, evaluation.calibration)),
            ("coverage-precision curve", coverage_precision_curve(evaluation.curves, evaluation.calibration)),
        ]
    if evaluation.stream_weights:
        drawn["streams"] = [("stream weights", stream_weight_histogram(evaluation.stream_weights))]
    if evaluation.per_class:
        drawn["per_class"] = [("per-class F1", per_class_f1_chart(evaluation.per_class))]
    return drawn


def render_html(evaluation: Evaluation, verdict: Verdict, model: str) -> str:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    categories, matrix = evaluation.confusion_matrix
    calibration_rows = []
    if evaluation.calibration:
        c = evaluation.calibration
        uncalibrated = {k: c[f"{k}_uncalibrated"] for k in ("ece", "nll", "brier", "mean_confidence")}
        for p in TARGET_PRECISIONS:
            uncalibrated[f"coverage_at_{precision_name(p)}"] = c[f"coverage_at_{precision_name(p)}_uncalibrated"]
            uncalibrated[f"threshold_at_{precision_name(p)}"] = None
        calibration_rows = [("candidate, uncalibrated (T = 1)", uncalibrated), ("candidate, as served", c)]
        calibration_rows += [(f"{stage}, as served", m) for stage, m in (evaluation.unimodal_calibration or {}).items()]
    return environment.from_string(_TEMPLATE).render(
        e=evaluation,
        verdict=verdict,
        model=model,
        categories=categories,
        matrix=matrix,
        other=OTHER_CLASSES,
        table1_rows=TABLE1_ROWS,
        serving_signature=features.SERVING_SIGNATURE,
        targets=[{"name": precision_name(p), "label": f"{100 * p:g} %"} for p in TARGET_PRECISIONS],
        calibration_rows=calibration_rows,
        charts=charts(evaluation),
        lexical=any("mean_lexical_weight" in row for row in (evaluation.stream_weights or {}).get("summary", {}).values()
                    if isinstance(row, dict)),
        pct=lambda x: f"{100 * x:.2f}%",
        b64=lambda data: base64.b64encode(data).decode("ascii"),
    )
