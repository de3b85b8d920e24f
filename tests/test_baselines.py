"""The tfidf_svm baseline (common/baselines.py): its memory is set by the classes, never by the number
of products; it streams its titles; it learns titles that name their class, at many classes."""
import numpy as np
import pytest

from common import baselines
from common.baselines import TfidfSvm, hashed_features

WORDS = ["shirt", "dress", "shoe", "bag", "watch", "belt", "scarf", "sock", "cap", "coat"]


def _catalog(products: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, products - classes)])
    titles = [f"{' '.join(rng.choice(WORDS, 3))} c{label:04d}" for label in labels]
    return titles, labels


@pytest.mark.parametrize("classes", [2, 64, 5600, 100_000])
def test_the_weights_stay_within_the_budget_whatever_the_classes(classes):
    features = hashed_features(classes)
    assert features <= baselines.MAX_HASHED_FEATURES
    # Within the budget, unless that would leave fewer than 2^10 hashed features (past 65,536 classes).
    assert features * classes * 4 <= baselines.WEIGHT_BUDGET_BYTES or (
        features == 2**10 and classes > baselines.WEIGHT_BUDGET_BYTES // (4 * 2**10))


def test_the_fitted_size_does_not_grow_with_the_products():
    small = TfidfSvm(*_catalog(60, 30), num_classes=30)
    large = TfidfSvm(*_catalog(600, 30, seed=1), num_classes=30)
    assert small.weights.nbytes == large.weights.nbytes == hashed_features(30) * 30 * 4
    assert small.vectorizer.n_features == large.vectorizer.n_features
    assert (small.train_products, large.train_products) == (60, 600)


def test_it_streams_reading_the_batches_once_per_pass_and_never_keeping_them():
    titles, labels = _catalog(400, 40)
    passes, held = [], []

    def batches():
        passes.append(0)
        for start in range(0, len(titles), 50):
            passes[-1] += 1
            held.append(start)
            yield titles[start:start + 50], labels[start:start + 50]

    baseline = TfidfSvm.streamed(batches, num_classes=40)
    # One pass counts the titles and classes, one the document frequencies, then one per epoch.
    assert len(passes) == 2 + baseline.epochs and all(p == 8 for p in passes)
    assert baseline.train_products == 400 and 1 <= baseline.epochs <= baselines.MAX_EPOCHS


def test_it_learns_titles_that_name_their_class_at_many_classes():
    titles, labels = _catalog(3000, 1000)
    baseline = TfidfSvm(titles, labels, num_classes=1001)  # one more class than the titles have: never predicted
    test_titles, test_labels = _catalog(1000, 1000, seed=2)
    scores = baseline.scores(test_titles)
    assert scores.shape == (1000, 1001) and np.all(np.isinf(scores[:, 1000]))
    assert np.mean(scores.argmax(axis=-1) == test_labels) > 0.9
    probabilities = baseline.probabilities(test_titles[:5])
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(probabilities[:, 1000] == 0.0)
    assert baseline.probabilities([]).shape == (0, 1001) and baseline.scores([]).shape == (0, 1001)
