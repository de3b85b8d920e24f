"""`tfidf_image_poe`: the cheap multimodal baseline a user with scikit-learn builds in minutes.

Two experts, each a multinomial LogisticRegression, fused with no free parameter (a product of experts):

    text:   TF-IDF of word 1–2-grams and character 2–5-grams (within word boundaries, sublinear tf) of the
            text the model's text stream reads (title and any extra text columns)
    image:  the frozen image encoder's pooled features, standardized
    score:  log p_text(class | title) + log p_image(class | photo); top-k by it

Each expert's inverse regularization C is chosen on the validation split (top-1), then the chosen
experts are refitted on train and validation together. Beside tfidf_svm it answers whether a fused
model earns its cost over both things a user would try.
"""
from __future__ import annotations

import time

import numpy as np

from common.metrics import ClassCounts, top_k_ids

TFIDF_IMAGE_POE = "tfidf_image_poe"
TEXT_CS = (3.0, 10.0, 30.0)
IMAGE_CS = (0.003, 0.01, 0.03, 0.1)
# The log-probability of a class an expert never saw in training: finite, so that the other expert
# can still rank it, and below any class the expert did see.
LOG_PROB_FLOOR = float(np.log(1e-9))


def text_expert(c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    return make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LogisticRegression(C=c, max_iter=300))


def image_expert(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300))


class Expert:
    """A fitted expert: inputs → log-probabilities over every class of the label vocabulary."""

    def __init__(self, make, c: float, inputs, labels: np.ndarray, num_classes: int):
        self.c, self.num_classes = c, num_classes
        classes = np.unique(labels)
        # One class in training: LogisticRegression refuses to fit, and the answer is known.
        self.model = make(c).fit(inputs, labels) if len(classes) > 1 else None
        self.only_class = int(classes[0]) if self.model is None else None

    def log_probs(self, inputs) -> np.ndarray:
        rows = inputs.shape[0] if hasattr(inputs, "shape") else len(inputs)
        out = np.full((rows, self.num_classes), LOG_PROB_FLOOR)
        if self.model is None:
            out[:, self.only_class] = 0.0
        else:
            out[:, self.model.classes_] = np.maximum(self.model.predict_log_proba(inputs), LOG_PROB_FLOOR)
        return out


def _choose(make, cs, train_inputs, train_labels, validation_inputs, validation_labels, num_classes) -> tuple:
    """(C with the best validation top-1 (the smaller on a tie: more regularized), {C: validation top-1})."""
    figures = {}
    for c in cs:
        expert = Expert(make, c, train_inputs, train_labels, num_classes)
        figures[c] = float(np.mean(expert.log_probs(validation_inputs).argmax(1) == validation_labels))
    return max(cs, key=lambda c: (figures[c], -c)), figures


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
        for name, split in (("train", train), ("validation", validation)):
            _check(name, *split)
        if not len(train[0]):
            raise ValueError(f"the {TFIDF_IMAGE_POE} baseline has no training products")
        (titles, images, labels), (v_titles, v_images, v_labels) = train, validation
        labels, v_labels = np.asarray(labels, np.int64), np.asarray(v_labels, np.int64)
        self.num_classes = num_classes
        if len(v_titles):
            self.text_c, self.text_validation = _choose(text_expert, text_cs, titles, labels, v_titles, v_labels,
                                                        num_classes)
            self.image_c, self.image_validation = _choose(image_expert, image_cs, images, labels, v_images, v_labels,
                                                          num_classes)
            validation_scores = (Expert(text_expert, self.text_c, titles, labels, num_classes).log_probs(v_titles)
                                 + Expert(image_expert, self.image_c, images, labels, num_classes).log_probs(v_images))
            self.validation_top1 = float(np.mean(validation_scores.argmax(1) == v_labels))
        else:  # nothing to choose on: the middle of each grid
            self.text_c, self.image_c = text_cs[len(text_cs) // 2], image_cs[len(image_cs) // 2]
            self.text_validation = self.image_validation = {}
            self.validation_top1 = None
        all_titles = list(titles) + list(v_titles)
        all_images = np.concatenate([images, v_images]) if len(v_titles) else images
        all_labels = np.concatenate([labels, v_labels])
        self.text = Expert(text_expert, self.text_c, all_titles, all_labels, num_classes)
        self.image = Expert(image_expert, self.image_c, all_images, all_labels, num_classes)
        self.train_products = len(all_titles)
        self.fit_seconds = time.monotonic() - started

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
