"""The HTML summary of a batch prediction run, for the pipelines UI: counts, the class distribution of
the predictions, the quarantine by reason and, against a label column, the figures. Self-contained
(inline CSS, no scripts): the UI shows an HTML artifact in a sandboxed frame."""
from __future__ import annotations

import html

# Classes listed in the distribution; the rest are summed in one line so the page stays small.
MAX_CLASSES_SHOWN = 50

_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #4a7bd0; height: 0.8em; display: inline-block; }
"""


def _rows(pairs, total: int) -> str:
    widest = max((n for _, n in pairs), default=0) or 1
    return "".join(
        f"<tr><td>{html.escape(str(name))}</td><td class='n'>{n:,}</td>"
        f"<td class='n'>{100 * n / total:.1f}%</td>"
        f"<td><span class='bar' style='width:{200 * n // widest}px'></span></td></tr>"
        for name, n in pairs
    )


def render_html(metrics: dict) -> str:
    """The page of one run's metrics (components.batch_predict.job's metrics.json)."""
    rows_in, predicted = metrics["rows_in"], metrics["predicted"]
    quarantined = sum(metrics["quarantined"].values())
    version = metrics["model_version"]
    model = html.escape(metrics["model"]) + (f" (version {version})" if version is not None else "")
    counts = [("rows in", rows_in), ("predicted", predicted), ("quarantined", quarantined)]
    if "needs_review" in metrics:
        counts.append(("needs review", metrics["needs_review"]))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Batch prediction</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h2>Batch prediction</h2>",
        f"<p>Model: <code>{model}</code>; top {metrics['top_k']} classes per product, {metrics['output_format']}.</p>",
        "<table>" + "".join(f"<tr><td>{k}</td><td class='n'>{v:,}</td></tr>" for k, v in counts) + "</table>",
    ]
    evaluation = metrics.get("evaluation")
    if evaluation and evaluation["examples"]:
        source = evaluation["label_ids_from"].replace("_", " ")
        parts.append(
            f"<h3>Against the column {html.escape(evaluation['label_column'])}</h3><table>"
            f"<tr><td>top-1 accuracy</td><td class='n'>{evaluation['top1_accuracy']:.4f}</td></tr>"
            f"<tr><td>top-5 accuracy</td><td class='n'>{evaluation['top5_accuracy']:.4f}</td></tr>"
            f"<tr><td>macro-F1</td><td class='n'>{evaluation['macro_f1']:.4f}</td></tr>"
            f"<tr><td>products</td><td class='n'>{evaluation['examples']:,}</td></tr></table>"
            f"<p>Classes matched by name ({html.escape(source)})"
            + (
                f"; labels the model does not know, counted as wrong: {sum(evaluation['labels_unknown_to_model'].values()):,} products"
                if evaluation.get("labels_unknown_to_model")
                else ""
            )
            + ".</p>"
        )
    classes = list(metrics["predicted_classes"].items())
    shown = classes[:MAX_CLASSES_SHOWN]
    if len(classes) > len(shown):
        shown.append((f"({len(classes) - len(shown)} other classes)", sum(n for _, n in classes[len(shown):])))
    parts.append(f"<h3>Predicted classes (top-1), {len(classes)} classes</h3>")
    parts.append("<table><tr><th>class</th><th>products</th><th>share</th><th></th></tr>" + _rows(shown, predicted or 1) + "</table>")
    parts.append("<h3>Quarantined rows by reason</h3>")
    if quarantined:
        parts.append(
            "<table><tr><th>reason</th><th>rows</th><th>of rows in</th><th></th></tr>"
            + _rows(sorted(metrics["quarantined"].items(), key=lambda kv: -kv[1]), rows_in)
            + "</table>"
        )
    else:
        parts.append("<p>None.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
