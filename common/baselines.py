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

Memory is set by the number of classes, never by the number of products: the titles are read once,
hashed into n-gram counts as they come and spilled to a temporary directory in chunks (about 1.2 KB a
title on disk), which each epoch reads back a chunk at a time; the weights are hashed features × classes
float32 within WEIGHT_BUDGET_BYTES, so the hash space shrinks as the classes grow (2^20 features up to 64
classes, about 12,000 at 5,600), held at most three times (the training weights, their running average and
the best epoch's; while the α are compared, the leading pilot's weights beside the current one's). Time is products × classes × n-grams a title per epoch (one pilot epoch an α
where the fit is large, then the chosen α's).

The regularisation α is chosen on the training titles only: every tenth is held out, each α of ALPHAS
trains with early stopping on them, and the best there is kept; the weights are averaged over the SGD
steps from the second epoch (Polyak–Ruppert), which is what is scored. Up to EXACT_COST training titles
× classes, liblinear solves the same hashed problem exactly instead (more accurate than the SGD fit, and
small enough there to hold in memory).
"""
from __future__ import annotations

import os
import tempfile
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
# not rising by MIN_GAIN over PATIENCE epochs ends training, and the best epoch's weights are kept. (At
# 20,000 products and 5,000 classes the held-out accuracy creeps up by 0.1–0.4 points an epoch after the
# eighth: four more epochs, a third of the fit's time, for 0.4 points.)
HOLDOUT_EVERY = 10
PATIENCE = 2
MIN_GAIN = 0.002
# The weights are averaged over every SGD step from this epoch on (the first epoch's steps are the largest).
AVERAGE_FROM = 2
BATCH_SIZE = 256  # titles a batch, when they are given as lists
# The L2 regularisation strengths tried, strongest first; the one best on the held-out titles is kept.
ALPHAS = (1e-3, 3e-4, 1e-4)
# Past this many training titles × classes seen, each α is compared after PILOT_EPOCHS epochs (a full
# training each would multiply the baseline's time by the α tried), and the chosen one goes on from there.
FULL_GRID_COST = 2_000_000
# Up to this many training titles × classes, liblinear (scikit-learn's LinearSVC, one-vs-rest, C=1) solves
# the same hashed problem exactly, from the spill loaded whole: its memory (the titles' sparse features and
# a float64 classes × hashed-features matrix) is bounded by this cost and WEIGHT_BUDGET_BYTES, and on the
# shared catalogs it beats the SGD fit by about a point (fashion 98.23 vs 97.26, hm 79.92 vs 78.44). Past
# it, the streamed SGD fit keeps memory independent of the number of products.
EXACT_COST = 2_000_000
PILOT_EPOCHS = 1
STEP_SIZE = 32  # titles an SGD step
SHUFFLE_BUFFER = 8192  # titles shuffled together: a catalog's order groups similar products
_WORD_NGRAMS, _CHAR_NGRAMS = (1, 2), (2, 5)

Batches = Callable[[], Iterable[tuple[list[str], np.ndarray]]]


def hashed_features(num_classes: int, budget_bytes: int = WEIGHT_BUDGET_BYTES) -> int:
    """The hash space's size for `num_classes`: the weights (features × classes float32) within the budget."""
    fitting = budget_bytes // (4 * max(1, num_classes))
    return int(min(MAX_HASHED_FEATURES, max(2**10, fitting)))


class HashedTfidf:
    """Titles → [titles, n_features] float32 CSR: sublinear-tf × idf of hashed word and char_wb n-grams,
    the word half and the char half each L2-normalised (as a union of two TfidfVectorizers is). `counts`
    hashes titles into raw n-gram counts; `add_documents` counts their document frequencies and `finish`
    turns those into the idf (a vector of n_features); `weigh` turns counts into the features, so titles
    hashed once can be weighed again every epoch."""

    def __init__(self, n_features: int):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.half = n_features // 2
        common = dict(alternate_sign=False, norm=None, dtype=np.float32)
        self.halves = (
            HashingVectorizer(analyzer="word", ngram_range=_WORD_NGRAMS, n_features=self.half, **common),
            HashingVectorizer(analyzer="char_wb", ngram_range=_CHAR_NGRAMS, n_features=n_features - self.half,
                              **common),
        )
        self.n_features = n_features
        self.idf = None
        self._documents, self._frequencies = 0, np.zeros(n_features, np.int64)

    def counts(self, titles: list[str]):
        """[titles, n_features] CSR of raw n-gram counts, the word half's columns first; each row's columns
        unique and sorted (a step of the SGD relies on it)."""
        import scipy.sparse

        counts = scipy.sparse.hstack([v.transform(titles) for v in self.halves], format="csr", dtype=np.float32)
        counts.sum_duplicates()
        return counts

    def add_documents(self, counts) -> None:
        self._documents += counts.shape[0]
        self._frequencies += np.bincount(counts.indices, minlength=self.n_features)

    def finish(self) -> HashedTfidf:
        # scikit-learn's smooth idf: as if one more document held every n-gram once.
        self.idf = (np.log((1 + self._documents) / (1 + self._frequencies)) + 1).astype(np.float32)
        return self

    def fit(self, title_batches: Iterable[list[str]]) -> HashedTfidf:
        for titles in title_batches:
            self.add_documents(self.counts(titles))
        return self.finish()

    def weigh(self, counts):
        """Raw counts (as `counts` gives them) → the features: (1 + log tf) × idf, each half L2-normalised."""
        x = counts.copy()
        x.data = (1 + np.log(x.data)) * self.idf[x.indices]
        rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        word = x.indices < self.half
        squares = x.data.astype(np.float64) ** 2
        norms = [np.sqrt(np.bincount(rows[part], squares[part], minlength=x.shape[0])) for part in (word, ~word)]
        x.data /= np.where(word, norms[0][rows], norms[1][rows]).astype(np.float32)
        return x

    def transform(self, titles: list[str]):
        return self.weigh(self.counts(titles))


def _in_batches(titles: list[str], labels: np.ndarray, size: int = BATCH_SIZE) -> Batches:
    return lambda: ((titles[i:i + size], labels[i:i + size]) for i in range(0, len(titles), size))


class _Spill:
    """The training titles hashed once into raw n-gram counts, kept in a temporary directory in chunks of
    SHUFFLE_BUFFER titles (about 1.2 KB a title): each epoch reads them back a chunk at a time, so memory
    holds one chunk and the titles are neither kept nor hashed again. Every HOLDOUT_EVERY-th title (by its
    position in the stream, so the batching does not matter) goes to the held-out chunks."""

    def __init__(self, directory: str):
        self.directory = directory
        self.train, self.holdout = [], []

    def _save(self, counts, labels: np.ndarray, kind: list) -> None:
        if not len(labels):
            return
        path = os.path.join(self.directory, f"{len(self.train) + len(self.holdout)}.npz")
        np.savez(path, data=counts.data, indices=counts.indices, indptr=counts.indptr, labels=labels)
        kind.append(path)

    def add(self, counts, labels: np.ndarray, first: int) -> None:
        held_out = (first + np.arange(len(labels))) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        self._save(counts[~held_out], labels[~held_out], self.train)
        self._save(counts[held_out], labels[held_out], self.holdout)

    @staticmethod
    def load(path: str, n_features: int):
        import scipy.sparse

        with np.load(path) as chunk:
            counts = scipy.sparse.csr_matrix((chunk["data"], chunk["indices"], chunk["indptr"]),
                                             shape=(len(chunk["indptr"]) - 1, n_features))
            return counts, chunk["labels"]


class _SgdFit:
    """One SGD training of Crammer–Singer's multiclass hinge at one L2 strength α, over a spill's training
    chunks, that can be stopped and taken up again (`train` to a number of epochs): a pilot of a few
    epochs per α, then the chosen α goes on. After every epoch the held-out accuracy is measured; the best
    epoch's weights are what it ends with. The chunks and the titles in each are shuffled anew every epoch
    (a fixed seed: the same titles give the same model)."""

    def __init__(self, vectorizer: HashedTfidf, num_classes: int, unseen: np.ndarray, alpha: float):
        self.vectorizer, self.unseen, self.alpha = vectorizer, unseen, alpha
        typical = np.sqrt(1.0 / np.sqrt(alpha))  # scikit-learn's "optimal" schedule's start
        self._t0, self.seen_titles, self.scale = 1.0 / (alpha * typical), 0, 1.0
        self.weights = np.zeros([vectorizer.n_features, num_classes], np.float32)
        self.bias = np.zeros([num_classes], np.float32)
        self._average = None
        self._random = np.random.default_rng(0)
        self.epoch, self.best_accuracy, self.best_epoch, self._gained_at = 0, -1.0, 0, (0, -1.0)
        self._best_state = None  # None while the best epoch is the current one: copied only before it changes

    def train(self, spill: _Spill, max_epochs: int) -> None:
        """Epochs until `max_epochs` in all, or until the held-out accuracy has not risen by MIN_GAIN over
        PATIENCE epochs."""
        while self.epoch < max_epochs and self.epoch - self._gained_at[0] < PATIENCE:
            if self.best_epoch == self.epoch and self.epoch:
                self._best_state = None  # freed before the new copy is made: one copy of the weights fewer
                self._best_state = self._averaged()
            self.epoch += 1
            if self.epoch == AVERAGE_FROM:
                self._start_averaging()
            for chunk in self._random.permutation(len(spill.train)):
                counts, labels = spill.load(spill.train[chunk], self.vectorizer.n_features)
                order = self._random.permutation(len(labels))
                x, labels = self.vectorizer.weigh(counts[order]), labels[order]
                for start in range(0, len(labels), STEP_SIZE):
                    self._step(x[start:start + STEP_SIZE], labels[start:start + STEP_SIZE])
            # Too few titles to hold any out: every epoch counts as better, and the last is kept.
            accuracy = self._holdout_accuracy(spill) if spill.holdout else self.epoch
            if accuracy > self.best_accuracy:
                self.best_accuracy, self.best_epoch = accuracy, self.epoch
            if accuracy >= self._gained_at[1] + MIN_GAIN:
                self._gained_at = (self.epoch, accuracy)

    def best_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights [features, classes], bias [classes]) of the best epoch, averaged from AVERAGE_FROM."""
        return self._averaged() if self.best_epoch == self.epoch else self._best_state

    def _step(self, x, labels: np.ndarray) -> None:
        """One SGD step (scikit-learn's schedule, rate 1 / (α (t0 + t)) at the t-th title): where the best
        wrong class comes within a margin of 1 of the true one, the title's n-grams move towards the true
        class and away from that wrong one. The weights are `scale * weights`, so shrinking them all costs
        one number, and a step touches two columns of the rows the batch's n-grams hash to: the batch's
        size, not the weights'."""
        alpha = self.alpha
        rate = 1.0 / (alpha * (self._t0 + self.seen_titles))
        self.seen_titles += len(labels)
        decision = self.scale * np.asarray(x @ self.weights) + self.bias + self.unseen
        rows = np.arange(len(labels))
        true = decision[rows, labels]
        decision[rows, labels] = -np.inf
        rival = decision.argmax(axis=-1)
        violated = np.flatnonzero(decision[rows, rival] + 1.0 > true)
        self.scale *= float((1.0 - rate * alpha) ** len(labels))
        if len(violated):
            # Every (n-gram, class) cell the violated titles move, at once: np.add.at sums the cells that
            # several titles share, as the titles' updates one after another would.
            lengths = np.diff(x.indptr)[violated]
            spans = [np.arange(x.indptr[r], x.indptr[r + 1]) for r in violated]
            positions = np.concatenate(spans)
            columns = np.tile(x.indices[positions], 2)
            classes = np.concatenate([np.repeat(labels[violated], lengths), np.repeat(rival[violated], lengths)])
            move = np.float32(rate / self.scale)
            values = np.concatenate([x.data[positions], -x.data[positions]]) * move
            np.add.at(self.weights, (columns, classes), values)
            if self._average is not None:
                np.add.at(self._average, (columns, classes), values * np.float32(self._scales))
            np.add.at(self.bias, labels[violated], np.float32(rate * 0.01))
            np.add.at(self.bias, rival[violated], -np.float32(rate * 0.01))
        if self._average is not None:
            self._scales += self.scale
            self._bias_sum += self.bias
            self._steps += 1
        if self.scale < 1e-6:
            self.weights *= np.float32(self.scale)
            self._scales /= self.scale
            self.scale = 1.0

    def _start_averaging(self) -> None:
        """From here on the weights averaged over the steps are kept as well (Polyak–Ruppert averaging),
        lazily: with w = scale · W and c the sum of the scales so far, Σ w = c · W − V, where each sparse
        change ΔW adds c · ΔW to V; so a step still costs only the cells it changes."""
        self._average = np.zeros_like(self.weights)
        self._bias_sum = np.zeros_like(self.bias)
        self._scales, self._steps = 0.0, 0

    def _averaged(self) -> tuple[np.ndarray, np.ndarray]:
        if self._average is None or not self._steps:
            return self.weights * np.float32(self.scale), self.bias.copy()
        weights = self.weights * np.float32(self._scales)
        weights -= self._average
        weights /= np.float32(self._steps)
        return weights, self._bias_sum / np.float32(self._steps)

    def _averaged_decision(self, x) -> np.ndarray:
        """x's decision values by the averaged weights (the current ones before averaging starts), without
        making them: (c · xW − xV) / steps, two products of x instead of a copy of the weights."""
        if self._average is None or not self._steps:
            return self.scale * np.asarray(x @ self.weights) + self.bias + self.unseen
        averaged = self._scales * np.asarray(x @ self.weights) - np.asarray(x @ self._average)
        return (averaged + self._bias_sum) / np.float32(self._steps) + self.unseen

    def _holdout_accuracy(self, spill: _Spill) -> float:
        right = held = 0
        for path in spill.holdout:
            counts, labels = spill.load(path, self.vectorizer.n_features)
            decision = self._averaged_decision(self.vectorizer.weigh(counts))
            right += int(np.sum(decision.argmax(axis=-1) == labels))
            held += len(labels)
        return right / held


class TfidfSvm:
    """The fitted baseline: titles → decision values of every class of the label vocabulary.

    `TfidfSvm(titles, labels, num_classes)` fits on lists in memory; `TfidfSvm.streamed(batches,
    num_classes)` on `batches()`, an iterable of (titles, label ids) read once, so that memory holds one
    batch at a time. The L2 regularisation α is chosen among `alphas` on the held-out titles (a tenth of
    the training ones): each is trained with early stopping, and the one whose best epoch is best there is
    kept (`alpha`, `holdout_accuracy`); the titles being evaluated never take part."""

    def __init__(self, titles: list[str], labels: np.ndarray, num_classes: int, alphas: tuple[float, ...] = ALPHAS,
                 exact_cost: int = EXACT_COST):
        self._fit(_in_batches(list(titles), np.asarray(labels)), num_classes, alphas, exact_cost)

    @classmethod
    def streamed(cls, batches: Batches, num_classes: int, alphas: tuple[float, ...] = ALPHAS,
                 exact_cost: int = EXACT_COST) -> TfidfSvm:
        baseline = cls.__new__(cls)
        baseline._fit(batches, num_classes, alphas, exact_cost)
        return baseline

    def _fit(self, batches: Batches, num_classes: int, alphas: tuple[float, ...], exact_cost: int) -> None:
        started = time.monotonic()
        if not alphas or min(alphas) <= 0:
            raise ValueError(f"the tfidf_svm baseline needs positive regularisation strengths, got {alphas}")
        self.num_classes = num_classes
        self.vectorizer = HashedTfidf(hashed_features(num_classes))
        with tempfile.TemporaryDirectory(prefix="tfidf_svm-") as directory:
            spill = self._read(batches, _Spill(directory))
            self.vectorizer.finish()
            self._unseen = np.where(self.seen, 0.0, -np.inf).astype(np.float32)
            self.alpha, self.holdout_accuracy, self.epochs = alphas[len(alphas) // 2], None, 0
            self.weights = np.zeros([self.vectorizer.n_features, num_classes], np.float32)
            self.bias = np.zeros([num_classes], np.float32)
            self.solver = "sgd"
            if self.seen.sum() > 1 and self.train_products * int(self.seen.sum()) <= exact_cost:
                self._fit_exact(spill)
            elif self.seen.sum() > 1:
                self._choose_alpha(spill, alphas)
        self.fit_seconds = time.monotonic() - started

    def _read(self, batches: Batches, spill: _Spill) -> _Spill:
        """The one pass over the batches: checks the labels, counts the classes seen and the document
        frequencies, hashes the titles into the spill a chunk at a time."""
        self.seen = np.zeros(self.num_classes, bool)
        self.train_products = 0
        buffer, buffer_labels = [], []

        def hash_buffer():
            counts = self.vectorizer.counts(buffer)
            self.vectorizer.add_documents(counts)
            spill.add(counts, np.concatenate(buffer_labels), self.train_products - len(buffer))

        for titles, labels in batches():
            labels = np.asarray(labels, np.int64)
            if len(labels) != len(titles):
                raise ValueError(f"a batch of {len(titles)} titles came with {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"label ids must be in [0, {self.num_classes}), got {labels.min()}..{labels.max()}")
            self.seen[labels] = True
            self.train_products += len(titles)
            buffer += list(titles)
            buffer_labels.append(labels)
            if len(buffer) >= SHUFFLE_BUFFER:
                hash_buffer()
                buffer, buffer_labels = [], []
        if buffer:
            hash_buffer()
        if not self.train_products:
            raise ValueError("the tfidf_svm baseline has no training titles")
        return spill

    def _fit_exact(self, spill: _Spill) -> None:
        """LinearSVC (liblinear, C=1) on every training title, held-out ones included: no α to choose."""
        import scipy.sparse
        from sklearn.svm import LinearSVC

        parts = [spill.load(path, self.vectorizer.n_features) for path in spill.train + spill.holdout]
        x = self.vectorizer.weigh(scipy.sparse.vstack([counts for counts, _ in parts]).tocsr())
        svm = LinearSVC(C=1.0).fit(x, np.concatenate([labels for _, labels in parts]))
        coef, intercept = svm.coef_, svm.intercept_
        if len(svm.classes_) == 2:  # liblinear keeps one row for two classes: the second's, against the first
            coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
        self.weights[:, svm.classes_] = coef.T
        self.bias[svm.classes_] = intercept
        self.solver, self.alpha, self.holdout_accuracy = "liblinear", None, None

    def _decision(self, x, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
        return np.asarray(x @ weights) + bias + self._unseen

    def _choose_alpha(self, spill: _Spill, alphas: tuple[float, ...]) -> None:
        """Trains one model per α and keeps the one best on the held-out chunks (the first of equals, so
        list the α from strongest: with too few titles to hold any out, the middle one is kept). Where
        training titles × classes exceed FULL_GRID_COST, each α trains PILOT_EPOCHS epochs only, and the
        chosen one then goes on from where its pilot stopped."""
        if not spill.holdout:
            alphas = (self.alpha,)
        pilot = len(alphas) > 1 and self.train_products * int(self.seen.sum()) > FULL_GRID_COST
        best = None
        for alpha in alphas:
            fit = _SgdFit(self.vectorizer, self.num_classes, self._unseen, alpha)
            fit.train(spill, PILOT_EPOCHS if pilot else MAX_EPOCHS)
            if best is None or fit.best_accuracy > best.best_accuracy:
                best = fit
            del fit  # the weights of an α that lost are freed before the next α's are made
        if pilot:
            best.train(spill, MAX_EPOCHS)
        self.alpha, self.epochs = best.alpha, best.epoch
        self.weights, self.bias = best.best_weights()
        self.holdout_accuracy = best.best_accuracy if spill.holdout else None

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
