"""The lexical expert (trainer/lexical.py) and the tfidf_image_poe baseline (common/poe.py), on real
titles of the shared catalogs and on synthetic products where the right answer is known."""
import csv
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse
import tensorflow as tf
import tf_keras

from common import poe
from tests.no_tensorflow_text import PRELUDE
from trainer import lexical

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

HOSTILE_TITLES = [
    "", " ", "a", "Ça déjà-vu  T-shirt\tx", "ÅÄÖ über 2-pack", "中文字 Kurta中文Dress字", "👗👠 Dress👗Red",
    "don't stop_me now!!!", "x" * 3000, "1p 20 den\u00a0tights", "\u0000nul\u0000 byte",
]


def _hm_titles(count: int, offset: int = 0) -> tuple[list[str], list[str]]:
    with open(DATA / "hm-products" / "products.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[offset:offset + count]
    return [r["title"] for r in rows], [r["product_group"] for r in rows]


def _sklearn_union(titles):
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True).fit(titles)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True).fit(titles)
    names = [("word", n) for n in word.get_feature_names_out()] + [("char", n) for n in char.get_feature_names_out()]
    return names, lambda t: scipy.sparse.hstack([word.transform(t), char.transform(t)]).tocsr()


def test_in_graph_features_are_scikit_learns_tfidf_on_real_and_hostile_titles():
    titles, _ = _hm_titles(300)
    titles += HOSTILE_TITLES
    vocabulary = lexical.learn_vocabulary(titles)
    ours = lexical.LexicalFeatures(vocabulary).numpy(titles, batch_size=128)
    names, transform = _sklearn_union(titles)
    index = {(lexical.KINDS[k], t): i for i, (k, t) in enumerate(zip(vocabulary.kind_of, vocabulary.terms))}
    assert sorted(index) == sorted(names)  # the same n-grams, no more, no fewer
    theirs = transform(titles)
    assert abs(ours[:, [index[n] for n in names]] - theirs).max() < 1e-5
    # Titles scored later, with n-grams never seen: the known ones count, the others are dropped.
    later = ["Utah Snook top", "qqqq zzzz", ""]
    assert abs(lexical.LexicalFeatures(vocabulary).numpy(later)[:, [index[n] for n in names]] - transform(later)).max() < 1e-5


def test_the_vocabulary_keeps_the_most_frequent_ngrams_when_capped():
    titles = ["red dress", "red shirt", "red sock", "blue dress"]
    vocabulary = lexical.learn_vocabulary(titles, max_size=3)
    assert vocabulary.size == 3
    # "red" words (df 3) and the char n-grams of it come first; nothing seen once survives.
    frequencies = {t: sum(t in lexical.ngrams(tf.constant([x]))[lexical.KINDS[k]].numpy()[0].astype(str).tolist()
                          for x in titles) for k, t in zip(vocabulary.kind_of, vocabulary.terms)}
    assert min(frequencies.values()) == 3
    with pytest.raises(ValueError, match="no training titles"):
        lexical.learn_vocabulary([])


def test_the_expert_is_scikit_learns_logistic_regression_with_c_chosen_on_validation():
    from sklearn.linear_model import LogisticRegression

    titles, groups = _hm_titles(700)
    names = sorted(set(groups))
    labels = np.searchsorted(names, groups)
    num_classes = len(names) + 1  # one class of the vocabulary never seen in training
    fitted = lexical.fit_expert(titles[:500], labels[:500], titles[500:600], labels[500:600], num_classes,
                                cs=(0.01, 10.0))
    assert set(fitted.validation_top1) == {0.01, 10.0}
    assert fitted.c == max(fitted.validation_top1, key=fitted.validation_top1.get)
    assert fitted.validation_top1[10.0] > fitted.validation_top1[0.01]  # C=0.01 barely moves off the priors
    names_, transform = _sklearn_union(titles[:500])
    reference = LogisticRegression(C=fitted.c, max_iter=300).fit(transform(titles[:500]), labels[:500])
    ours = fitted.layer(tf.constant(titles[600:])).numpy()
    expected = reference.predict_log_proba(transform(titles[600:]))
    np.testing.assert_allclose(ours[:, reference.classes_], expected, atol=1e-3)
    assert (ours.argmax(1) != num_classes - 1).all()


def test_crossfit_scores_come_from_experts_that_never_saw_the_product():
    # Every product's title is a made-up word of its own, and its label is random: an expert that saw the
    # product can recall it, one that did not can only guess.
    rng = np.random.default_rng(0)
    titles = ["".join(rng.choice(list("bcdfghjklmnpqrstvwxz"), 10)) for _ in range(120)]
    labels = rng.integers(0, 3, 120)
    folds = np.arange(120) % 3
    fitted = lexical.fit_expert(titles, labels, [], np.zeros([0], np.int64), 3, cs=(100.0,))
    in_sample = np.mean(fitted.layer(tf.constant(titles)).numpy().argmax(1) == labels)
    crossfit = lexical.crossfit_log_probs(titles, labels, folds, 3, c=100.0)
    assert in_sample > 0.95
    assert np.mean(crossfit.argmax(1) == labels) < 0.6
    assert np.allclose(np.exp(crossfit).sum(1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="two folds"):
        lexical.crossfit_log_probs(titles, labels, np.zeros(120, np.int64), 3, c=1.0)


def test_the_expert_rejects_labels_that_do_not_match_its_titles():
    with pytest.raises(ValueError, match="one label per title"):
        lexical.fit_expert(["a b", "c d"], np.array([0]), [], np.zeros([0]), 2)
    with pytest.raises(ValueError, match=r"label ids must be in \[0, 2\)"):
        lexical.fit_expert(["ab cd", "ef gh"], np.array([0, 5]), [], np.zeros([0]), 2)


_SERVE_SCRIPT = PRELUDE + textwrap.dedent('''
    model_dir, titles_json = sys.argv[1:3]
    unregistered = sorted(op for op in op_types(model_dir) if op_def_registry.get(op) is None)
    served = tf.saved_model.load(model_dir).signatures["serving_default"](titles=tf.constant(json.loads(titles_json)))
    print(json.dumps({"unregistered": unregistered, "log_probs": served["log_probs"].numpy().tolist(),
                      "tensorflow_text_loaded": any(m.startswith("tensorflow_text") for m in sys.modules)}))
''')


def test_the_expert_serves_from_a_saved_model_with_core_tensorflow_only(tmp_path):
    titles, groups = _hm_titles(200)
    names = sorted(set(groups))
    fitted = lexical.fit_expert(titles, np.searchsorted(names, groups), [], np.zeros([0], np.int64), len(names))
    module = tf_keras.Sequential([tf_keras.Input([], dtype=tf.string), fitted.layer])
    probe = titles[:5] + HOSTILE_TITLES

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="titles")])
    def serve(titles):
        return {"log_probs": module(titles)}

    tf.saved_model.save(module, str(tmp_path / "model"), signatures={"serving_default": serve})
    result = subprocess.run([sys.executable, "-c", _SERVE_SCRIPT, str(tmp_path / "model"), json.dumps(probe)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["unregistered"] == [] and not served["tensorflow_text_loaded"]
    np.testing.assert_allclose(served["log_probs"], fitted.layer(tf.constant(probe)).numpy(), atol=1e-5)


# --------------------------------------------------------------------------------------------
# tfidf_image_poe


def _two_halves(n: int, seed: int):
    """Products of 4 classes: the first half's titles name the class and their photos are noise; the
    second half's photos carry it and their titles are noise. Each expert alone is right on about
    half (and guesses on the rest); their product is right on nearly all."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    words = np.array(["alpha", "bravo", "charlie", "delta"])
    fillers = np.array(["plain", "simple", "basic", "classic", "item"])
    titled = np.arange(n) < n // 2
    titles = [f"{words[y]} {rng.choice(fillers)}" if t else f"{rng.choice(fillers)} {rng.choice(fillers)}"
              for y, t in zip(labels, titled)]
    centres = np.random.default_rng(99).normal(0, 3, (4, 8))  # the classes' photos, the same in every split
    images = rng.normal(0, 1, (n, 8)) + np.where(titled[:, None], 0.0, centres[labels])
    return titles, images.astype(np.float32), labels


def test_the_product_of_experts_beats_each_expert_where_they_know_different_products():
    train, validation, evaluated = _two_halves(400, 0), _two_halves(100, 1), _two_halves(200, 2)
    fitted = poe.TfidfImagePoe(train, validation, 4)
    titles, images, labels = evaluated
    text_only = np.mean(fitted.text.log_probs(titles).argmax(1) == labels)
    image_only = np.mean(fitted.image.log_probs(images).argmax(1) == labels)
    both = np.mean(fitted.scores(titles, images).argmax(1) == labels)
    assert both > max(text_only, image_only) + 0.25
    assert both > 0.9
    choices = fitted.choices()
    assert choices["text_c"] == max(poe.TEXT_CS, key=lambda c: (fitted.text_validation[c], -c))
    assert fitted.train_products == 500  # refitted on train and validation
    figures = poe.fit_and_score(train, validation, {"eval": evaluated}, 4)
    assert figures["eval"]["top1_accuracy"] == pytest.approx(both)
    assert figures["eval"]["top1_accuracy"] <= figures["eval"]["top5_accuracy"]


def test_the_c_grid_walked_with_warm_starts_finds_what_cold_fits_find():
    train, validation, evaluated = _two_halves(400, 5), _two_halves(100, 6), _two_halves(200, 7)
    fitted = poe.TfidfImagePoe(train, validation, 4)
    for make, cs, figures, column in ((poe.text_expert, poe.TEXT_CS, fitted.text_validation, 0),
                                      (poe.image_expert, poe.IMAGE_CS, fitted.image_validation, 1)):
        for c in cs:
            cold = poe.Expert(make, c, train[column], train[2], 4)
            # lbfgs stops within its tolerance of the one minimum, from either start: a noise title whose
            # classes nearly tie may flip, so up to 2 of the 100 products.
            cold_figure = np.mean(cold.log_probs(validation[column]).argmax(1) == validation[2])
            assert abs(figures[c] - cold_figure) <= 0.02, (make, c, figures[c], cold_figure)
    images = np.concatenate([train[1], validation[1]])
    labels = np.concatenate([train[2], validation[2]])
    cold = poe.Expert(poe.image_expert, fitted.image_c, images, labels, 4)
    np.testing.assert_allclose(np.exp(fitted.image.log_probs(evaluated[1])), np.exp(cold.log_probs(evaluated[1])),
                               atol=1e-2)
    # The refit started from the chosen C's solution on train alone, not from zero.
    assert fitted.image.model[-1].n_iter_[0] < cold.model[-1].n_iter_[0]


def test_a_class_no_expert_saw_is_never_predicted_and_one_class_is_the_answer():
    titles, images, labels = _two_halves(200, 3)
    fitted = poe.TfidfImagePoe((titles, images, labels), ([], np.zeros([0, 8], np.float32), np.zeros([0])), 6)
    assert (fitted.scores(titles, images).argmax(1) < 4).all()
    assert fitted.validation_top1 is None  # nothing to choose on: the grids' middles
    single = poe.TfidfImagePoe((titles[:3], images[:3], np.array([2, 2, 2])),
                               (titles[3:5], images[3:5], np.array([2, 1])), 4)
    assert (single.scores(titles, images).argmax(1) == 2).all()


def test_the_baseline_refuses_inputs_that_are_not_the_same_products():
    titles, images, labels = _two_halves(40, 4)
    empty = ([], np.zeros([0, 8], np.float32), np.zeros([0]))
    with pytest.raises(ValueError, match="train split has 40 titles, 39 image feature rows"):
        poe.TfidfImagePoe((titles, images[:39], labels), empty, 4)
    broken = images.copy()
    broken[3, 2] = np.nan
    with pytest.raises(ValueError, match="validation split's image features .* non-finite"):
        poe.TfidfImagePoe((titles, images, labels), (titles, broken, labels), 4)
    with pytest.raises(ValueError, match="no training products"):
        poe.TfidfImagePoe(empty, empty, 4)


def test_invalid_utf8_and_empty_batches_score_without_error():
    vocabulary = lexical.learn_vocabulary(["red dress", "blue shirt"])
    features = lexical.LexicalFeatures(vocabulary)
    sparse = features(tf.constant([b"\xff\xfered dress", b"\xc3", b""]))
    dense = tf.sparse.to_dense(sparse).numpy()
    assert np.isfinite(dense).all() and dense[0].max() > 0 and not dense[1:].any()
    assert features(tf.constant([], tf.string)).dense_shape.numpy().tolist() == [0, vocabulary.size]
