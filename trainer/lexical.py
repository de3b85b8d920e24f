"""The lexical text expert: TF-IDF of the title's word and character n-grams and a linear classifier on
them, computed inside the model's graph with core TensorFlow ops only (no tensorflow_text, no
scikit-learn at serving).

    title ── lower-case (UTF-8) ──┬─ words (runs of letters, digits, _; 2+ chars) → 1- and 2-grams
                                  └─ whitespace words, " word " → character 2-, 3-, 4-, 5-grams
          → ids in a vocabulary learned on the train split (a StaticHashTable; unknown n-grams dropped)
          → sublinear tf (1 + ln count) × idf, L2-normalized per kind (words, characters)
          → logits = x W + b

The features are scikit-learn's TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True)
and TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True) joined (the expert a user
tries first, common/poe.py), so the lexical expert inside the model is the one the probe measured.
Training fits the classifier with scikit-learn's LogisticRegression on the graph's own features (so
training and serving read the same numbers), its C chosen on validation; the fitted weights become the
layer's. `crossfit_log_probs` gives the out-of-fold scores that the heads learning from the expert train
on, so no head learns from scores the expert made on its own training products.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 3, 4, 5)
KINDS = ("word", "char")
# A vocabulary of the most frequent n-grams (by documents) at most this long: the classifier's weights
# are vocabulary × classes floats in the exported model. 5,000 hm titles hold about 60K n-grams.
MAX_VOCABULARY = 200_000
DEFAULT_CS = (3.0, 10.0, 30.0)
# RE2 (TensorFlow's regex engine) \w is ASCII only; this is Python's Unicode \w, as scikit-learn reads it.
_NON_WORD = r"[^\pL\pN_]+"
_NUL_STAND_IN = "\U0010fffe"
# Python's str.split() whitespace (scikit-learn's char_wb splits words with it); RE2's \s is ASCII only.
_WHITESPACE = r"[\s\v\x{1c}-\x{1f}\x{85}\p{Z}]+"


def _words(lower: tf.Tensor) -> tf.RaggedTensor:
    tokens = tf.strings.split(tf.strings.strip(tf.strings.regex_replace(lower, _NON_WORD, " ")))
    return tf.ragged.boolean_mask(tokens, tf.strings.length(tokens, unit="UTF8_CHAR") >= 2)


def _lower(titles: tf.Tensor) -> tf.Tensor:
    """Unicode lower case. tf.strings.lower(encoding="utf-8") ends a string at its first NUL, so NULs stand
    aside as a noncharacter (never in real text) while it runs."""
    hidden = tf.strings.regex_replace(titles, r"\x00", _NUL_STAND_IN)
    return tf.strings.regex_replace(tf.strings.lower(hidden, encoding="utf-8"), _NUL_STAND_IN, "\x00")


def ngrams(titles: tf.Tensor) -> dict[str, tf.RaggedTensor]:
    """{kind: string [batch, (n-grams)]}: every word and character n-gram of each title, repeated as often
    as it occurs."""
    lower = _lower(tf.convert_to_tensor(titles, tf.string))
    words = _words(lower)
    word_grams = tf.concat([tf.strings.ngrams(words, n, separator=" ") for n in WORD_NGRAMS], axis=1)
    # Split on the one space only: tf.strings.split's default also splits on NUL, which Python keeps in a word.
    split = tf.strings.split(tf.strings.regex_replace(lower, _WHITESPACE, " "), sep=" ")
    padded = tf.strings.join([" ", tf.ragged.boolean_mask(split, split != ""), " "])  # [batch, (words)]
    chars = tf.strings.unicode_split(padded, "UTF-8")  # [batch, (words), (chars)]
    # A padded word of n characters gives itself once and none longer, as scikit-learn's char_wb does.
    char_grams = tf.concat([tf.strings.ngrams(chars, n, separator="") for n in CHAR_NGRAMS], axis=2).merge_dims(1, 2)
    return {"word": word_grams, "char": char_grams}


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """n-gram → id (words first, then characters) and each id's idf; `kind_of` [size]: 0 word, 1 char."""
    terms: tuple[str, ...]
    idf: np.ndarray
    kind_of: np.ndarray

    @property
    def size(self) -> int:
        return len(self.terms)


def learn_vocabulary(titles: list[str], max_size: int = MAX_VOCABULARY, batch_size: int = 1024) -> Vocabulary:
    """The n-grams of the training titles and their smoothed idf, ln((1 + n) / (1 + df)) + 1."""
    if not titles:
        raise ValueError("the lexical expert has no training titles to learn its vocabulary from")
    document_frequency = [{}, {}]
    for start in range(0, len(titles), batch_size):
        grams = ngrams(tf.constant(titles[start:start + batch_size]))
        for k, kind in enumerate(KINDS):
            for row in grams[kind].to_list():
                for term in set(row):
                    document_frequency[k][term] = document_frequency[k].get(term, 0) + 1
    ranked = sorted(((df, k, term) for k in range(2) for term, df in document_frequency[k].items()),
                    key=lambda t: (-t[0], t[1], t[2]))[:max_size]
    ranked.sort(key=lambda t: (t[1], t[2]))  # words then characters, each in byte order: a stable layout
    if not ranked:
        raise ValueError("the training titles hold no word or character n-gram")
    n = len(titles)
    return Vocabulary(terms=tuple(t.decode("utf-8", "replace") if isinstance(t, bytes) else t for _, _, t in ranked),
                      idf=np.array([math.log((1 + n) / (1 + df)) + 1.0 for df, _, _ in ranked], np.float32),
                      kind_of=np.array([k for _, k, _ in ranked], np.int64))


class LexicalFeatures(tf_keras.layers.Layer):
    """Titles (string [batch]) → TF-IDF SparseTensor [batch, vocabulary size]."""

    def __init__(self, vocabulary: Vocabulary, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.vocabulary = vocabulary
        keys = [f"{KINDS[k]}\x00{t}" for k, t in zip(vocabulary.kind_of, vocabulary.terms)]
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(vocabulary.size, dtype=tf.int64)), -1)
        self.idf = tf.constant(vocabulary.idf)
        self.kind_of = tf.constant(vocabulary.kind_of)

    def call(self, titles):
        titles = tf.reshape(titles, [-1])
        batch = tf.shape(titles, out_type=tf.int64)[0]
        grams = ngrams(titles)
        ids = tf.concat([self.table.lookup(tf.strings.join([f"{kind}\x00", grams[kind]])) for kind in KINDS], axis=1)
        rows = tf.cast(ids.value_rowids(), tf.int64)
        flat = ids.flat_values
        known = flat >= 0
        rows, flat = tf.boolean_mask(rows, known), tf.boolean_mask(flat, known)
        size = tf.constant(self.vocabulary.size, tf.int64)
        cells, index = tf.unique(rows * size + flat)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(index, tf.float32), index, tf.shape(cells)[0])
        cell_rows, cell_ids = cells // size, cells % size
        values = (1.0 + tf.math.log(counts)) * tf.gather(self.idf, cell_ids)
        segment = cell_rows * 2 + tf.gather(self.kind_of, cell_ids)
        norms = tf.sqrt(tf.math.unsorted_segment_sum(tf.square(values), segment, batch * 2))
        values = values / tf.gather(norms, segment)
        sparse = tf.SparseTensor(tf.stack([cell_rows, cell_ids], axis=1), values, tf.stack([batch, size]))
        return tf.sparse.reorder(sparse)

    def numpy(self, titles: list[str], batch_size: int = 1024):
        """scipy.sparse CSR [len(titles), vocabulary size] of the graph's own features (for fitting)."""
        import scipy.sparse

        parts = []
        for start in range(0, len(titles), batch_size):
            sparse = self(tf.constant(titles[start:start + batch_size]))
            indices = sparse.indices.numpy()
            parts.append(scipy.sparse.csr_matrix((sparse.values.numpy(), (indices[:, 0], indices[:, 1])),
                                                 shape=sparse.dense_shape.numpy()))
        return scipy.sparse.vstack(parts).tocsr() if parts else scipy.sparse.csr_matrix((0, self.vocabulary.size))


class LexicalExpert(tf_keras.layers.Layer):
    """Titles → log-probabilities [batch, classes] of the fitted linear classifier."""

    def __init__(self, vocabulary: Vocabulary, kernel: np.ndarray, bias: np.ndarray, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.features = LexicalFeatures(vocabulary, name="lexical_features")
        self.kernel = tf.Variable(kernel.astype(np.float32), trainable=False, name="lexical_kernel")
        self.bias = tf.Variable(bias.astype(np.float32), trainable=False, name="lexical_bias")

    def call(self, titles):
        logits = tf.sparse.sparse_dense_matmul(self.features(titles), self.kernel) + self.bias
        return tf.nn.log_softmax(logits)


def _weights(model, num_classes: int, vocabulary_size: int) -> tuple[np.ndarray, np.ndarray]:
    """LogisticRegression's coef_/intercept_ on the full label vocabulary: a class it never saw gets a
    bias far below every other, so it is never predicted; one seen class alone is the only answer."""
    kernel = np.zeros((vocabulary_size, num_classes), np.float32)
    bias = np.full(num_classes, -1e4, np.float32)
    if len(model.classes_) == 2:  # binary: one margin, for classes_[1]
        kernel[:, model.classes_[1]] = model.coef_[0]
        bias[model.classes_] = [0.0, model.intercept_[0]]
    else:
        kernel[:, model.classes_] = model.coef_.T
        bias[model.classes_] = model.intercept_
    return kernel, bias


@dataclasses.dataclass
class FittedExpert:
    layer: LexicalExpert
    c: float
    validation_top1: dict  # {C: validation top-1}
    fit_seconds: float


def _fit_weights(x, labels: np.ndarray, c: float, num_classes: int, vocabulary_size: int):
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(labels)
    if len(classes) == 1:
        kernel = np.zeros((vocabulary_size, num_classes), np.float32)
        bias = np.full(num_classes, -1e4, np.float32)
        bias[classes[0]] = 0.0
        return kernel, bias
    from common.poe import fit_threads

    with fit_threads():  # one BLAS thread: OpenBLAS's spin on lbfgs's small products (hm: 31.4 → 14.8 CPU s)
        return _weights(LogisticRegression(C=c, max_iter=300).fit(x, labels), num_classes, vocabulary_size)


def _top1(kernel, bias, x, labels) -> float:
    return float(np.mean(np.asarray(x @ kernel + bias).argmax(1) == labels))


def fit_expert(train_titles: list[str], train_labels: np.ndarray, validation_titles: list[str],
               validation_labels: np.ndarray, num_classes: int, cs=DEFAULT_CS,
               max_vocabulary: int = MAX_VOCABULARY) -> FittedExpert:
    """The expert fitted on the train titles, its C the best of `cs` on validation (the smaller on a tie)."""
    started = time.monotonic()
    train_labels, validation_labels = np.asarray(train_labels), np.asarray(validation_labels)
    if len(train_titles) != len(train_labels) or len(validation_titles) != len(validation_labels):
        raise ValueError("the lexical expert needs one label per title, in train and in validation")
    if len(train_labels) and (train_labels.min() < 0 or train_labels.max() >= num_classes):
        raise ValueError(f"label ids must be in [0, {num_classes}); got {train_labels.min()}..{train_labels.max()}")
    vocabulary = learn_vocabulary(list(train_titles), max_vocabulary)
    featurize = LexicalFeatures(vocabulary)
    x = featurize.numpy(list(train_titles))
    fitted, scores = {}, {}
    for c in cs:
        fitted[c] = _fit_weights(x, train_labels, c, num_classes, vocabulary.size)
        if len(validation_titles):
            scores[c] = _top1(*fitted[c], featurize.numpy(list(validation_titles)), validation_labels)
    best = max(cs, key=lambda c: (scores.get(c, 0.0), -c)) if scores else cs[len(cs) // 2]
    layer = LexicalExpert(vocabulary, *fitted[best], name="lexical_expert")
    return FittedExpert(layer, best, scores, time.monotonic() - started)


def crossfit_log_probs(titles: list[str], labels: np.ndarray, folds: np.ndarray, num_classes: int, c: float,
                       max_vocabulary: int = MAX_VOCABULARY) -> np.ndarray:
    """[len(titles), classes]: each product's log-probabilities from an expert (vocabulary and classifier)
    fitted without its fold (`folds` [n] int, e.g. trainer.data.fold_of of the ids)."""
    labels, folds = np.asarray(labels), np.asarray(folds)
    out = np.zeros((len(titles), num_classes), np.float32)
    for fold in np.unique(folds):
        inside, outside = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        if not len(inside):
            raise ValueError("cross-fitting needs at least two folds with products")
        vocabulary = learn_vocabulary([titles[i] for i in inside], max_vocabulary)
        expert = LexicalExpert(vocabulary, *_fit_weights(LexicalFeatures(vocabulary).numpy([titles[i] for i in inside]),
                                                         labels[inside], c, num_classes, vocabulary.size))
        out[outside] = _scores(expert, [titles[i] for i in outside])
    return out


# ---- The expert of a training run ------------------------------------------------------------------

RUN_EXPERT_DIR = "lexical_expert"
_RUN_EXPERT_FILE = "expert.json"
_RUN_ARRAYS_FILE = "arrays.npz"


@dataclasses.dataclass
class RunExpert:
    """The lexical expert of one training run: `layer`, fitted on the whole train split (C chosen on
    validation), goes into the exported model; `log_probs` [products, classes] are every product's
    scores as the heads read them, by id: out-of-fold on the train split (cross-fitted over the folds
    the unimodal models use, trainer.data.fold_of), the whole-train expert's on validation and eval."""

    layer: LexicalExpert
    c: float
    validation_top1: dict
    ids: list[bytes]
    log_probs: np.ndarray
    settings: dict

    def add_log_probs(self, inputs: dict, ids: tf.Tensor) -> dict:
        """`inputs` with LEXICAL_LOG_PROBS_KEY [batch, classes]: the scores of products `ids` [batch]."""
        from common import features

        if not hasattr(self, "_table"):
            with tf.init_scope():  # once, eagerly, also when first called inside a dataset's map
                self._table = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(tf.constant(self.ids, tf.string),
                                                        tf.range(len(self.ids), dtype=tf.int64)), -1)
                self._scores = tf.constant(self.log_probs, tf.float32)
        rows = self._table.lookup(ids)
        unknown = tf.argmin(rows, output_type=tf.int32)
        check = tf.debugging.Assert(
            tf.reduce_all(rows >= 0),
            [tf.strings.format("the lexical expert has no scores for product {}: its scores were computed from "
                               "other examples", (tf.gather(ids, unknown),))])
        with tf.control_dependencies([check]):
            rows = tf.identity(rows)
        return {**inputs, features.LEXICAL_LOG_PROBS_KEY: tf.gather(self._scores, rows)}

    def save(self, out_dir: str) -> None:
        vocabulary = self.layer.features.vocabulary
        tf.io.gfile.makedirs(out_dir)
        buffer = io.BytesIO()  # np.savez seeks, which a GFile (any filesystem) does not
        np.savez(buffer, kernel=self.layer.kernel.numpy(), bias=self.layer.bias.numpy(), log_probs=self.log_probs,
                 idf=vocabulary.idf, kind_of=vocabulary.kind_of)
        with tf.io.gfile.GFile(os.path.join(out_dir, _RUN_ARRAYS_FILE), "wb") as f:
            f.write(buffer.getvalue())
        # JSON keeps every id and n-gram exactly (NUL and all), which NumPy's fixed-width strings do not.
        payload = {"settings": self.settings, "c": self.c, "validation_top1": {str(c): v for c, v in
                                                                                self.validation_top1.items()},
                   "ids": [i.decode("utf-8", "surrogateescape") for i in self.ids], "terms": list(vocabulary.terms)}
        with tf.io.gfile.GFile(os.path.join(out_dir, _RUN_EXPERT_FILE), "w") as f:  # written last: the marker
            json.dump(payload, f)

    @classmethod
    def load(cls, out_dir: str, settings: dict) -> "RunExpert | None":
        """The expert saved in `out_dir` with these settings, or None."""
        path = os.path.join(out_dir, _RUN_EXPERT_FILE)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            payload = json.load(f)
        if payload["settings"] != settings:
            return None
        with tf.io.gfile.GFile(os.path.join(out_dir, _RUN_ARRAYS_FILE), "rb") as f:
            arrays = dict(np.load(io.BytesIO(f.read())))
        vocabulary = Vocabulary(tuple(payload["terms"]), arrays["idf"], arrays["kind_of"])
        return cls(LexicalExpert(vocabulary, arrays["kernel"], arrays["bias"], name="lexical_expert"), payload["c"],
                   {float(c): v for c, v in payload["validation_top1"].items()},
                   [i.encode("utf-8", "surrogateescape") for i in payload["ids"]], arrays["log_probs"], settings)


def _split_records(pattern: str) -> tuple[list[bytes], list[bytes], np.ndarray]:
    """(ids, raw title bytes, label ids) of the transformed records matching `pattern`."""
    from common import baselines, features
    from trainer import data

    spec = baselines.record_spec()
    ids, titles, labels = [], [], []
    if not tf.io.gfile.glob(pattern):
        return ids, titles, np.zeros([0], np.int64)
    for batch in data.read_records(pattern, shuffle=False).batch(1024).map(lambda s: tf.io.parse_example(s, spec)):
        ids += list(batch[features.ID_KEY].numpy())
        titles += list(batch[features.TITLE_KEY].numpy())
        labels.append(batch[features.LABEL_ID_KEY].numpy())
    return ids, titles, np.concatenate(labels) if labels else np.zeros([0], np.int64)


def _scores(layer: LexicalExpert, titles: list, batch_size: int = 1024) -> np.ndarray:
    parts = [layer(tf.constant(titles[start:start + batch_size], tf.string)).numpy()
             for start in range(0, len(titles), batch_size)]
    return np.concatenate(parts) if parts else np.zeros([0, layer.kernel.shape[1]], np.float32)


def run_expert(examples_dir: str, out_dir: str, *, num_classes: int, validation_fraction: float, folds: int,
               data_fingerprint: str, cs=DEFAULT_CS, log=print) -> RunExpert:
    """The run's lexical expert (RunExpert), fitted once and kept in `out_dir`: the train split's
    titles (the preprocess stage's text: title and any extra text columns) fit it, validation chooses C."""
    from common import features
    from trainer import data

    settings = {"data": data_fingerprint, "validation_fraction": validation_fraction, "folds": folds,
                "cs": list(cs), "num_classes": num_classes, "max_vocabulary": MAX_VOCABULARY}
    kept = RunExpert.load(out_dir, settings)
    if kept is not None:
        return kept
    started = time.monotonic()
    ids, titles, labels = _split_records(os.path.join(examples_dir, features.TRAIN_SPLIT, "*"))
    eval_ids, eval_titles, _ = _split_records(os.path.join(examples_dir, features.EVAL_SPLIT, "*"))
    if not ids:
        raise ValueError(f"{examples_dir} has no training examples for the lexical expert")
    validation = data.in_validation(tf.constant(ids), validation_fraction).numpy() if validation_fraction > 0 \
        else np.zeros(len(ids), bool)
    train, held = np.flatnonzero(~validation), np.flatnonzero(validation)
    fitted = fit_expert([titles[i] for i in train], labels[train], [titles[i] for i in held], labels[held],
                        num_classes, cs)
    log(f"[lexical] C={fitted.c:g} chosen on validation ("
        + ", ".join(f"{c:g} → {v:.4f}" for c, v in fitted.validation_top1.items()) + ")")
    train_titles = [titles[i] for i in train]
    out_of_fold = crossfit_log_probs(train_titles, labels[train], data.fold_of(tf.constant([ids[i] for i in train]),
                                                                                folds).numpy(), num_classes, fitted.c)
    others = [titles[i] for i in held] + eval_titles
    log_probs = np.concatenate([out_of_fold, _scores(fitted.layer, others)])
    all_ids = [ids[i] for i in train] + [ids[i] for i in held] + eval_ids
    expert = RunExpert(fitted.layer, fitted.c, fitted.validation_top1, all_ids, log_probs.astype(np.float32), settings)
    expert.save(out_dir)
    log(f"[lexical] {len(train)} train products cross-fitted over {folds} folds, "
        f"{len(others)} others scored, in {time.monotonic() - started:.0f} s")
    return expert
