"""Fusion of the text feature f_t and the image feature f_i, equation by equation (../shared/HANET.md).

Every head maps (f_t [batch, text_dim], f_i [batch, image_dim]) to class logits [batch, num_classes],
so the same heads train on top of live encoders (end to end) or on cached features (frozen encoders).

One layer class per model of the paper, registered under its fusion name (`@register`, as
tensorflow/models' official/nlp/modeling registers its layers) and Keras-serializable as
"hanet>ClassName"; `fusion_head(name, ...)` builds one. Feature-level heads (`FeatureHead` and its
subclasses) fuse the features; decision-level heads (`DecisionFusion`) fuse the class probabilities
of the two trained unimodal heads, which they contain frozen. Logits are float32 also under a
mixed-precision policy, so the softmax and the loss are too.
"""
from __future__ import annotations

import dataclasses
import math

import tf_keras as keras
import tensorflow as tf

from common.features import (  # noqa: F401 (the stage names, re-exported for the heads' users)
    ATTENTION_FUSIONS,
    CONCAT,
    DECISION_FUSIONS,
    DECISION_LEVEL,
    EXPERT_FUSIONS,
    FEATURE_FUSIONS,
    FUSIONS,
    HANET,
    HANET_EXPERTS,
    IMAGE_ONLY,
    KEY_BASED,
    KEYLESS,
    PAPER_DECISION_FUSIONS,
    PAPER_FUSIONS,
    POLICY,
    TEXT_ONLY,
    UNIMODAL_FUSIONS,
)

HYBRID_NORMALIZATIONS = ("softmax", "sigmoid", "none")
COMBINATIONS = ("concat", "sum")
# The package of the heads' and layers' Keras-registered names ("hanet>HanetHead").
PACKAGE = "hanet"

# fusion name → its head class, filled by @register.
FUSION_HEADS: dict[str, type] = {}


def serializable(cls):
    """Registers `cls` with Keras as PACKAGE>ClassName, so a saved model finds it by name."""
    return keras.utils.register_keras_serializable(package=PACKAGE)(cls)


def register(fusion: str):
    """Class decorator: the head of `fusion`, built by `fusion_head(fusion, ...)`."""

    def decorator(cls):
        if fusion in FUSION_HEADS:
            raise ValueError(f"fusion {fusion!r} is already registered to {FUSION_HEADS[fusion].__name__}")
        cls.fusion = fusion
        FUSION_HEADS[fusion] = serializable(cls)
        return cls

    return decorator


def head_class(fusion: str) -> type:
    try:
        return FUSION_HEADS[fusion]
    except KeyError:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {FUSIONS}") from None


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Every option of the heads, from the command line to the layers; the defaults are argued in
    the layer that uses each one."""

    width: int = 512  # d of StreamValues; the hidden width of concat and of the decision-level heads
    key_dim: int = 64  # d_k of KeyBasedScores
    hybrid_hidden_units: int = 16  # D's hidden layer (HybridScores)
    hybrid_normalize: str = "softmax"  # HybridScores
    shared_scorer: bool = True  # KeylessScores
    scaled: bool = True  # KeyBasedScores
    combine: str = "concat"  # FeatureHead
    dropout: float = 0.1
    stream_norm: bool = False  # FeatureHead
    stream_dropout: float = 0.0  # FeatureHead: the share of training examples that lose one stream
    policy_top_k: int = 5  # PolicyFusion

    def __post_init__(self):
        if self.hybrid_normalize not in HYBRID_NORMALIZATIONS:
            raise ValueError(f"hybrid_normalize must be one of {HYBRID_NORMALIZATIONS}, got {self.hybrid_normalize!r}")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {COMBINATIONS}, got {self.combine!r}")
        if min(self.width, self.key_dim, self.hybrid_hidden_units, self.policy_top_k) < 1:
            raise ValueError("width, key_dim, hybrid_hidden_units and policy_top_k must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.stream_dropout < 1.0:
            raise ValueError(f"stream_dropout must be in [0, 1), got {self.stream_dropout}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@serializable
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


@serializable
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


@serializable
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


@serializable
class HybridScores(keras.layers.Layer):
    """Eq. 6: s_t = D([s_t,l, s_t,b]), s_i = D([s_i,l, s_i,b]), D one hidden layer, shared by streams.

    `normalize` (open in the paper) = "softmax" makes (s_t, s_i) a distribution over the streams
    again, like its two inputs; "sigmoid" gates each stream independently; "none" leaves D's output.
    """

    def __init__(self, hidden_units: int = 16, normalize: str = "softmax", **kwargs):
        super().__init__(**kwargs)
        if normalize not in HYBRID_NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {HYBRID_NORMALIZATIONS}, got {normalize!r}")
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
    """Eq. 3/5/7: wf_t = s_t · v_t, wf_i = s_i · v_i, combined by concatenation."""
    return tf.concat([scores[:, 0:1] * v_t, scores[:, 1:2] * v_i], axis=-1)  # [batch, 2d]


def weighted_sum(v_t, v_i, scores):
    """Eq. 3/5/7 combined by a sum, as attention pooling over a set does: s_t · v_t + s_i · v_i."""
    return scores[:, 0:1] * v_t + scores[:, 1:2] * v_i  # [batch, d]


# HeadConfig.combine → how the weighted values meet.
COMBINE = {"concat": weighted_concat, "sum": weighted_sum}


def _float32(logits):
    return tf.cast(logits, tf.float32)


def _compute_dtype(layer, *tensors):
    """Keras autocasts only a layer's first input: under mixed precision f_t (BERT, float32) and
    f_i (EfficientNet, float16) would otherwise reach one concat in two dtypes."""
    return tuple(None if t is None else tf.cast(t, layer.compute_dtype) for t in tensors)


def drop_one_stream(f_t, f_i, rate: float):
    """Zeroes one stream, text or image with equal odds, of a `rate` share of the examples.

    A fusion head trained on both streams fits the train split through the richer one (on hm with
    descriptions the fused heads reach 99 % train top-1 and fall below text alone on validation):
    examples that must be classified from one stream keep each stream's own route to the classes
    (ModDrop, Neverova et al. 2015). At serving time both streams are always present."""
    # One draw per example: below rate/2 the text goes, from rate/2 to rate the image.
    u = tf.random.uniform([tf.shape(f_t)[0], 1])
    return (f_t * tf.cast(u >= rate / 2, f_t.dtype),
            f_i * tf.cast((u < rate / 2) | (u >= rate), f_i.dtype))


def as_head_config(config: HeadConfig | dict) -> HeadConfig:
    return HeadConfig(**config) if isinstance(config, dict) else config


class FusionHead(keras.layers.Layer):
    """What every head shares: (f_t, f_i) → logits [batch, num_classes], configured by a HeadConfig.

    `fusion` is the name the head is registered under; `weighs_streams` says whether the head has
    per-product stream weights (`stream_weights(f_t, f_i)` → [batch, 2]) to explain a prediction.
    """

    fusion: str = ""
    weighs_streams = False

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.config = as_head_config(config)
        self.dropout = keras.layers.Dropout(self.config.dropout)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "config": self.config.as_dict()}


@serializable
class FeatureHead(FusionHead):
    """A feature-level model: (f_t, f_i) → `fuse` → dropout → classification layer → logits.

    Subclasses say how the streams are fused (`fuse`); this class prepares them. Two options of the
    HeadConfig act here, on heads that see both streams (`both_streams`): `stream_norm`, a layer
    normalization of f_t and f_i before they meet (the streams come from different encoders on
    different scales, and the larger one otherwise wins the attention at the start), and
    `stream_dropout` (`drop_one_stream`).
    """

    both_streams = True

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        self.stream_norm = self.config.stream_norm and self.both_streams
        self.stream_dropout = self.config.stream_dropout if self.both_streams else 0.0
        if self.stream_norm:
            self.text_norm = keras.layers.LayerNormalization(name="text_norm")
            self.image_norm = keras.layers.LayerNormalization(name="image_norm")

    def streams(self, f_t, f_i):
        """f_t, f_i in the head's compute dtype, layer-normalized with `stream_norm`."""
        f_t, f_i = _compute_dtype(self, f_t, f_i)
        if self.stream_norm:
            return self.text_norm(f_t), self.image_norm(f_i)
        return f_t, f_i

    def fuse(self, f_t, f_i, training=None):
        """The prepared streams → the fused feature the classification layer reads [batch, width]."""
        raise NotImplementedError

    def call(self, f_t, f_i, training=None):
        f_t, f_i = self.streams(f_t, f_i)
        if training and self.stream_dropout:  # never at serving
            f_t, f_i = drop_one_stream(f_t, f_i, self.stream_dropout)
        fused = self.fuse(f_t, f_i, training=training)
        return _float32(self.classifier(self.dropout(fused, training=training)))

    @classmethod
    def from_config(cls, config):
        """Also reads the config of a model saved when one FeatureHead class switched on a
        `fusion` key: it becomes that fusion's own class."""
        config = dict(config)
        fusion = config.pop("fusion", None)
        return (cls if fusion is None else head_class(fusion))(**config)


@register(TEXT_ONLY)
class TextOnlyHead(FeatureHead):
    """The text model (unimodal baseline): a classification layer on f_t."""

    both_streams = False

    def fuse(self, f_t, f_i, training=None):
        return f_t


@register(IMAGE_ONLY)
class ImageOnlyHead(FeatureHead):
    """The image model (unimodal baseline): a classification layer on f_i."""

    both_streams = False

    def fuse(self, f_t, f_i, training=None):
        return f_i


@register(CONCAT)
class ConcatHead(FeatureHead):
    """Feature-level fusion, attention-free: concat(f_t, f_i) → a hidden layer of `width` → classifier."""

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.hidden = keras.layers.Dense(self.config.width, activation="relu", name="concat_hidden")

    def fuse(self, f_t, f_i, training=None):
        return self.hidden(self.dropout(tf.concat([f_t, f_i], axis=-1), training=training))  # [batch, width]


class AttentionHead(FeatureHead):
    """The attention models: values v_t, v_i (StreamValues), per-stream weights (s_t, s_i) from
    `scores`, the weighted values of eq. 3 / 5 / 7 combined → classifier.

    `combine` (open in the paper): "concat" (default) keeps the streams in separate coordinates, so
    the classifier sees which stream a value came from and the attention scales, not mixes, them;
    "sum" halves the width.
    """

    weighs_streams = True

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.combine = self.config.combine
        self.values = StreamValues(self.config.width, name="values")

    def scores(self, v_t, v_i, f_t, f_i):
        """(s_t, s_i) [batch, 2] from the values and the (prepared) features."""
        raise NotImplementedError

    def attention_scores(self, f_t, f_i):
        """v_t, v_i [batch, d] and the per-stream weights (s_t, s_i) [batch, 2], from prepared features."""
        v_t, v_i = self.values(f_t, f_i)
        return v_t, v_i, self.scores(v_t, v_i, f_t, f_i)

    def stream_weights(self, f_t, f_i):
        """(s_t, s_i) [batch, 2] as `call` applies them: which stream decided."""
        return tf.cast(self.attention_scores(*self.streams(f_t, f_i))[2], tf.float32)

    def fuse(self, f_t, f_i, training=None):
        v_t, v_i, scores = self.attention_scores(f_t, f_i)
        return COMBINE[self.combine](v_t, v_i, scores)


@register(KEYLESS)
class KeylessHead(AttentionHead):
    """Keyless attention only (eq. 1–3): each stream weighted by its own score."""

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.keyless = KeylessScores(self.config.shared_scorer, name="keyless")

    def scores(self, v_t, v_i, f_t, f_i):
        return self.keyless(v_t, v_i)


@register(KEY_BASED)
class KeyBasedHead(AttentionHead):
    """Key-based attention only (eq. 4–5): each stream weighted by how its key answers the other's query."""

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.key_based = KeyBasedScores(self.config.key_dim, self.config.scaled, name="key_based")

    def scores(self, v_t, v_i, f_t, f_i):
        return self.key_based(f_t, f_i)


@register(HANET)
class HanetHead(AttentionHead):
    """HANet (eq. 6–7): D combines each stream's keyless and key-based scores into its weight."""

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.keyless = KeylessScores(self.config.shared_scorer, name="keyless")
        self.key_based = KeyBasedScores(self.config.key_dim, self.config.scaled, name="key_based")
        self.hybrid = HybridScores(self.config.hybrid_hidden_units, self.config.hybrid_normalize, name="hybrid")

    def scores(self, v_t, v_i, f_t, f_i):
        return self.hybrid(self.keyless(v_t, v_i), self.key_based(f_t, f_i))


class DecisionFusion(FusionHead):
    """What decision-level heads share: the trained text and image heads, frozen, as probabilities.

    The unimodal heads are the TextOnlyHead and ImageOnlyHead of the pretraining stages; their
    weights are copied in (`load_unimodal_heads`). `fuse` is the decision network alone, on class
    probabilities: it trains on held-out (cross-fitted) unimodal predictions, so that it learns how
    the unimodal models fail on products they have not seen (trainer/train.py). Its hidden layer is
    one ReLU layer of `width`: the paper says only "a fully-connected network".
    """

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.text_head = TextOnlyHead(num_classes, self.config, name="text_head", trainable=False)
        self.image_head = ImageOnlyHead(num_classes, self.config, name="image_head", trainable=False)
        self.hidden = keras.layers.Dense(self.config.width, activation="relu", name="decision_hidden")

    def load_unimodal_heads(self, text_head: TextOnlyHead, image_head: ImageOnlyHead) -> None:
        self.text_head.set_weights(text_head.get_weights())
        self.image_head.set_weights(image_head.get_weights())

    def unimodal_probabilities(self, f_t, f_i):
        """p_t, p_i [batch, num_classes] float32: the unimodal models' predictions, never in training mode."""
        f_t, f_i = _compute_dtype(self, f_t, f_i)
        p_t = tf.nn.softmax(self.text_head(f_t, None, training=False), axis=-1)
        p_i = tf.nn.softmax(self.image_head(None, f_i, training=False), axis=-1)
        return tf.cast(p_t, tf.float32), tf.cast(p_i, tf.float32)

    def fuse(self, p_t, p_i, training=None):
        """[p_t, p_i] → logits [batch, num_classes]."""
        raise NotImplementedError

    def decision_layers(self) -> list:
        """The layers of the decision network: what trains, whatever the unimodal heads are."""
        raise NotImplementedError

    def copy_decision_network(self, other: "DecisionFusion") -> None:
        for mine, theirs in zip(self.decision_layers(), other.decision_layers()):
            mine.set_weights(theirs.get_weights())

    def call(self, f_t, f_i, training=None):
        return self.fuse(*self.unimodal_probabilities(f_t, f_i), training=training)


@register(DECISION_LEVEL)
class DecisionLevelFusion(DecisionFusion):
    """Decision-level fusion (Table 3): an FC network on [p_t, p_i] → logits."""

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.classifier = keras.layers.Dense(num_classes, name="classifier")

    def decision_layers(self) -> list:
        return [self.hidden, self.classifier]

    def fuse(self, p_t, p_i, training=None):
        hidden = self.hidden(tf.cast(tf.concat([p_t, p_i], axis=-1), self.compute_dtype))  # [batch, width]
        return _float32(self.classifier(self.dropout(hidden, training=training)))


@register(POLICY)
class PolicyFusion(DecisionFusion):
    """The policy network of [25] (Table 3): which model's prediction to use, per product.

    Input: the top-k probabilities of each model, sorted, [batch, 2k] (class-agnostic, so it learns
    how confidence looks, not the classes). An FC network with one hidden layer gives the policy
    π = softmax([π_t, π_i]). At inference the product gets the chosen model's probabilities,
    p_argmax π. In training the policy is fitted by the likelihood of the mixture π_t·p_t + π_i·p_i,
    whose gradient moves π towards the model that gives the true class more probability: a
    differentiable form of "learn to choose the right model". Logits are log-probabilities.
    """

    weighs_streams = True

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.top_k = min(self.config.policy_top_k, num_classes)
        self.choice = keras.layers.Dense(2, name="policy")

    def policy(self, p_t, p_i, training=None):
        """π [batch, 2]: the probability of choosing the text model, the image model."""
        confidences = tf.concat(
            [tf.math.top_k(p_t, self.top_k).values, tf.math.top_k(p_i, self.top_k).values], axis=-1
        )  # [batch, 2k]
        hidden = self.dropout(self.hidden(tf.cast(confidences, self.compute_dtype)), training=training)
        return tf.nn.softmax(tf.cast(self.choice(hidden), tf.float32), axis=-1)

    def decision_layers(self) -> list:
        return [self.hidden, self.choice]

    def stream_weights(self, f_t, f_i):
        """π [batch, 2] at inference: the weight of the text model's and the image model's prediction."""
        return self.policy(*self.unimodal_probabilities(f_t, f_i), training=False)

    def fuse(self, p_t, p_i, training=None):
        pi = self.policy(p_t, p_i, training=training)
        if training:
            probabilities = pi[:, 0:1] * p_t + pi[:, 1:2] * p_i
        else:
            probabilities = tf.where(pi[:, 0:1] >= pi[:, 1:2], p_t, p_i)
        return tf.math.log(tf.maximum(probabilities, keras.backend.epsilon() ** 2))


@serializable
class DecisionNetwork(keras.layers.Layer):
    """A decision-level head's decision network alone, as a layer: ([p_t, p_i]) → logits, with Keras's
    `training` flag reaching `fuse` (the policy trains on the mixture, predicts by its choice)."""

    def __init__(self, head: DecisionFusion, **kwargs):
        super().__init__(**kwargs)
        self.head = head

    def call(self, p_t, p_i, lexical=None, training=None):
        if getattr(self.head, "reads_lexical", False):
            return self.head.fuse(p_t, p_i, lexical, training=training)
        return self.head.fuse(p_t, p_i, training=training)

    def get_config(self):
        return {**super().get_config(), "head": keras.layers.serialize(self.head)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.layers.deserialize(config.pop("head")), **config)


def fusion_head(fusion: str, num_classes: int, config: HeadConfig = HeadConfig(), name: str = "fusion") -> FusionHead:
    """The head of `fusion`, one of FUSIONS: (f_t, f_i) → logits [batch, num_classes]."""
    return head_class(fusion)(num_classes, config, name=name)


# Models saved before the classes were registered name them without the package.
keras.utils.get_custom_objects().update(
    {cls.__name__: cls for cls in (FeatureHead, DecisionLevelFusion, PolicyFusion, DecisionNetwork)}
)


# ---- Beyond the paper: HANet over M experts' log-probabilities -------------------------------------
#
# The paper's two streams generalize to M streams m = 1..M, each described by x_m [batch, dim_m]:
#   eq. 1–3 (keyless):   s^l = softmax_m(w · (W_m x_m + b_m))                    (w shared by the streams)
#   eq. 4–5 (key-based): k_m = K_m x_m, q_m = Q_m x_m,
#                        s^b = softmax_m(k_m · q̄_m / sqrt(d_k)),  q̄_m = mean of the other M−1 queries
#                        (M = 2: k_t · q_i and k_i · q_t, the paper's)
#   eq. 6 (hybrid):      s_m = softmax_m(D([s^l_m, s^b_m, c_m]) + β_m + log σ_m)
#                        (D shared; c_m the stream's confidence; β a prior per stream; σ_m below)
#   eq. 7 (fusion):      a weighted combination of the streams' values v_m by s_m.
# Over experts, stream m is an expert's log-probabilities ℓ_m [batch, classes]. Its value is ℓ_m on a
# common scale, v_m = (ℓ_m − mean_c ℓ_m) / σ_m with σ_m their spread (std over the classes), and
#                        logits = e^t (Σ_k σ_k) Σ_m s_m v_m,
# a per-product weighted product of experts in which s_m is stream m's share of the fused scores. With
# ℓ_m itself as the value a weight is also an inverse temperature, and training lowered the weight of
# the confident experts (on hm: routing AUC 0.17, scripts/probe_routing.py), the opposite of routing.
# D's output layer and β start at zero and t at −log M: then s_m = σ_m / Σ_k σ_k and the logits are
# (1/M) Σ_m ℓ_m up to a constant per product, the plain product's ranking (ExpertProduct). c_m = (top probability, top-1 − top-2 probability,
# entropy / log C), each in [0, 1]; x_m = [v_m, its k largest, c_m]: the scorers read the streams on
# one scale (raw log-probabilities, down to the floor, saturated both softmaxes into the same one-hot
# for every product, so D's input was constant and the weights could not depend on the product).

# The log-probability an expert is read at, at least: a class it gives no probability stays rankable by
# the others (common/poe.py's floor).
EXPERT_LOG_PROB_FLOOR = -20.7  # ln(1e-9)
EXPERT_PROFILE_TOP_K = 5


def expert_streams(log_probs, top_k: int = EXPERT_PROFILE_TOP_K):
    """An expert's log-probabilities ℓ [batch, C] → (v [batch, C] its standardized value, σ [batch] the
    spread it was divided by, c [batch, 3] its confidence, x [batch, C + k + 3] what the scorers read)."""
    mean, variance = tf.nn.moments(log_probs, axes=[-1], keepdims=True)
    spread = tf.sqrt(variance) + 1e-6
    values = (log_probs - mean) / spread
    top = tf.math.top_k(log_probs, min(2, log_probs.shape[-1])).values
    p_top = tf.exp(top)
    entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=-1, keepdims=True)
    margin = p_top[:, :1] - p_top[:, 1:2] if log_probs.shape[-1] > 1 else p_top[:, :1]
    confidence = tf.concat([p_top[:, :1], margin, entropy / max(math.log(log_probs.shape[-1]), 1e-6)], axis=-1)
    sorted_values = tf.math.top_k(values, min(top_k, log_probs.shape[-1])).values
    return values, spread[:, 0], confidence, tf.concat([values, sorted_values, confidence], axis=-1)


@serializable
class MultiKeylessScores(keras.layers.Layer):
    """Eq. 1–3 over M streams: s^l = softmax_m(w · (W_m x_m + b_m)), one map per stream, w shared."""

    def __init__(self, streams: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.streams, self.width = streams, width
        self.values = [keras.layers.Dense(width, name=f"value_{m}") for m in range(streams)]
        self.scorer = keras.layers.Dense(1, name="scorer")

    def call(self, xs):
        raw = tf.concat([self.scorer(value(x)) for value, x in zip(self.values, xs)], axis=-1)  # [batch, M]
        return tf.nn.softmax(raw, axis=-1)

    def get_config(self):
        return {**super().get_config(), "streams": self.streams, "width": self.width}


@serializable
class MultiKeyBasedScores(keras.layers.Layer):
    """Eq. 4–5 over M streams: s^b = softmax_m(k_m · q̄_m / sqrt(d_k)), q̄_m the mean query of the others."""

    def __init__(self, streams: int, key_dim: int, **kwargs):
        super().__init__(**kwargs)
        if streams < 2:
            raise ValueError(f"key-based attention needs at least two streams, got {streams}")
        self.streams, self.key_dim = streams, key_dim
        self.keys = [keras.layers.Dense(key_dim, name=f"key_{m}") for m in range(streams)]
        self.queries = [keras.layers.Dense(key_dim, name=f"query_{m}") for m in range(streams)]

    def call(self, xs):
        keys = tf.stack([key(x) for key, x in zip(self.keys, xs)], axis=1)  # [batch, M, d_k]
        queries = tf.stack([query(x) for query, x in zip(self.queries, xs)], axis=1)
        others = (tf.reduce_sum(queries, axis=1, keepdims=True) - queries) / (self.streams - 1)
        raw = tf.reduce_sum(keys * others, axis=-1) / tf.sqrt(tf.cast(self.key_dim, keys.dtype))  # [batch, M]
        return tf.nn.softmax(raw, axis=-1)

    def get_config(self):
        return {**super().get_config(), "streams": self.streams, "key_dim": self.key_dim}


@serializable
class MultiHybridScores(keras.layers.Layer):
    """Eq. 6 over M streams: s_m = softmax_m(D([s^l_m, s^b_m, c_m]) + β_m + log σ_m).

    D reads, beside the two attention scores, the stream's confidence c_m: how sure the expert is is
    what decides whether to trust it on this product, and D is shared by the streams, so it learns one
    rule for all of them (β_m and the scorers' per-stream maps say how the experts differ). D's output
    layer and β start at zero, so a head starts with s_m = σ_m / Σ_k σ_k, each expert's share in the
    plain product, and moves away from it only as far as training shows it helps."""

    def __init__(self, streams: int, hidden_units: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.streams, self.hidden_units = streams, hidden_units
        self.hidden = keras.layers.Dense(hidden_units, activation="relu", name="d_hidden")
        self.out = keras.layers.Dense(1, kernel_initializer="zeros", name="d_out")

    def build(self, input_shape):
        self.prior = self.add_weight(name="stream_prior", shape=[self.streams], initializer="zeros")
        super().build(input_shape)

    def call(self, keyless, key_based, confidence, spread):
        """keyless, key_based, spread [batch, M]; confidence [batch, M, c] → s [batch, M]."""
        inputs = tf.concat([tf.stack([keyless, key_based], axis=-1), confidence], axis=-1)  # [batch, M, 2 + c]
        raw = tf.squeeze(self.out(self.hidden(inputs)), -1) + tf.cast(self.prior, inputs.dtype)
        return tf.nn.softmax(raw + tf.math.log(tf.cast(spread, inputs.dtype)), axis=-1)

    def get_config(self):
        return {**super().get_config(), "streams": self.streams, "hidden_units": self.hidden_units}


@serializable
class ExpertProduct(keras.layers.Layer):
    """Eq. 7 over experts: logits = e^t (Σ_k σ_k) Σ_m s_m v_m, t a learned log-temperature.

    t starts at −log M: the experts' geometric mean (the log-linear pool), the plain product's ranking
    on a calibrated scale. Started at 0 (the product itself, M times sharper), training first spent its
    gradient on the products the over-sure product gets wrong, and the weights learned to distrust sure
    experts before they learned which to trust (on hm: routing AUC 0.19–0.38 over the first three
    epochs, 0.79–0.83 from the first epoch when started at −log M)."""

    def __init__(self, streams: int, **kwargs):
        super().__init__(**kwargs)
        self.streams = streams

    def build(self, input_shape):
        self.log_temperature = self.add_weight(
            name="log_temperature", shape=[], initializer=keras.initializers.Constant(-math.log(self.streams)))
        super().build(input_shape)

    def call(self, weights, values, spread):
        """weights, spread [batch, M]; values [batch, M, C] → logits [batch, C]."""
        scale = tf.exp(self.log_temperature) * tf.reduce_sum(spread, axis=-1, keepdims=True)
        return scale * tf.reduce_sum(weights[:, :, None] * values, axis=1)

    def get_config(self):
        return {**super().get_config(), "streams": self.streams}


@register(HANET_EXPERTS)
class HanetExpertsHead(DecisionFusion):
    """HANet over three experts' log-probabilities: the text model's, the image model's (both frozen, as
    in decision_level) and the lexical expert's (trainer/lexical.py, an input: LEXICAL_LOG_PROBS_KEY).
    The M-stream hybrid attention (above) weighs them per product in their weighted product. Trained, as
    the decision-level heads are, on cross-fitted (out-of-fold) scores of all three experts."""

    weighs_streams = True
    reads_lexical = True
    streams = 3  # text model, image model, lexical expert

    def __init__(self, num_classes: int, config: HeadConfig | dict = HeadConfig(), **kwargs):
        super().__init__(num_classes, config, **kwargs)
        self.keyless = MultiKeylessScores(self.streams, self.config.key_dim, name="keyless")
        self.key_based = MultiKeyBasedScores(self.streams, self.config.key_dim, name="key_based")
        self.hybrid = MultiHybridScores(self.streams, self.config.hybrid_hidden_units, name="hybrid")
        self.product = ExpertProduct(self.streams, name="product", dtype="float32")  # the logits, as every head's

    def decision_layers(self) -> list:
        return [self.keyless, self.key_based, self.hybrid, self.product]

    def expert_log_probs(self, p_t, p_i, lexical) -> list:
        """[ℓ_text, ℓ_image, ℓ_lexical], each [batch, classes] float32, floored."""
        if lexical is None:
            raise ValueError(f"{self.fusion} fuses the lexical expert: call it with lexical=<its log-probabilities>")
        floor = EXPERT_LOG_PROB_FLOOR
        return [tf.maximum(tf.math.log(tf.maximum(tf.cast(p, tf.float32), 1e-30)), floor) for p in (p_t, p_i)] + [
            tf.maximum(tf.cast(lexical, tf.float32), floor)]

    def attend(self, log_probs: list, training=None):
        """(s [batch, M], v [batch, M, C], σ [batch, M]), float32: each expert's weight per product, its
        standardized value and its spread."""
        values, spreads, confidences, xs = zip(*(expert_streams(lp) for lp in log_probs))
        xs = [self.dropout(tf.cast(x, self.compute_dtype), training=training) for x in xs]
        spread = tf.stack(spreads, axis=1)
        s = self.hybrid(self.keyless(xs), self.key_based(xs), tf.cast(tf.stack(confidences, axis=1), self.compute_dtype),
                        tf.cast(spread, self.compute_dtype))
        return tf.cast(s, tf.float32), tf.stack(values, axis=1), spread

    def fuse(self, p_t, p_i, lexical=None, training=None):
        return _float32(self.product(*self.attend(self.expert_log_probs(p_t, p_i, lexical), training=training)))

    def call(self, f_t, f_i, lexical=None, training=None):
        return self.fuse(*self.unimodal_probabilities(f_t, f_i), lexical, training=training)

    def stream_weights(self, f_t, f_i, lexical=None):
        """[batch, 3]: the title's share (text model + lexical expert), the image's, the lexical expert's."""
        s, _, _ = self.attend(self.expert_log_probs(*self.unimodal_probabilities(f_t, f_i), lexical), training=False)
        return tf.stack([s[:, 0] + s[:, 2], s[:, 1], s[:, 2]], axis=-1)
