"""`tfidf_image_poe`: the cheap multimodal baseline a user with scikit-learn builds in minutes.

Two experts, each a multinomial LogisticRegression, fused with no free parameter (a product of experts):

    text:   TF-IDF of word 1–2-grams and character 2–5-grams (within word boundaries, sublinear tf) of the
            text the model's text stream reads (title and any extra text columns)
    image:  the frozen image encoder's pooled features, standardized
    score:  log p_text(class | title) + log p_image(class | photo); top-k by it

Each expert's inverse regularization C is chosen on the validation split (top-1), then the chosen
experts are refitted on train and validation together. Beside tfidf_svm it answers whether a fused
model earns its cost over both things a user would try.

The C grid is walked cheaply: each expert's features (the TF-IDF vocabulary, the standardization) are
fitted once per training set, not once per C, and each LogisticRegression starts from the previous C's
solution (and the refit on train and validation from the chosen C's). The L2-regularized loss has one
minimum, so a warm start changes where lbfgs starts, not where it stops (within its tolerance).

The fit runs with one BLAS thread (FIT_BLAS_THREADS). lbfgs's steps are many small products (a
[products, 1280] by [1280, classes] one, and L-BFGS-B's own vector updates) on which OpenBLAS's
threads spend more time spinning than working: on hm-products (4,371 train products, 40 classes) the
evaluate stage's fit took 179.9 CPU s (363 s wall) with OpenBLAS's default two threads and 62.0 (105 s)
with one, on a loaded 2-core machine (scripts/bench_poe.py). One thread also gives the same fit
whatever the machine's cores.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from common.metrics import ClassCounts, top_k_ids

TFIDF_IMAGE_POE = "tfidf_image_poe"
TEXT_CS = (3.0, 10.0, 30.0)
IMAGE_CS = (0.003, 0.01, 0.03, 0.1)
# The evaluate stage fits it only up to this many training products × classes: its cost is in lbfgs
# iterations over the dense image features (hm, 5,000 × 40: about 60 CPU s with the grids above), and the
# fit holds every training product's features in memory. Past it the stage says so; the benchmark reports it.
MAX_EVALUATE_COST = 500_000
# The log-probability of a class an expert never saw in training: finite, so that the other expert
# can still rank it, and below any class the expert did see.
LOG_PROB_FLOOR = float(np.log(1e-9))
# BLAS threads while fitting (None: the library's default); the module docstring says why one.
FIT_BLAS_THREADS = 1


def text_features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                      TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))


def image_features():
    from sklearn.preprocessing import StandardScaler

    return StandardScaler()


def _classifier(c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=300)


def text_expert(c: float):
    from sklearn.pipeline import make_pipeline

    return make_pipeline(text_features(), _classifier(c))


def image_expert(c: float):
    from sklearn.pipeline import make_pipeline

    return make_pipeline(image_features(), _classifier(c))


def fit_threads():
    """A context in which scikit-learn's lbfgs fits run on FIT_BLAS_THREADS BLAS threads (the module
    docstring says why one); trainer/lexical.py's expert fits in it too."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=FIT_BLAS_THREADS, user_api="blas")


def _warm_start(classifier, start) -> None:
    """Starts `classifier`'s next fit from `start`'s solution when they model the same classes."""
    if start is not None and hasattr(start, "coef_"):
        classifier.set_params(warm_start=True)
        classifier.coef_, classifier.intercept_ = start.coef_.copy(), start.intercept_.copy()


class Expert:
    """A fitted expert: inputs → log-probabilities over every class of the label vocabulary.

    make: C → an sklearn pipeline ending in a classifier (text_expert, image_expert). start: a fitted
    classifier on the same features' dimensions and classes to start from (a warm start), or None."""

    def __init__(self, make, c: float, inputs, labels: np.ndarray, num_classes: int, start=None):
        self.c, self.num_classes = c, num_classes
        classes = np.unique(labels)
        # One class in training: LogisticRegression refuses to fit, and the answer is known.
        self.model, self.only_class = None, None
        if len(classes) == 1:
            self.only_class = int(classes[0])
            return
        self.model = make(c)
        if start is not None and np.array_equal(getattr(start, "classes_", None), classes):
            transformed = self.model[:-1].fit(inputs).transform(inputs)
            if transformed.shape[1] == start.coef_.shape[1]:  # refitted features: the same dimensions?
                _warm_start(self.model[-1], start)
            self.model[-1].fit(transformed, labels)
        else:
            self.model.fit(inputs, labels)

    def log_probs(self, inputs) -> np.ndarray:
        if self.model is None:
            rows = inputs.shape[0] if hasattr(inputs, "shape") else len(inputs)
            out = np.full((rows, self.num_classes), LOG_PROB_FLOOR)
            out[:, self.only_class] = 0.0
            return out
        return _log_probs(self.model, inputs, self.num_classes)


def _log_probs(model, inputs, num_classes: int) -> np.ndarray:
    rows = inputs.shape[0] if hasattr(inputs, "shape") else len(inputs)
    out = np.full((rows, num_classes), LOG_PROB_FLOOR)
    out[:, model.classes_] = np.maximum(model.predict_log_proba(inputs), LOG_PROB_FLOOR)
    return out


def _choose(make_features, cs, train_inputs, train_labels, validation_inputs, validation_labels,
            num_classes) -> tuple:
    """(C with the best validation top-1 (the smaller on a tie: more regularized), {C: validation top-1},
    that C's validation log-probabilities, its classifier (None with one class in training)).

    The features are fitted once; C is walked upwards, each fit starting from the last one's solution."""
    if len(np.unique(train_labels)) == 1:
        expert = Expert(lambda c: None, cs[0], train_inputs, train_labels, num_classes)
        scores = expert.log_probs(validation_inputs)
        figure = float(np.mean(scores.argmax(1) == validation_labels))
        return min(cs), {c: figure for c in cs}, scores, None
    features = make_features().fit(train_inputs)
    x, validation_x = features.transform(train_inputs), features.transform(validation_inputs)
    previous, figures, best = None, {}, None
    for c in sorted(cs):
        classifier = _classifier(c)
        _warm_start(classifier, previous)
        classifier.fit(x, train_labels)
        scores = _log_probs(classifier, validation_x, num_classes)
        figures[c] = float(np.mean(scores.argmax(1) == validation_labels))
        # C rises along the walk, so a tie keeps the smaller (more regularized) C already held.
        if best is None or figures[c] > figures[best[0]]:
            best = c, scores, classifier
        previous = classifier
    return best[0], figures, best[1], best[2]


def _check(name: str, titles: list[str], images: np.ndarray, labels: np.ndarray) -> None:
    if len(titles) != len(images) or len(titles) != len(labels):
        raise ValueError(f"{TFIDF_IMAGE_POE}: the {name} split has {len(titles)} titles, {len(images)} image feature "
                         f"rows and {len(labels)} labels: they must be the same products")
    if images.ndim != 2 or not np.all(np.isfinite(images)):
        raise ValueError(f"{TFIDF_IMAGE_POE}: the {name} split's image features must be a finite [products, dim] "
                         f"array, got shape {images.shape}" + ("" if images.ndim != 2 else " with non-finite values"))


class TfidfImagePoe:
    """The fitted baseline. train and validation: (titles, image features [n, d], label ids [n])."""

    def __init__(self, train: tuple, validation: tuple, num_classes: int,
                 text_cs=TEXT_CS, image_cs=IMAGE_CS):
        started = time.monotonic()
        with fit_threads():
            self._fit(train, validation, num_classes, text_cs, image_cs)
        self.fit_seconds = time.monotonic() - started

    def _fit(self, train: tuple, validation: tuple, num_classes: int, text_cs, image_cs) -> None:
        for name, split in (("train", train), ("validation", validation)):
            _check(name, *split)
        if not len(train[0]):
            raise ValueError(f"the {TFIDF_IMAGE_POE} baseline has no training products")
        (titles, images, labels), (v_titles, v_images, v_labels) = train, validation
        labels, v_labels = np.asarray(labels, np.int64), np.asarray(v_labels, np.int64)
        self.num_classes = num_classes
        text_start = image_start = None
        if len(v_titles):
            self.text_c, self.text_validation, text_scores, text_start = _choose(
                text_features, text_cs, titles, labels, v_titles, v_labels, num_classes)
            self.image_c, self.image_validation, image_scores, image_start = _choose(
                image_features, image_cs, images, labels, v_images, v_labels, num_classes)
            self.validation_top1 = float(np.mean((text_scores + image_scores).argmax(1) == v_labels))
        else:  # nothing to choose on: the middle of each grid
            self.text_c, self.image_c = text_cs[len(text_cs) // 2], image_cs[len(image_cs) // 2]
            self.text_validation = self.image_validation = {}
            self.validation_top1 = None
        all_titles = list(titles) + list(v_titles)
        all_images = np.concatenate([images, v_images]) if len(v_titles) else images
        all_labels = np.concatenate([labels, v_labels])
        # The TF-IDF vocabulary grows with the validation titles, so only the image refit can start from
        # the chosen solution (Expert checks the dimensions).
        self.text = Expert(text_expert, self.text_c, all_titles, all_labels, num_classes, start=text_start)
        self.image = Expert(image_expert, self.image_c, all_images, all_labels, num_classes, start=image_start)
        self.train_products = len(all_titles)

    def scores(self, titles: list[str], images: np.ndarray) -> np.ndarray:
        """[n, num_classes]: log p_text + log p_image."""
        return self.text.log_probs(titles) + self.image.log_probs(images)

    def choices(self) -> dict:
        return {"text_c": self.text_c, "image_c": self.image_c, "validation_top1_accuracy": self.validation_top1,
                "text_validation_top1": {str(c): v for c, v in self.text_validation.items()},
                "image_validation_top1": {str(c): v for c, v in self.image_validation.items()}}


def fit_and_score(train: tuple, validation: tuple, evaluations: dict[str, tuple], num_classes: int) -> dict:
    """Fits (C chosen on `validation`); returns {"fit_seconds", "seconds", "choices", and per evaluated
    split its {top1_accuracy, top5_accuracy, macro_f1, examples}} with the evaluate stage's metric code."""
    started = time.monotonic()
    baseline = TfidfImagePoe(train, validation, num_classes)
    results = {"fit_seconds": baseline.fit_seconds, "choices": baseline.choices()}
    for split, (titles, images, labels) in evaluations.items():
        _check(split, titles, images, labels)
        counts = ClassCounts(num_classes)
        counts.add(labels, top_k_ids(baseline.scores(titles, images)))
        results[split] = counts.metrics()
    results["seconds"] = time.monotonic() - started
    return results


@dataclasses.dataclass
class EvalPredictions:
    """tfidf_image_poe as the evaluate stage uses it: each eval product's top classes, by id (its image
    features come from the trainer's cache, not from the records the candidate reads)."""

    top_ids: dict  # eval product id (bytes) → its top-k class ids
    train_products: int
    fit_seconds: float
    choices: dict  # TfidfImagePoe.choices()

    def top_classes(self, ids) -> np.ndarray:
        try:
            return np.stack([self.top_ids[i] for i in ids])
        except KeyError as e:
            raise ValueError(f"{TFIDF_IMAGE_POE} has no eval product {e.args[0]!r}: its image features hold other "
                             "eval products than the records evaluated") from None


def fit_for_eval(train: tuple, validation: tuple, evaluated: tuple, num_classes: int) -> EvalPredictions:
    """Fitted on train (C chosen on validation, then refitted on both); `evaluated`: (titles, image
    features, ids) of the eval products."""
    titles, images, ids = evaluated
    fitted = TfidfImagePoe(train, validation, num_classes)
    top = top_k_ids(fitted.scores(titles, images)) if len(ids) else []
    return EvalPredictions(dict(zip(ids, top)), fitted.train_products, fitted.fit_seconds, fitted.choices())
