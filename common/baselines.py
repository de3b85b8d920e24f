"""`tfidf_svm`: the baseline a user tries first, on the same text and splits as the neural models.

TF-IDF of word 1–2-grams and character 2–5-grams (within word boundaries, sublinear tf) →
scikit-learn's LinearSVC (C=1), one-vs-rest. Its text is what the model's text stream reads: the
transformed records' raw title, which already carries any extra text columns the preprocess stage
joined to it. Top-5 comes from the decision function's ranking.

Two users of one definition: the benchmark (a row of its tables) and the evaluate stage of every
pipeline run (the candidate beside it on the same eval products, and optionally a gate on it), so a
fused title+photo model shows on each catalog whether it earns its cost.

It holds its training titles in memory (scikit-learn fits in memory): about 100 bytes a product, so
the paper's 1.2M training titles are ~120 MB; the products to score are streamed in batches.
"""
from __future__ import annotations

import time

import numpy as np

from common import features
from common.metrics import ClassCounts, top_k_ids

TFIDF_SVM = "tfidf_svm"
# The evaluate stage's baseline trains on at most about this many products (scikit-learn fits in memory,
# and LinearSVC's time grows with products × classes); a hash of the id picks them.
MAX_TRAIN_PRODUCTS = 200_000


def make_tfidf_svm():
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    return make_pipeline(
        make_union(
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        ),
        LinearSVC(C=1.0),
    )


class TfidfSvm:
    """The fitted baseline: titles → decision values of every class of the label vocabulary."""

    def __init__(self, titles: list[str], labels: np.ndarray, num_classes: int):
        if not titles:
            raise ValueError("the tfidf_svm baseline has no training titles")
        started = time.monotonic()
        self.num_classes = num_classes
        self.train_products = len(titles)
        self.classifier = make_tfidf_svm().fit(titles, labels) if len(set(labels.tolist())) > 1 else None
        self.only_class = int(labels[0]) if self.classifier is None else None
        self.fit_seconds = time.monotonic() - started

    def scores(self, titles: list[str]) -> np.ndarray:
        """[len(titles), num_classes]: decision values; -inf for the classes the fit never saw (LinearSVC
        knows only those), so they are never predicted."""
        scores = np.full((len(titles), self.num_classes), -np.inf)
        if self.classifier is None:  # one class in training: LinearSVC refuses to fit, the answer is known
            scores[:, self.only_class] = 0.0
            return scores
        decision = self.classifier.decision_function(titles)
        if decision.ndim == 1:  # two classes: one margin, for classes_[1]
            decision = np.stack([-decision, decision], axis=-1)
        scores[:, self.classifier.classes_] = decision
        return scores


def record_spec() -> dict:
    """What the baseline reads of a transformed record: the id (for sampling), the title and the label."""
    import tensorflow as tf

    return {features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
            features.TITLE_KEY: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64)}


def decode_titles(values) -> list[str]:
    """Title bytes (as a parsed record batch holds them) → text; an invalid byte never stops a stage."""
    return [t.decode("utf-8", errors="replace") for t in values]


def titles_and_labels(batches) -> tuple[list[str], np.ndarray]:
    """Titles and label ids of ({TITLE_KEY, LABEL_ID_KEY} record batches)."""
    titles, labels = [], []
    for batch in batches:
        titles += decode_titles(batch[features.TITLE_KEY].numpy())
        labels.append(batch[features.LABEL_ID_KEY].numpy())
    return titles, np.concatenate(labels) if labels else np.zeros([0], np.int64)


def fit_and_score(train: tuple[list[str], np.ndarray], evaluations: dict[str, tuple[list[str], np.ndarray]],
                  num_classes: int) -> dict:
    """Fits on `train` (titles, labels); returns {"seconds", and per evaluated split its
    {top1_accuracy, top5_accuracy, macro_f1, examples}} with the metric code of the evaluate stage."""
    started = time.monotonic()
    baseline = TfidfSvm(*train, num_classes)
    results = {"fit_seconds": baseline.fit_seconds}
    for split, (titles, labels) in evaluations.items():
        counts = ClassCounts(num_classes)
        counts.add(labels, top_k_ids(baseline.scores(titles)))
        results[split] = counts.metrics()
    results["seconds"] = time.monotonic() - started
    return results
