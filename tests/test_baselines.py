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


def test_it_reads_the_batches_once_and_never_keeps_them():
    titles, labels = _catalog(400, 40)
    passes, held = [], []

    def batches():
        passes.append(0)
        for start in range(0, len(titles), 50):
            passes[-1] += 1
            held.append(start)
            yield titles[start:start + 50], labels[start:start + 50]

    baseline = TfidfSvm.streamed(batches, num_classes=40, exact_cost=0)
    # One pass: the titles are hashed as they come, and each epoch reads the hashed counts back from disk.
    assert passes == [8]
    assert baseline.train_products == 400 and 1 <= baseline.epochs <= baselines.MAX_EPOCHS
    # Fed in other batches, the same titles give the same model: the hold-out and the shuffle follow the
    # titles' positions, not the batches.
    again = TfidfSvm(titles, labels, num_classes=40, exact_cost=0)
    np.testing.assert_array_equal(again.weights, baseline.weights)
    assert (again.alpha, again.epochs) == (baseline.alpha, baseline.epochs)


def test_the_tfidf_is_scikit_learns_on_each_hashed_half():
    from sklearn.feature_extraction.text import TfidfTransformer

    titles = ["Red cotton shirt", "blue denim shirt for men", "shirt shirt shirt", "", "Ünïcode wallet 42"]
    tfidf = baselines.HashedTfidf(2**12).fit([titles[:3], titles[3:]])
    mine = tfidf.transform(titles + ["an unseen title"]).toarray()
    expected = []
    for vectorizer in tfidf.halves:
        transformer = TfidfTransformer(sublinear_tf=True).fit(vectorizer.transform(titles))
        expected.append(transformer.transform(vectorizer.transform(titles + ["an unseen title"])).toarray())
    np.testing.assert_allclose(mine, np.hstack(expected), rtol=1e-5, atol=1e-6)


def test_the_regularisation_is_chosen_on_the_held_out_training_titles():
    titles, labels = _catalog(600, 20)
    # α = 10 shrinks every weight to nothing at each step: it cannot be best on the held-out titles.
    baseline = TfidfSvm(titles, labels, num_classes=20, alphas=(10.0, 1e-3), exact_cost=0)
    assert baseline.alpha == 1e-3
    held_out = np.arange(600) % baselines.HOLDOUT_EVERY == baselines.HOLDOUT_EVERY - 1
    right = baseline.scores([t for t, h in zip(titles, held_out) if h]).argmax(axis=-1) == labels[held_out]
    assert baseline.holdout_accuracy == pytest.approx(right.mean()) and baseline.holdout_accuracy > 0.9
    alone = TfidfSvm(titles, labels, num_classes=20, alphas=(10.0,), exact_cost=0)
    assert alone.alpha == 10.0 and alone.holdout_accuracy < baseline.holdout_accuracy
    with pytest.raises(ValueError, match="positive regularisation"):
        TfidfSvm(titles, labels, num_classes=20, alphas=(0.0,), exact_cost=0)


def test_large_fits_compare_each_alpha_after_a_pilot_then_the_chosen_one_goes_on_from_it(monkeypatch):
    titles, labels = _catalog(600, 20)
    trained = []
    original = baselines._SgdFit.train

    def recording(self, spill, max_epochs):
        trained.append((self.alpha, self.epoch, max_epochs))
        return original(self, spill, max_epochs)

    monkeypatch.setattr(baselines._SgdFit, "train", recording)
    monkeypatch.setattr(baselines, "FULL_GRID_COST", 600 * 20 - 1)
    baseline = TfidfSvm(titles, labels, num_classes=20, alphas=(10.0, 1e-3), exact_cost=0)
    pilot = baselines.PILOT_EPOCHS
    # The chosen α starts its full training at the epoch its pilot reached, not from zero weights.
    assert trained == [(10.0, 0, pilot), (1e-3, 0, pilot), (1e-3, pilot, baselines.MAX_EPOCHS)]
    assert baseline.alpha == 1e-3 and baseline.epochs > pilot
    # Taken up again, it is the training it would have been in one go.
    monkeypatch.setattr(baselines, "FULL_GRID_COST", 10**9)
    whole = TfidfSvm(titles, labels, num_classes=20, alphas=(1e-3,), exact_cost=0)
    np.testing.assert_allclose(whole.weights, baseline.weights, rtol=1e-5, atol=1e-7)
    assert whole.epochs == baseline.epochs


def test_training_stops_once_the_held_out_accuracy_stops_rising_and_keeps_the_best_epoch(monkeypatch):
    titles, labels = _catalog(600, 20)
    curve = iter([0.5, 0.7, 0.71, 0.7005, 0.7009, 0.9, 0.95])
    snapshots = {}
    original = baselines._SgdFit._averaged

    def averaged(self):
        snapshots[self.epoch] = original(self)
        return snapshots[self.epoch]

    monkeypatch.setattr(baselines._SgdFit, "_holdout_accuracy", lambda self, spill: next(curve))
    monkeypatch.setattr(baselines._SgdFit, "_averaged", averaged)
    baseline = TfidfSvm(titles, labels, num_classes=20, alphas=(1e-3,), exact_cost=0)
    # Epoch 3 rose by 0.01 ≥ MIN_GAIN; 4 and 5 not by MIN_GAIN over it: stopped after 5, epoch 3 kept.
    assert (baselines.MIN_GAIN, baselines.PATIENCE) == (0.002, 2)
    assert baseline.epochs == 5 and baseline.holdout_accuracy == 0.71
    np.testing.assert_array_equal(baseline.weights, snapshots[3][0])


def test_the_averaged_weights_are_the_mean_of_every_step_since_averaging_began():
    titles, labels = _catalog(200, 5)
    vectorizer = baselines.HashedTfidf(256).fit([titles])
    alpha = 1e-2
    model = baselines._SgdFit(vectorizer, 5, np.zeros(5, np.float32), alpha)
    model._t0 = 50.0
    x = vectorizer.transform(titles)
    for start in range(0, 40, 8):
        model._step(x[start:start + 8], labels[start:start + 8])
    # The same weights held at a scale about to be folded into them (it is, a few steps on).
    model.weights /= np.float32(2e-6)
    model.scale *= 2e-6
    model._start_averaging()
    weights, biases, scales = [], [], []
    for _ in range(30):
        for start in range(0, 200, 8):
            model._step(x[start:start + 8], labels[start:start + 8])
            weights.append(model.weights * model.scale)
            biases.append(model.bias.copy())
            scales.append(model.scale)
    assert max(scales) > 1e-3  # folded into the weights: the scale started again from 1
    averaged_weights, averaged_bias = model._averaged()
    np.testing.assert_allclose(averaged_weights, np.mean(weights, axis=0), atol=1e-5)
    np.testing.assert_allclose(averaged_bias, np.mean(biases, axis=0), atol=1e-6)
    assert not np.allclose(averaged_weights, weights[-1], atol=1e-3)  # not merely the last step's


def test_a_step_moves_the_true_class_and_the_best_rival_of_each_violated_title_only():
    titles = ["red shirt", "blue shoe", "red shoe"]
    vectorizer = baselines.HashedTfidf(64).fit([titles])
    model = baselines._SgdFit(vectorizer, 3, np.zeros(3, np.float32), 1e-2)
    x = vectorizer.transform(titles)
    dense = x.toarray()
    # Title 2 already scores its class 2 by a margin of 2: not violated, so it must not move anything.
    model.weights[:, 2] = 2.0 * dense[2] / (dense[2] @ dense[2])
    before, rate = model.weights.copy(), 1.0 / (1e-2 * model._t0)
    labels = np.array([0, 1, 2])
    model._step(x, labels)
    change = model.weights * np.float32(model.scale) - before
    # Title by title, from the decision values before the step: + its n-grams to its class and − to its
    # best rival where the rival comes within a margin of 1.
    decision = dense @ before
    expected, moved = np.zeros_like(before), []
    for row, label in enumerate(labels):
        others = np.where(np.arange(3) == label, -np.inf, decision[row])
        rival = int(others.argmax())
        if others[rival] + 1.0 > decision[row, label]:
            moved.append(row)
            expected[:, label] += rate * dense[row]
            expected[:, rival] -= rate * dense[row]
    assert moved == [0, 1]
    np.testing.assert_allclose(change, expected + (model.scale - 1.0) * before, rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("classes", [2, 12])
def test_small_fits_are_liblinears_on_the_same_hashed_features_and_large_ones_sgd(classes):
    from sklearn.svm import LinearSVC

    titles, labels = _catalog(300, classes)
    baseline = TfidfSvm(titles, labels, num_classes=classes + 1)  # 300 × classes: under EXACT_COST
    assert baseline.solver == "liblinear" and baseline.alpha is None
    test_titles = _catalog(50, classes, seed=3)[0]
    svm = LinearSVC(C=1.0).fit(baseline.vectorizer.transform(titles), labels)
    expected = svm.decision_function(baseline.vectorizer.transform(test_titles))
    expected = np.stack([-expected, expected], axis=-1) if classes == 2 else expected
    np.testing.assert_allclose(baseline.scores(test_titles)[:, :classes], expected, rtol=1e-4, atol=1e-4)
    assert np.all(np.isinf(baseline.scores(test_titles)[:, classes]))  # never seen: never predicted
    streamed = TfidfSvm(titles, labels, num_classes=classes + 1, exact_cost=300 * classes - 1)
    assert streamed.solver == "sgd" and streamed.alpha in baselines.ALPHAS
