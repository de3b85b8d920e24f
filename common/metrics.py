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
    """[batch, classes] → [batch, min(k, classes)] class ids by decreasing probability, ties by class id."""
    negated = -np.asarray(probabilities)
    k = min(k, negated.shape[-1])
    if not k or negated.shape[-1] <= 8 * k:  # few classes: the full sort is cheap already
        return np.argsort(negated, axis=-1, kind="stable")[:, :k]
    # A full sort of every row was 28 ms a batch of 64 products × 5,249 classes, four times a batch in the
    # evaluate stage (14 CPU s of its 733 at 40K products). So: every class at or above a row's k-th score
    # (a partition), then a stable sort of those alone, in class order: the full sort's first k, ties
    # included. Rows with more than k such classes (a tie at the k-th place) or NaNs take the full sort.
    kth = np.partition(negated, k - 1, axis=-1)[:, k - 1:k]
    candidates = negated <= kth
    exact = candidates.sum(axis=-1) == k
    top = np.empty([len(negated), k], np.intp)
    if exact.any():
        columns = np.nonzero(candidates[exact])[1].reshape(-1, k)  # each row's k classes, in class order
        order = np.argsort(np.take_along_axis(negated[exact], columns, -1), axis=-1, kind="stable")
        top[exact] = np.take_along_axis(columns, order, -1)
    if not exact.all():
        top[~exact] = np.argsort(negated[~exact], axis=-1, kind="stable")[:, :k]
    return top


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


class PairedCounts:
    """Two models on the same products (the candidate and a baseline): how many each gets right where
    the other is wrong, and whether that difference could be chance. Only the products on which they
    disagree tell them apart: McNemar's exact test, a two-sided binomial test of the candidate-only
    count against half of the disagreements."""

    def __init__(self):
        self.cells = np.zeros((2, 2), np.int64)  # [candidate right][baseline right]

    def add(self, candidate_right: np.ndarray, baseline_right: np.ndarray) -> None:
        np.add.at(self.cells, (np.asarray(candidate_right, np.int64), np.asarray(baseline_right, np.int64)), 1)

    def figures(self) -> dict:
        from scipy.stats import binomtest

        candidate_only, baseline_only = int(self.cells[1, 0]), int(self.cells[0, 1])
        disagreements = candidate_only + baseline_only
        return {
            "examples": int(self.cells.sum()),
            "both_right": int(self.cells[1, 1]),
            "candidate_only_right": candidate_only,
            "baseline_only_right": baseline_only,
            "both_wrong": int(self.cells[0, 0]),
            # No disagreement: nothing tells the two apart, which is p = 1.
            "mcnemar_p_value": float(binomtest(candidate_only, disagreements).pvalue) if disagreements else 1.0,
        }


# ---- Calibration: are the scores probabilities? ------------------------------------------------

# Top-1 confidence c is histogrammed on the doubt scale d = -ln(1 - c), in cells of width DOUBT_CELL:
# a cell is 0.2 % of 1 - c wide at every confidence, so 0.999 and 0.9999 stay apart (a uniform grid in c
# would pool every overconfident product in its last cell), and the memory is DOUBT_CELLS cells
# whatever the number of products. 1 - c below e^-DOUBT_MAX (1.8e-35) is pooled in the last cell.
DOUBT_CELL = 0.002
DOUBT_MAX = 80.0
DOUBT_CELLS = int(round(DOUBT_MAX / DOUBT_CELL))
CALIBRATION_BINS = 15  # equal-mass bins of the expected calibration error
TARGET_PRECISIONS = (0.95, 0.98, 0.99)  # the catalog team's table: coverage at these top-1 precisions
CURVE_POINTS = 200  # points of the coverage–precision curve kept for the report


def precision_name(target: float) -> str:
    """0.98 → "98": the suffix of coverage_at_98 and threshold_at_98."""
    return f"{100 * target:g}".replace(".", "_")


def cell_edge(cell: int | np.ndarray) -> float | np.ndarray:
    """The lowest confidence of a cell: c = 1 - exp(-cell · DOUBT_CELL)."""
    return -np.expm1(-np.asarray(cell, np.float64) * DOUBT_CELL)


# From this cell on, edges are 1.0 in float64 (1 - c < 2^-54): a threshold of 1.0 admits them.
_FIRST_CELL_AT_1 = int(np.argmax(cell_edge(np.arange(DOUBT_CELLS)) == 1.0))


def first_cell_at(threshold: float) -> int:
    """The first cell whose confidences all clear `threshold` (c ≥ threshold); DOUBT_CELLS if none."""
    if threshold <= 0:
        return 0
    if threshold > 1:
        return DOUBT_CELLS
    if threshold == 1:
        return _FIRST_CELL_AT_1
    return min(_FIRST_CELL_AT_1, int(np.ceil(-np.log1p(-threshold) / DOUBT_CELL - 1e-9)))


class CalibrationCounts:
    """Streaming calibration figures of class logits [batch, classes] against labels [batch]:

    - NLL = mean_n -ln p(y_n), and the Brier score = mean_n Σ_c (p_c - [c = y_n])² (Brier 1950, the
      multi-class form, in [0, 2]): exact running sums;
    - ECE = Σ_b (n_b / N) |acc_b - conf_b| over CALIBRATION_BINS equal-mass bins of the top-1
      confidence (Guo et al. 2017; equal-mass bins as Nixon et al. 2019);
    - coverage at precision P: the largest share of products whose top-1 confidence c ≥ t for a
      threshold t at which their top-1 precision is ≥ P, and that t (the least confidence admitted).

    The last two come from a histogram of (products, right, Σ c) per cell of the doubt scale (see
    DOUBT_CELL), so memory is DOUBT_CELLS cells, not products. Bin means are exact for the products
    each bin holds; bin edges fall on cell edges, so a bin may hold up to one cell's products more or
    less than N/15 (products tied at one confidence can never be split anyway). Coverage and precision
    are exact for every threshold on a cell edge; the best threshold is searched on those edges only,
    1 - c resolved to 0.2 %. p is computed in float64 from the logits, so a float32 score of 1.0 still
    has its doubt.
    """

    def __init__(self):
        self.products = np.zeros(DOUBT_CELLS, np.int64)
        self.right = np.zeros(DOUBT_CELLS, np.int64)
        self.confidence = np.zeros(DOUBT_CELLS, np.float64)
        self.examples = 0
        self.nll_sum = 0.0
        self.brier_sum = 0.0

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """logits [batch, classes] (divide by the temperature first for calibrated figures); labels [batch]."""
        from scipy.special import log_softmax, logsumexp

        log_p = log_softmax(np.asarray(logits, np.float64), axis=-1)
        labels = np.asarray(labels)
        rows = np.arange(len(labels))
        top = np.argmax(log_p, axis=-1)
        others = log_p.copy()
        others[rows, top] = -np.inf
        log_doubt = logsumexp(others, axis=-1)  # ln(1 - c), precise where c rounds to 1
        cells = np.minimum(np.floor(-log_doubt / DOUBT_CELL), DOUBT_CELLS - 1).astype(np.int64)
        np.add.at(self.products, cells, 1)
        np.add.at(self.right, cells, (top == labels).astype(np.int64))
        np.add.at(self.confidence, cells, -np.expm1(log_doubt))
        p = np.exp(log_p)
        self.examples += len(labels)
        self.nll_sum += float(-log_p[rows, labels].sum())
        self.brier_sum += float(((p**2).sum(-1) - 2 * p[rows, labels] + 1).sum())

    def reliability(self, bins: int = CALIBRATION_BINS) -> list[dict]:
        """Equal-mass bins by increasing confidence: {products, confidence (mean), accuracy}."""
        cumulative = np.cumsum(self.products)
        # Bin b ends with the cell where the running count first reaches b · N / bins.
        ends = np.unique(np.searchsorted(cumulative, np.arange(1, bins + 1) * self.examples / bins - 1e-9))
        ends = np.minimum(ends, DOUBT_CELLS - 1)
        starts = np.concatenate([[0], ends[:-1] + 1])
        rows = []
        for products, right, confidence in zip(*(np.add.reduceat(x, starts) for x in
                                                  (self.products, self.right, self.confidence))):
            if products:
                rows.append({"products": int(products), "confidence": float(confidence / products),
                             "accuracy": float(right / products)})
        return rows

    def ece(self, bins: int = CALIBRATION_BINS) -> float:
        return sum(b["products"] * abs(b["accuracy"] - b["confidence"]) for b in self.reliability(bins)) / self.examples

    def _suffixes(self):
        """Over the non-empty cells by decreasing confidence: (first cell, products and right at or above it)."""
        cells = np.flatnonzero(self.products)[::-1]
        return cells, np.cumsum(self.products[cells]), np.cumsum(self.right[cells])

    def coverage_at(self, target: float) -> tuple[float, float | None]:
        """(coverage, threshold) at top-1 precision ≥ target; (0.0, None) when no threshold reaches it."""
        cells, products, right = self._suffixes()
        reached = np.flatnonzero(right >= target * products - 1e-9)
        if not len(reached):
            return 0.0, None
        last = reached[-1]  # the lowest threshold that still reaches the target
        return float(products[last] / self.examples), float(cell_edge(cells[last]))

    def at_threshold(self, threshold: float | None) -> dict:
        """What a threshold does: the share of products it files automatically (c ≥ threshold) and
        their precision; the rest go to review. None: every product goes to review. Exact for a threshold
        on a cell edge (what `coverage_at` gives); otherwise products in its cell count as reviewed."""
        first = DOUBT_CELLS if threshold is None else first_cell_at(threshold)
        auto, right = int(self.products[first:].sum()), int(self.right[first:].sum())
        return {"threshold": threshold, "auto_share": auto / self.examples, "review_share": 1 - auto / self.examples,
                "auto_precision": right / auto if auto else None}

    def coverage_curve(self, points: int = CURVE_POINTS) -> list[dict]:
        """{threshold, coverage, precision} from the most confident products down to all of them,
        thinned to about `points` evenly spread in coverage."""
        cells, products, right = self._suffixes()
        if not len(cells):
            return []
        keep = np.unique(np.searchsorted(products, np.linspace(products[0], products[-1], points) - 1e-9))
        return [{"threshold": float(cell_edge(cells[i])), "coverage": float(products[i] / self.examples),
                 "precision": float(right[i] / products[i])} for i in keep]

    def figures(self, target_precisions=TARGET_PRECISIONS, bins: int = CALIBRATION_BINS) -> dict:
        """{accuracy, mean_confidence, ece, nll, brier, coverage_at_<P>, threshold_at_<P>}."""
        if self.examples == 0:
            raise ValueError("no products: the split is empty")
        figures = {
            "accuracy": int(self.right.sum()) / self.examples,
            "mean_confidence": float(self.confidence.sum() / self.examples),
            "ece": self.ece(bins),
            "nll": self.nll_sum / self.examples,
            "brier": self.brier_sum / self.examples,
        }
        for target in target_precisions:
            coverage, threshold = self.coverage_at(target)
            figures[f"coverage_at_{precision_name(target)}"] = coverage
            figures[f"threshold_at_{precision_name(target)}"] = threshold
        return figures


# ---- Which stream decided ----------------------------------------------------------------------

WEIGHT_CELLS = 1000  # cells of [0, 1] for the stream weights: quantiles to 0.001
WEIGHT_QUANTILES = (0.1, 0.5, 0.9)


class StreamWeightCounts:
    """Streaming distribution of the text stream's weight s_t (and means of s_t, s_i) on products
    the model gets right and wrong. s_t is histogrammed on [0, 1] (the softmax-normalised heads' and
    the policy's range; values outside, from un-normalised heads, are pooled in the end cells and
    counted), so memory is 2 × WEIGHT_CELLS; quantiles are resolved to 1 / WEIGHT_CELLS."""

    KINDS = ("right", "wrong")

    def __init__(self):
        self.cells = np.zeros((2, WEIGHT_CELLS), np.int64)  # [wrong, right]
        self.sums = np.zeros((2, 3), np.float64)  # [wrong, right] × (s_t, s_i, s_lexical)
        self.outside = 0
        self.lexical = False  # whether the weights had the expert fusions' third column

    def add(self, stream_weights: np.ndarray, right: np.ndarray) -> None:
        """stream_weights [batch, 2] (s_t, s_i), or [batch, 3] with the lexical expert's share (part of
        s_t) third; right [batch] bool."""
        weights = np.asarray(stream_weights, np.float64)
        if weights.ndim != 2 or weights.shape[1] not in (2, 3):
            raise ValueError(f"stream weights must be [batch, 2] or [batch, 3], got shape {weights.shape}")
        self.lexical = self.lexical or weights.shape[1] == 3
        weights = np.pad(weights, ((0, 0), (0, 3 - weights.shape[1])))
        right = np.asarray(right).astype(np.int64)
        s_t = weights[:, 0]
        self.outside += int(np.sum((s_t < 0) | (s_t > 1)))
        cells = np.clip(np.floor(s_t * WEIGHT_CELLS), 0, WEIGHT_CELLS - 1).astype(np.int64)
        np.add.at(self.cells, (right, cells), 1)
        np.add.at(self.sums, right, weights)

    def histogram(self, bins: int = 20) -> dict:
        """{"edges": [≤ bins + 1], "right", "wrong": counts of s_t per bin}: `bins` bins over the range
        the weights occupy (a head whose s_t all lie in [0.95, 0.97] shows their spread, not one bar),
        at most [0, 1], edges on the cells."""
        occupied = np.flatnonzero(self.cells.sum(0))
        if not len(occupied):
            return {"edges": [0.0, 1.0], "right": [0], "wrong": [0]}
        width = max(1, -(-(occupied[-1] + 1 - occupied[0]) // bins))  # cells per bin, rounded up
        first = min(occupied[0], WEIGHT_CELLS - width * bins) if width * bins <= WEIGHT_CELLS else 0
        starts = np.arange(first, min(WEIGHT_CELLS, first + width * bins), width)
        pooled = np.add.reduceat(self.cells, starts, axis=1)
        edges = np.append(starts, min(WEIGHT_CELLS, starts[-1] + width)) / WEIGHT_CELLS
        return {"edges": edges.tolist(), "right": pooled[1].tolist(), "wrong": pooled[0].tolist()}

    def summary(self) -> dict:
        """Per kind: {products, mean_text_weight, mean_image_weight, text_weight_q10/q50/q90}, and
        mean_lexical_weight when the weights had the lexical expert's share."""
        summary = {"outside_0_1": self.outside}
        for index, kind in ((1, "right"), (0, "wrong")):
            n = int(self.cells[index].sum())
            row = {"products": n}
            if n:
                row["mean_text_weight"] = float(self.sums[index, 0] / n)
                row["mean_image_weight"] = float(self.sums[index, 1] / n)
                if self.lexical:
                    row["mean_lexical_weight"] = float(self.sums[index, 2] / n)
                cumulative = np.cumsum(self.cells[index])
                for q in WEIGHT_QUANTILES:
                    cell = int(np.searchsorted(cumulative, q * n - 1e-9))
                    row[f"text_weight_q{round(100 * q)}"] = (cell + 0.5) / WEIGHT_CELLS
            summary[kind] = row
        return summary


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """The area under the ROC curve of a score separating two groups: the probability that a random
    product of `positive` scores above a random one of `negative`, ties counting half (the
    Mann–Whitney U over the product of the group sizes). None if a group is empty."""
    positive, negative = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if not len(positive) or not len(negative):
        return None
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    # Tied scores share their mean rank.
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inverse, weights=ranks) / counts)[inverse]
    u = ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


class RoutingCounts:
    """Does the attention attend? The spread of the text weight s_t over the products, and, on
    Table 1's disagreement products, how well s_t separates those only the text model gets right
    ("text decides") from those only the image model gets right ("image decides"): the routing
    AUC, 0.5 for a head that gives every product the same weights, 1 for one that always leans
    towards the stream that is right. Holds s_t of the disagreement products only (a minority)."""

    def __init__(self):
        self.n, self.sum, self.sum_squares = 0, 0.0, 0.0
        self.lexical_sum, self.lexical_sum_squares, self.lexical_n = 0.0, 0.0, 0
        self.text_decides: list[np.ndarray] = []
        self.image_decides: list[np.ndarray] = []

    def add(self, text_weight: np.ndarray, text_right: np.ndarray | None = None,
            image_right: np.ndarray | None = None, lexical_weight: np.ndarray | None = None) -> None:
        """text_weight [batch] (s_t); text_right, image_right [batch] bool: the unimodal models' top-1;
        lexical_weight [batch]: the lexical expert's share of s_t, for the expert fusions."""
        s_t = np.asarray(text_weight, np.float64).ravel()
        self.n += len(s_t)
        self.sum += float(s_t.sum())
        self.sum_squares += float(np.square(s_t).sum())
        if lexical_weight is not None:
            s_lexical = np.asarray(lexical_weight, np.float64).ravel()
            self.lexical_n += len(s_lexical)
            self.lexical_sum += float(s_lexical.sum())
            self.lexical_sum_squares += float(np.square(s_lexical).sum())
        if text_right is not None and image_right is not None:
            text_right, image_right = np.asarray(text_right, bool), np.asarray(image_right, bool)
            self.text_decides.append(s_t[text_right & ~image_right])
            self.image_decides.append(s_t[~text_right & image_right])

    def figures(self) -> dict:
        """{products, text_weight_mean, text_weight_std}, lexical_weight_mean and _std when given, and,
        with the unimodal models, {text_decides_products, image_decides_products, their mean s_t, routing_auc}."""
        if not self.n:
            return {"products": 0}
        mean = self.sum / self.n
        figures = {"products": self.n, "text_weight_mean": mean,
                   "text_weight_std": float(np.sqrt(max(0.0, self.sum_squares / self.n - mean * mean)))}
        if self.lexical_n:
            lexical = self.lexical_sum / self.lexical_n
            figures["lexical_weight_mean"] = lexical
            figures["lexical_weight_std"] = float(np.sqrt(max(0.0, self.lexical_sum_squares / self.lexical_n
                                                              - lexical * lexical)))
        if self.text_decides:
            text, image = np.concatenate(self.text_decides), np.concatenate(self.image_decides)
            figures.update({
                "text_decides_products": len(text), "image_decides_products": len(image),
                "text_decides_mean_text_weight": float(text.mean()) if len(text) else None,
                "image_decides_mean_text_weight": float(image.mean()) if len(image) else None,
                "routing_auc": roc_auc(text, image),
            })
        return figures
