"""Fusion of the text feature f_t and the image feature f_i, equation by equation (../shared/HANET.md).

Every head maps (f_t [batch, text_dim], f_i [batch, image_dim]) to class logits [batch, num_classes],
so the same heads train on top of live encoders (end to end) or on cached features (frozen encoders).
"""
from __future__ import annotations

import tf_keras as keras
import tensorflow as tf

TEXT_ONLY = "text_only"
IMAGE_ONLY = "image_only"
CONCAT = "concat"
KEYLESS = "keyless"
KEY_BASED = "key_based"
HANET = "hanet"
FEATURE_FUSIONS = (TEXT_ONLY, IMAGE_ONLY, CONCAT, KEYLESS, KEY_BASED, HANET)


class StreamValues(keras.layers.Layer):
    """v_t = W_t f_t + b_t,  v_i = W_i f_i + b_i: both streams mapped to a common width d."""

    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.text_value = keras.layers.Dense(width, name="text_value")
        self.image_value = keras.layers.Dense(width, name="image_value")

    def call(self, f_t, f_i):
        return self.text_value(f_t), self.image_value(f_i)  # [batch, d] each

    def get_config(self):
        return {**super().get_config(), "width": self.width}


class KeylessScores(keras.layers.Layer):
    """Eq. 1–3: rs = linear(v) per stream, [s_t,l, s_i,l] = softmax([rs_t, rs_i]).

    The scorer is shared by both streams (open in the paper): the streams compete on one scale,
    as in keyless attention over a set, and it halves the parameters.
    """

    def __init__(self, shared_scorer: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.shared_scorer = shared_scorer
        self.text_scorer = keras.layers.Dense(1, name="text_scorer")
        self.image_scorer = self.text_scorer if shared_scorer else keras.layers.Dense(1, name="image_scorer")

    def call(self, v_t, v_i):
        raw = tf.concat([self.text_scorer(v_t), self.image_scorer(v_i)], axis=-1)  # [batch, 2]
        return tf.nn.softmax(raw, axis=-1)  # [batch, 2]: (s_t,l, s_i,l)

    def get_config(self):
        return {**super().get_config(), "shared_scorer": self.shared_scorer}


class KeyBasedScores(keras.layers.Layer):
    """Eq. 4–5: [s_t,b, s_i,b] = softmax([k_t · q_i, k_i · q_t] / sqrt(d_k)).

    Each stream's importance comes from how well its key answers the other stream's query. The
    1/sqrt(d_k) scaling (open in the paper) is on by default: without it the two logits grow with d_k
    and the softmax saturates at initialisation.
    """

    def __init__(self, key_dim: int, scaled: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.key_dim = key_dim
        self.scaled = scaled
        self.text_key = keras.layers.Dense(key_dim, name="text_key")
        self.text_query = keras.layers.Dense(key_dim, name="text_query")
        self.image_key = keras.layers.Dense(key_dim, name="image_key")
        self.image_query = keras.layers.Dense(key_dim, name="image_query")

    def call(self, f_t, f_i):
        k_t, q_t = self.text_key(f_t), self.text_query(f_t)  # [batch, d_k]
        k_i, q_i = self.image_key(f_i), self.image_query(f_i)
        raw = tf.stack([tf.reduce_sum(k_t * q_i, -1), tf.reduce_sum(k_i * q_t, -1)], axis=-1)  # [batch, 2]
        if self.scaled:
            raw = raw / tf.sqrt(tf.cast(self.key_dim, raw.dtype))
        return tf.nn.softmax(raw, axis=-1)  # [batch, 2]: (s_t,b, s_i,b)

    def get_config(self):
        return {**super().get_config(), "key_dim": self.key_dim, "scaled": self.scaled}


class HybridScores(keras.layers.Layer):
    """Eq. 6: s_t = D([s_t,l, s_t,b]), s_i = D([s_i,l, s_i,b]), D one hidden layer, shared by streams.

    `normalize` (open in the paper) = "softmax" makes (s_t, s_i) a distribution over the streams
    again, like its two inputs; "sigmoid" gates each stream independently; "none" leaves D's output.
    """

    def __init__(self, hidden_units: int = 16, normalize: str = "softmax", **kwargs):
        super().__init__(**kwargs)
        if normalize not in ("softmax", "sigmoid", "none"):
            raise ValueError(f"normalize must be softmax, sigmoid or none, got {normalize!r}")
        self.hidden_units = hidden_units
        self.normalize = normalize
        self.hidden = keras.layers.Dense(hidden_units, activation="relu", name="d_hidden")
        self.out = keras.layers.Dense(1, name="d_out")

    def call(self, keyless, key_based):
        # Row s of `pairs` is stream s's (keyless, key-based) scores: [batch, 2 streams, 2 scores].
        pairs = tf.stack([keyless, key_based], axis=-1)
        raw = tf.squeeze(self.out(self.hidden(pairs)), -1)  # [batch, 2]
        if self.normalize == "softmax":
            return tf.nn.softmax(raw, axis=-1)
        if self.normalize == "sigmoid":
            return tf.sigmoid(raw)
        return raw

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "normalize": self.normalize}


def weighted_concat(v_t, v_i, scores):
    """Eq. 3/5/7: wf_t = s_t · v_t, wf_i = s_i · v_i, combined by concatenation (open: concatenation)."""
    return tf.concat([scores[:, 0:1] * v_t, scores[:, 1:2] * v_i], axis=-1)  # [batch, 2d]


class FusionHead(keras.layers.Layer):
    """(f_t, f_i) → logits, for every feature-level model of the paper.

    text_only / image_only: a classification layer on one stream (the unimodal baselines).
    concat: concat(f_t, f_i) → classification layers (feature-level fusion, attention-free).
    keyless / key_based / hanet: the weighted values of eq. 3 / 5 / 7, concatenated → classifier.
    """

    def __init__(
        self,
        fusion: str,
        num_classes: int,
        width: int = 512,
        key_dim: int = 64,
        hybrid_hidden_units: int = 16,
        hybrid_normalize: str = "softmax",
        dropout: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if fusion not in FEATURE_FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; expected one of {FEATURE_FUSIONS}")
        self.fusion = fusion
        self.num_classes = num_classes
        self.width = width
        self.key_dim = key_dim
        self.hybrid_hidden_units = hybrid_hidden_units
        self.hybrid_normalize = hybrid_normalize
        self.dropout_rate = dropout
        self.dropout = keras.layers.Dropout(dropout)
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        if fusion == CONCAT:
            self.hidden = keras.layers.Dense(width, activation="relu", name="concat_hidden")
        if fusion in (KEYLESS, KEY_BASED, HANET):
            self.values = StreamValues(width, name="values")
        if fusion in (KEYLESS, HANET):
            self.keyless = KeylessScores(name="keyless")
        if fusion in (KEY_BASED, HANET):
            self.key_based = KeyBasedScores(key_dim, name="key_based")
        if fusion == HANET:
            self.hybrid = HybridScores(hybrid_hidden_units, hybrid_normalize, name="hybrid")

    def attention_scores(self, f_t, f_i):
        """The per-stream weights (s_t, s_i) [batch, 2] of the attention heads."""
        v_t, v_i = self.values(f_t, f_i)
        if self.fusion == KEYLESS:
            return v_t, v_i, self.keyless(v_t, v_i)
        if self.fusion == KEY_BASED:
            return v_t, v_i, self.key_based(f_t, f_i)
        return v_t, v_i, self.hybrid(self.keyless(v_t, v_i), self.key_based(f_t, f_i))

    def call(self, f_t, f_i, training=None):
        if self.fusion == TEXT_ONLY:
            fused = f_t
        elif self.fusion == IMAGE_ONLY:
            fused = f_i
        elif self.fusion == CONCAT:
            fused = self.hidden(self.dropout(tf.concat([f_t, f_i], axis=-1), training=training))
        else:
            v_t, v_i, scores = self.attention_scores(f_t, f_i)
            fused = weighted_concat(v_t, v_i, scores)
        return self.classifier(self.dropout(fused, training=training))

    def get_config(self):
        return {
            **super().get_config(),
            "fusion": self.fusion,
            "num_classes": self.num_classes,
            "width": self.width,
            "key_dim": self.key_dim,
            "hybrid_hidden_units": self.hybrid_hidden_units,
            "hybrid_normalize": self.hybrid_normalize,
            "dropout": self.dropout_rate,
        }
