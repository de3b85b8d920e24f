"""Classification metrics, streamed: what the evaluate stage, the benchmark and batch prediction report.

Memory is bounded by the number of classes (per-class counts, and the confused pairs that occur),
never by the number of products.
"""
from __future__ import annotations

import collections

import numpy as np

TOP_K = 5
# How much of a many-class confusion matrix is shown: the most frequent classes, the rest pooled.
CONFUSION_MATRIX_CLASSES = 20
OTHER_CLASSES = "(other classes)"
CONFUSED_PAIRS = 20


def top_k_ids(probabilities: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """[batch, classes] → [batch, min(k, classes)] class ids by decreasing probability."""
    return np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]


class ClassCounts:
    """Streaming counts for top-1/top-5 accuracy, per-class precision/recall/F1 and confusions."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.examples = 0
        self.top1 = 0
        self.top5 = 0
        self.true_positives = np.zeros(num_classes, np.int64)
        self.predicted = np.zeros(num_classes, np.int64)
        self.actual = np.zeros(num_classes, np.int64)
        self.confused = collections.Counter()  # (true id, predicted id) → count, for errors only

    def add(self, labels: np.ndarray, top_ids: np.ndarray) -> None:
        """labels [batch] class ids; top_ids [batch, k] class ids by decreasing score."""
        predicted = top_ids[:, 0]
        right = predicted == labels
        self.examples += len(labels)
        self.top1 += int(right.sum())
        self.top5 += int(np.any(top_ids[:, :TOP_K] == labels[:, None], axis=-1).sum())
        np.add.at(self.true_positives, labels[right], 1)
        np.add.at(self.predicted, predicted, 1)
        np.add.at(self.actual, labels, 1)
        pairs, counts = np.unique(labels[~right] * self.num_classes + predicted[~right], return_counts=True)
        for pair, count in zip(pairs.tolist(), counts.tolist()):
            self.confused[divmod(pair, self.num_classes)] += count

    def _present(self) -> np.ndarray:
        # Classes that occur as truth or prediction: the ones scikit-learn's macro average counts.
        return (self.actual + self.predicted) > 0

    def macro_f1(self) -> float:
        present = self._present()
        if not present.any():
            return 0.0
        f1 = 2 * self.true_positives[present] / (self.actual[present] + self.predicted[present])
        return float(np.mean(f1))

    def metrics(self) -> dict:
        if self.examples == 0:
            raise ValueError("no eval examples: the eval split is empty")
        return {
            "examples": self.examples,
            "top1_accuracy": self.top1 / self.examples,
            "top5_accuracy": self.top5 / self.examples,
            "macro_f1": self.macro_f1(),
        }

    def per_class(self, names: list[str]) -> list[dict]:
        """Precision/recall/F1 of every present class, most frequent first (0 where undefined)."""
        rows = []
        for c in np.flatnonzero(self._present()):
            tp, predicted, actual = (int(x[c]) for x in (self.true_positives, self.predicted, self.actual))
            rows.append({
                "label": names[c],
                "support": actual,
                "predicted": predicted,
                "precision": tp / predicted if predicted else 0.0,
                "recall": tp / actual if actual else 0.0,
                "f1": 2 * tp / (actual + predicted),
            })
        return sorted(rows, key=lambda r: (-r["support"], r["label"]))

    def confused_pairs(self, names: list[str], limit: int = CONFUSED_PAIRS) -> list[dict]:
        """The most frequent (true class, predicted class) errors, with their share of the true class."""
        pairs = sorted(self.confused.items(), key=lambda kv: (-kv[1], names[kv[0][0]], names[kv[0][1]]))
        return [
            {"true": names[t], "predicted": names[p], "count": n, "share_of_true": n / int(self.actual[t])}
            for (t, p), n in pairs[:limit]
        ]

    def confusion_matrix(self, names: list[str], max_classes: int = CONFUSION_MATRIX_CLASSES):
        """(categories, matrix[true][predicted]) over the most frequent true classes; every other
        class, as truth or as prediction, is pooled into OTHER_CLASSES so the counts still add up."""
        present = np.flatnonzero(self._present())
        order = sorted(present.tolist(), key=lambda c: (-int(self.actual[c]), names[c]))
        shown = order[:max_classes]
        index = {c: i for i, c in enumerate(shown)}
        pooled = len(order) > len(shown)
        size = len(shown) + int(pooled)
        matrix = np.zeros((size, size), np.int64)
        for c, i in index.items():
            matrix[i, i] += int(self.true_positives[c])
        if pooled:
            other_right = int(self.true_positives.sum()) - int(matrix.trace())
            matrix[-1, -1] += other_right
        for (t, p), n in self.confused.items():
            matrix[index.get(t, size - 1), index.get(p, size - 1)] += n
        categories = [names[c] for c in shown] + ([OTHER_CLASSES] if pooled else [])
        return categories, matrix.tolist()


class UnimodalAgreement:
    """The paper's Table 1: on each product, is the text model right and is the image model right;
    and, per cell, how often the fused candidate is right (what fusion recovers, e.g. when only
    the image model is)."""

    CELLS = (
        ("text_right_image_wrong", 1, 0),
        ("text_wrong_image_right", 0, 1),
        ("both_right", 1, 1),
        ("both_wrong", 0, 0),
    )

    def __init__(self):
        self.cells = np.zeros((2, 2), np.int64)  # [text right][image right]
        self.fused_right = np.zeros((2, 2), np.int64)

    def add(self, labels, text_predicted, image_predicted, fused_predicted) -> None:
        text_right = (text_predicted == labels).astype(np.int64)
        image_right = (image_predicted == labels).astype(np.int64)
        np.add.at(self.cells, (text_right, image_right), 1)
        np.add.at(self.fused_right, (text_right, image_right), (fused_predicted == labels).astype(np.int64))

    def table(self) -> dict:
        """{cell: {"percent": % of products, "fused_right_percent": % of the cell}} and each model's top-1."""
        total = int(self.cells.sum())
        table = {}
        for name, t, i in self.CELLS:
            n = int(self.cells[t, i])
            table[name] = {
                "products": n,
                "percent": 100.0 * n / total,
                "fused_right_percent": 100.0 * int(self.fused_right[t, i]) / n if n else None,
            }
        table["text_only_top1_accuracy"] = int(self.cells[1].sum()) / total
        table["image_only_top1_accuracy"] = int(self.cells[:, 1].sum()) / total
        return table
