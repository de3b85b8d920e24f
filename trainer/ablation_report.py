"""The benchmark's Markdown: Table 1 (unimodal error analysis), Tables 2/3 (every model), headroom, times."""
from __future__ import annotations

from common import features, poe

# The paper's top-1 accuracy on its own catalog (1.5M products, 5.6K classes; ../shared/HANET.md).
PAPER_TOP1 = {
    features.IMAGE_ONLY: 66.73,
    features.TEXT_ONLY: 83.53,
    features.DECISION_LEVEL: 83.60,
    features.POLICY: 83.74,
    features.CONCAT: 83.80,
    features.KEYLESS: 84.55,
    features.HANET: 84.82,
}
PAPER_TABLE1 = {
    "text_right_image_wrong": 20.49,
    "text_wrong_image_right": 3.68,
    "both_right": 63.05,
    "both_wrong": 12.78,
}


def _pm(stat: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def ranking(models: dict) -> list[tuple[str, float, float]]:
    """(model, mean top-1, std) from best to worst."""
    rows = [(name, m["top1_accuracy"]["mean"], m["top1_accuracy"]["std"]) for name, m in models.items()]
    return sorted(rows, key=lambda r: -r[1])


def _model_rows(tune: str, models: dict) -> list[str]:
    lines = []
    for name, m in models.items():
        headroom = m.get("headroom")
        recovered = _pm(headroom["recovered_percent"], 1.0, 1) if headroom else "–"
        net = _pm(headroom["net_gain_percent_of_headroom"], 1.0, 1) if headroom else "–"
        paper = f"{PAPER_TOP1[name]:.2f}" if name in PAPER_TOP1 else "–"
        lr = f"{m['learning_rate']:g}" + (f" ({m['decision_training']})" if "decision_training" in m else "")
        lines.append(
            f"| {name} | {tune} | {_pm(m['top1_accuracy'])} | {_pm(m['top5_accuracy'])} | {_pm(m['macro_f1'])} | "
            f"{_pm(m['ece'])} | {_pm(m['coverage_at_98'])} | "
            f"{_pm(m['validation_top1_accuracy'])} | {paper} | {recovered} | {net} | {lr} | "
            f"{m['train_seconds']['mean']:.1f} |"
        )
    return lines


def render(summary: dict, context: dict) -> str:
    tunes = summary["tunes"]
    first = next(iter(tunes.values()))
    lines = [f"# HANet experiments on `{context['catalog']}` (label `{context['label_column']}`)", ""]
    lines += [f"- {key}: {value}" for key, value in context["facts"].items()]
    lines += ["", f"Figures are mean ± std over {len(first['seeds'])} seeds ({', '.join(map(str, first['seeds']))}) "
              f"on the eval split ({first['examples']} products), in %.", ""]
    for tune, tune_summary in tunes.items():
        if "table1" in tune_summary:
            lines += [f"## Table 1, tune {tune}: unimodal error analysis (text_only × image_only, % of eval products)",
                      "", "| cell | this catalog | paper |", "|---|---|---|"]
            for cell, paper in PAPER_TABLE1.items():
                lines.append(f"| {cell.replace('_', ' ')} | {_pm(tune_summary['table1'][cell], 1.0)} | {paper:.2f} |")
            lines.append("")
    lines += ["## Tables 2 and 3: every model", "",
              "| model | tune | top-1 | top-5 | macro-F1 | ECE | coverage at 98 % | validation top-1 | paper top-1 | "
              "headroom recovered | net gain, % of headroom | lr | train time (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary.get("baseline", {}).items():
        lines.append(f"| {name} | {'text+image' if name == poe.TFIDF_IMAGE_POE else 'text'} | {_pm(row['top1_accuracy'])} | {_pm(row['top5_accuracy'])} | "
                     f"{_pm(row['macro_f1'])} | – | – | {_pm(row['validation_top1_accuracy'])} | – | – | – | – | "
                     f"{row['train_seconds']['mean']:.1f} |")
    for tune, tune_summary in tunes.items():
        lines += _model_rows(tune, tune_summary["models"])
    lines += ["",
              "*ECE* (15 equal-mass bins) and *coverage at 98 %* (the share of eval products whose calibrated top-1 "
              "score clears the threshold at which top-1 precision reaches 98 %) after a temperature fitted on validation, "
              "as the exported model applies it. *tfidf_svm*: hashed TF-IDF of word 1–2 and character 2–5-grams + a linear multiclass SVM by SGD on the text the neural models read "
              "(the title, with any extra text columns joined) and splits (one deterministic fit, so no spread). "
              "*tfidf_image_poe*: the product of two LogisticRegression experts, TF-IDF of the same n-grams and the frozen "
              "encoder's image features, C of each chosen on validation (argmax of log p_text + log p_image). *Headroom recovered*: of the eval products the text "
              "model gets wrong and the image model right (Table 1's headroom, per tune), the % the model gets right. "
              "*Net gain*: (model top-1 − text_only top-1) / headroom, which also charges what the model loses where "
              "only the text model was right.", ""]
    routed = [(tune, name, m) for tune, t in tunes.items() for name, m in t["models"].items() if "text_weight_std" in m]
    if routed:
        lines += ["## Which stream decided", "", "| model | tune | std of s_t over eval products | routing AUC |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {tune} | {_pm(m['text_weight_std'], 1.0, 3)} | "
                  f"{_pm(m['routing_auc'], 1.0, 3) if 'routing_auc' in m else '–'} |" for tune, name, m in routed]
        lines += ["", "*Routing AUC*: over the eval products only one unimodal model gets right, the probability that "
                  "one only the text model gets right has a higher text weight s_t than one only the image model gets "
                  "right (0.5: weights that do not depend on the product).", ""]
    lines += ["## Ordering", ""]
    for tune, tune_summary in tunes.items():
        models = dict(tune_summary["models"], **summary.get("baseline", {}))
        order = ranking(models)
        lines += [f"Tune {tune}, by mean top-1: " + " > ".join(f"{n} ({a * 100:.2f})" for n, a, _ in order), ""]
        close = [f"{a} vs {b}" for (a, ma, sa), (b, mb, sb) in zip(order, order[1:]) if ma - mb < max(sa, sb)]
        if close:
            lines += ["Neighbours closer than one standard deviation (not separated by these seeds): "
                      + ", ".join(close) + ".", ""]
    lines += ["Paper: hanet > keyless > concat > policy ≈ decision_level > text_only ≫ image_only.", ""]
    return "\n".join(lines)
