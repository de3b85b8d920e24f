"""`tfidf_svm`: the baseline a user tries first, on the same text and splits as the neural models.

TF-IDF of word 1–2-grams and character 2–5-grams (within word boundaries, sublinear tf) →
scikit-learn's LinearSVC (C=1), one-vs-rest. Its text is what the model's text stream reads: the
transformed records' raw title, which already carries any extra text columns the preprocess stage
joined to it. Top-5 comes from the decision function's ranking.

It holds the split's titles in memory (scikit-learn fits in memory): about 100 bytes a product, so
the paper's 1.2M training titles are ~120 MB; the products are streamed from the records.
"""
from __future__ import annotations

import time

import numpy as np

from common import features
from common.metrics import ClassCounts, top_k_ids

TFIDF_SVM = "tfidf_svm"


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


def titles_and_labels(batches) -> tuple[list[str], np.ndarray]:
    """Titles and label ids of ({TITLE_KEY, LABEL_ID_KEY} record batches)."""
    titles, labels = [], []
    for batch in batches:
        titles += [t.decode("utf-8") for t in batch[features.TITLE_KEY].numpy()]
        labels.append(batch[features.LABEL_ID_KEY].numpy())
    return titles, np.concatenate(labels) if labels else np.zeros([0], np.int64)


def fit_and_score(train: tuple[list[str], np.ndarray], evaluations: dict[str, tuple[list[str], np.ndarray]],
                  num_classes: int) -> dict:
    """Fits on `train` (titles, labels); returns {"seconds", and per evaluated split its
    {top1_accuracy, top5_accuracy, macro_f1, examples}} with the metric code of the evaluate stage."""
    started = time.monotonic()
    classifier = make_tfidf_svm().fit(*train)
    results = {"fit_seconds": time.monotonic() - started}
    for split, (titles, labels) in evaluations.items():
        scores = np.full((len(titles), num_classes), -np.inf)
        # LinearSVC knows only the classes it saw in training; the others are never predicted.
        decision = classifier.decision_function(titles)
        if decision.ndim == 1:  # two classes: one margin, for classes_[1]
            decision = np.stack([-decision, decision], axis=-1)
        scores[:, classifier.classes_] = decision
        counts = ClassCounts(num_classes)
        counts.add(labels, top_k_ids(scores))
        results[split] = counts.metrics()
    results["seconds"] = time.monotonic() - started
    return results
