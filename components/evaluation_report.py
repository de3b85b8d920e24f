"""The evaluate stage's HTML report: the verdict, the figures, Table 1, confusions, per-class
figures and a few eval products with their photo, title, true and predicted class.

One self-contained file (photos inline as data: URIs): KFP's UI shows it as the HTML artifact, and
run-local writes it next to the run.
"""
from __future__ import annotations

import base64

import jinja2

from common.metrics import OTHER_CLASSES
from components.evaluate import Evaluation, Verdict
from common import features

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
</style></head><body>
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
<tr><th>through {{ serving_signature }}, same {{ e.served.examples }} products</th><th>top-1 accuracy</th></tr>
<tr><td class="name">served version {{ e.served.served_version }}</td><td>{{ pct(e.served.served_top1_accuracy) }}</td></tr>
<tr><td class="name">candidate</td><td>{{ pct(e.served.candidate_top1_accuracy) }}</td></tr>
</table>
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
</div>
{% else %}<p>None.</p>
{% endfor %}
</div>
{% endfor %}

<h2>Per class</h2>
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


def render_html(evaluation: Evaluation, verdict: Verdict, model: str) -> str:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    categories, matrix = evaluation.confusion_matrix
    return environment.from_string(_TEMPLATE).render(
        e=evaluation,
        verdict=verdict,
        model=model,
        categories=categories,
        matrix=matrix,
        other=OTHER_CLASSES,
        table1_rows=TABLE1_ROWS,
        serving_signature=features.SERVING_SIGNATURE,
        pct=lambda x: f"{100 * x:.2f}%",
        b64=lambda data: base64.b64encode(data).decode("ascii"),
    )
