"""`tfidf_svm`: the baseline a user tries first, on the same text and splits as the neural models.

Hashed TF-IDF of word 1–2-grams and character 2–5-grams (within word boundaries, sublinear tf, each
family L2-normalised: scikit-learn's HashingVectorizer, so there is no vocabulary to hold) → a linear
classifier over all classes, trained by SGD in small steps on the hinge loss of the best-scoring wrong
class against the true one (Crammer–Singer's multiclass SVM), L2-regularised. Its text is what the model's text stream reads: the
transformed records' raw title, which already carries any extra text columns the preprocess stage
joined to it. Top-5 comes from the decision values' ranking.

Two users of one definition: the benchmark (a row of its tables) and the evaluate stage of every
pipeline run (the candidate beside it on the same eval products, and optionally a gate on it), so a
fused title+photo model shows on each catalog whether it earns its cost.

Memory is set by the number of classes, never by the number of products: the titles are streamed
(one pass counts document frequencies, each epoch reads them again), and the weights are hashed
features × classes float32 within WEIGHT_BUDGET_BYTES, so the hash space shrinks as the classes grow
(2^20 features up to 64 classes, about 12,000 at 5,600). Time is products × classes × n-grams a title
per epoch; a held-out share of the training titles stops the epochs when its accuracy stops rising.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from common import features
from common.metrics import ClassCounts, top_k_ids

TFIDF_SVM = "tfidf_svm"
# The evaluate stage's baseline trains on at most about this many products (each epoch reads them again,
# so time grows with them); a hash of the id picks them.
MAX_TRAIN_PRODUCTS = 200_000
# Hashed features × classes float32 weights stay within this (twice: the best epoch's are kept aside).
WEIGHT_BUDGET_BYTES = 256 * 2**20
MAX_HASHED_FEATURES = 2**20
MAX_EPOCHS = 15
# Every HOLDOUT_EVERY-th training title (by position) is held out to stop the epochs: accuracy there
# not improving for PATIENCE epochs ends training, and the best epoch's weights are kept.
HOLDOUT_EVERY = 10
PATIENCE = 3
BATCH_SIZE = 256  # titles a batch, when they are given as lists
# The L2 regularisation, chosen on the two shared catalogs (docs/scale.md): larger than scikit-learn's
# default 1e-4, as LinearSVC's C=1 on a few thousand titles is.
ALPHA = 3e-4
STEP_SIZE = 8  # titles an SGD step
SHUFFLE_BUFFER = 8192  # titles shuffled together: a catalog's order groups similar products
_WORD_NGRAMS, _CHAR_NGRAMS = (1, 2), (2, 5)

Batches = Callable[[], Iterable[tuple[list[str], np.ndarray]]]


def hashed_features(num_classes: int, budget_bytes: int = WEIGHT_BUDGET_BYTES) -> int:
    """The hash space's size for `num_classes`: the weights (features × classes float32) within the budget."""
    fitting = budget_bytes // (4 * max(1, num_classes))
    return int(min(MAX_HASHED_FEATURES, max(2**10, fitting)))


class HashedTfidf:
    """Titles → [titles, n_features] float32 CSR: sublinear-tf × idf of hashed word and char_wb n-grams,
    the word half and the char half each L2-normalised (as a union of two TfidfVectorizers is). The idf is
    counted in one streamed pass (`fit`): a vector of n_features document frequencies."""

    def __init__(self, n_features: int):
        from sklearn.feature_extraction.text import HashingVectorizer

        half = n_features // 2
        common = dict(alternate_sign=False, norm=None, dtype=np.float32)
        self.halves = (
            HashingVectorizer(analyzer="word", ngram_range=_WORD_NGRAMS, n_features=half, **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=_CHAR_NGRAMS, n_features=n_features - half, **common),
        )
        self.n_features = n_features
        self.idf = None

    def _counts(self, titles: list[str]):
        import scipy.sparse

        return [scipy.sparse.csr_matrix(v.transform(titles)) for v in self.halves]

    def fit(self, title_batches: Iterable[list[str]]) -> HashedTfidf:
        documents = 0
        frequencies = [np.zeros(v.n_features, np.int64) for v in self.halves]
        for titles in title_batches:
            documents += len(titles)
            for counts, frequency in zip(self._counts(titles), frequencies):
                frequency += np.bincount(counts.indices, minlength=len(frequency))
        # scikit-learn's smooth idf: as if one more document held every n-gram once.
        self.idf = [(np.log((1 + documents) / (1 + f)) + 1).astype(np.float32) for f in frequencies]
        return self

    def transform(self, titles: list[str]):
        import scipy.sparse
        from sklearn.preprocessing import normalize

        parts = []
        for counts, idf in zip(self._counts(titles), self.idf):
            counts.data = (1 + np.log(counts.data)) * idf[counts.indices]
            parts.append(normalize(counts))
        return scipy.sparse.hstack(parts, format="csr", dtype=np.float32)


def _in_batches(titles: list[str], labels: np.ndarray, size: int = BATCH_SIZE) -> Batches:
    return lambda: ((titles[i:i + size], labels[i:i + size]) for i in range(0, len(titles), size))


class TfidfSvm:
    """The fitted baseline: titles → decision values of every class of the label vocabulary.

    `TfidfSvm(titles, labels, num_classes)` fits on lists in memory; `TfidfSvm.streamed(batches,
    num_classes)` on `batches()`, an iterable of (titles, label ids) read once per epoch and once more for
    the idf, so that memory holds one batch at a time."""

    def __init__(self, titles: list[str], labels: np.ndarray, num_classes: int):
        self._fit(_in_batches(list(titles), np.asarray(labels)), num_classes)

    @classmethod
    def streamed(cls, batches: Batches, num_classes: int) -> TfidfSvm:
        baseline = cls.__new__(cls)
        baseline._fit(batches, num_classes)
        return baseline

    def _fit(self, batches: Batches, num_classes: int) -> None:
        started = time.monotonic()
        self.num_classes = num_classes
        seen = np.zeros(num_classes, bool)
        train_products = 0
        for titles, labels in batches():
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f"label ids must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
            seen[labels] = True
            train_products += len(titles)
        if not train_products:
            raise ValueError("the tfidf_svm baseline has no training titles")
        self.train_products = train_products
        self.seen = seen
        self.vectorizer = HashedTfidf(hashed_features(num_classes)).fit(titles for titles, _ in batches())
        self.weights = np.zeros([self.vectorizer.n_features, num_classes], np.float32)
        self.bias = np.zeros([num_classes], np.float32)
        self._unseen = np.where(seen, 0.0, -np.inf).astype(np.float32)
        self.epochs = self._train(batches) if seen.sum() > 1 else 0
        self.fit_seconds = time.monotonic() - started

    def _decision(self, x, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return np.asarray(x @ weights) + bias + self._unseen

    def _step(self, x, labels: np.ndarray) -> None:
        """One SGD step of Crammer–Singer's hinge with L2 regularisation `ALPHA` (scikit-learn's SGD
        schedule, rate 1 / (ALPHA (t0 + t)) at the t-th title): where the best wrong class comes within a
        margin of 1 of the true one, the title's n-grams move towards the true class and away from that wrong
        one. The weights are `scale * weights`, so shrinking them all costs one number, and a step touches
        two columns of the rows the batch's n-grams hash to: the batch's size, not the weights'."""
        rate = 1.0 / (ALPHA * (self._t0 + self.seen_titles))
        self.seen_titles += len(labels)
        decision = self.scale * np.asarray(x @ self.weights) + self.bias + self._unseen
        rows = np.arange(len(labels))
        true = decision[rows, labels]
        decision[rows, labels] = -np.inf
        rival = decision.argmax(axis=-1)
        violated = decision[rows, rival] + 1.0 > true
        self.scale *= float((1.0 - rate * ALPHA) ** len(labels))
        if violated.any():
            x = x[violated]
            per_row = np.diff(x.indptr)
            cells = (np.concatenate([x.indices, x.indices]),
                     np.concatenate([np.repeat(labels[violated], per_row), np.repeat(rival[violated], per_row)]))
            np.add.at(self.weights, cells, np.concatenate([x.data, -x.data]) * (rate / self.scale))
            moves = np.repeat(np.float32([rate, -rate]) * 0.01, violated.sum())
            np.add.at(self.bias, np.concatenate([labels[violated], rival[violated]]), moves)
        if self.scale < 1e-6:
            self.weights *= self.scale
            self.scale = 1.0

    def _train(self, batches: Batches) -> int:
        """SGD epochs over the batches' titles but every HOLDOUT_EVERY-th, shuffled within a buffer of
        SHUFFLE_BUFFER titles (a catalog's order groups similar products); returns how many ran, keeping the
        weights of the epoch best on the held-out titles (each scored as the pass reaches it)."""
        typical = np.sqrt(1.0 / np.sqrt(ALPHA))  # scikit-learn's "optimal" schedule's start
        self._t0, self.seen_titles, self.scale = 1.0 / (ALPHA * typical), 0, 1.0
        random = np.random.default_rng(0)
        best, best_epoch, best_state = -1.0, 0, None

        def learn(titles: list[str], labels: list[np.ndarray]) -> None:
            # Hashed once for the buffer: a call of the vectorizers costs more than a step's arithmetic.
            x, labels = self.vectorizer.transform(titles), np.concatenate(labels)
            order = random.permutation(len(titles))
            for start in range(0, len(order), STEP_SIZE):
                chosen = order[start:start + STEP_SIZE]
                self._step(x[chosen], labels[chosen])

        for epoch in range(1, MAX_EPOCHS + 1):
            right = held = 0
            buffer, buffer_labels = [], []
            for titles, labels in batches():
                held_out = np.arange(len(titles)) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
                if held_out.any():
                    x = self.vectorizer.transform([t for t, out in zip(titles, held_out) if out])
                    decision = self.scale * np.asarray(x @ self.weights) + self.bias + self._unseen
                    right += int(np.sum(decision.argmax(axis=-1) == labels[held_out]))
                    held += int(held_out.sum())
                buffer += [t for t, out in zip(titles, held_out) if not out]
                buffer_labels.append(labels[~held_out])
                if len(buffer) >= SHUFFLE_BUFFER:
                    learn(buffer, buffer_labels)
                    buffer, buffer_labels = [], []
            if buffer:
                learn(buffer, buffer_labels)
            # Too few titles to hold any out: every epoch counts as better, and the last is kept.
            accuracy = right / held if held else epoch
            if accuracy > best:
                best, best_epoch, best_state = accuracy, epoch, (self.weights * np.float32(self.scale), self.bias.copy())
            elif epoch - best_epoch >= PATIENCE:
                break
        self.weights, self.bias = best_state
        return epoch

    def scores(self, titles: list[str]) -> np.ndarray:
        """[len(titles), num_classes]: decision values; -inf for the classes the fit never saw, so they are
        never predicted."""
        if not titles:
            return np.zeros([0, self.num_classes], np.float32)
        return self._decision(self.vectorizer.transform(titles), self.weights, self.bias)

    def probabilities(self, titles: list[str]) -> np.ndarray:
        """[len(titles), num_classes]: the decision values through a softmax (0 for classes never seen in
        training): a ranking turned into numbers that add up to 1, not calibrated probabilities."""
        scores = self.scores(titles)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True)) if len(scores) else scores
        return scores / scores.sum(axis=-1, keepdims=True) if len(scores) else scores


def below_baseline(metrics: dict) -> str | None:
    """One line when the candidate's top-1 (evaluate's scalars) is below the tfidf_svm baseline's, else None:
    what a run that only reports the comparison (baseline_tolerance 1.0, run-local's) says of it."""
    mine, theirs = metrics.get("top1_accuracy"), metrics.get("baseline_top1_accuracy")
    if mine is None or theirs is None or mine >= theirs:
        return None
    return (f"the candidate's top-1 {mine:.4f} is below the {TFIDF_SVM} baseline's {theirs:.4f} on the same "
            "eval products; --baseline-tolerance 0 (the compiled pipeline's default) would not bless it")


def record_spec() -> dict:
    """What the baseline reads of a transformed record: the id (for sampling), the title and the label."""
    import tensorflow as tf

    return {features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
            features.TITLE_KEY: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64)}


def decode_titles(values) -> list[str]:
    """Title bytes (as a parsed record batch holds them) → text; an invalid byte never stops a stage."""
    return [t.decode("utf-8", errors="replace") for t in values]


def record_batches(dataset) -> Batches:
    """(titles, label ids) batches of a dataset of parsed {TITLE_KEY, LABEL_ID_KEY} record batches, read
    afresh each time they are asked for."""
    return lambda: ((decode_titles(b[features.TITLE_KEY].numpy()), b[features.LABEL_ID_KEY].numpy()) for b in dataset)


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
