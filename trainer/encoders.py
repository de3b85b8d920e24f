"""The two pretrained streams of HANet: a TF-Hub BERT text encoder and a Keras EfficientNet.

Production passes TF-Hub/Kaggle handles and weights="imagenet"; tests and offline runs pass the
local stand-ins that scripts/setup_encoders.sh builds under pretrained/ (same formats, so the
model builder cannot tell the difference).
"""
from __future__ import annotations

import copy
import os

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
IMAGE_VARIANTS = ("b0", "lite0")

# Where TF-Hub BERT encoders keep their tokenization parameters (see
# official/nlp/tools/export_tfhub_lib.py): an asset and a root-level variable.
_VOCAB_ASSET = os.path.join("assets", "vocab.txt")
_DO_LOWER_CASE_CKPT_KEY = "do_lower_case/.ATTRIBUTES/VARIABLE_VALUE"


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


def vocab_file(handle: str) -> str:
    """Path of the WordPiece vocabulary shipped as an asset of the encoder SavedModel."""
    path = hub.resolve(str(handle))
    candidate = os.path.join(path, _VOCAB_ASSET)
    if tf.io.gfile.exists(candidate):
        return candidate
    # Older or differently-named assets: ask the SavedModel itself, as TF-Hub documents it.
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "vocab_file"):
        raise ValueError(f"{handle} has no vocab_file asset: not a TF-Hub BERT encoder")
    return loaded.vocab_file.asset_path.numpy().decode("utf-8")


def lower_case(handle: str) -> bool:
    """The encoder's do_lower_case variable."""
    path = hub.resolve(str(handle))
    # Reading one tensor from the variables checkpoint avoids loading (and tracing) the model.
    try:
        return bool(tf.train.load_variable(os.path.join(path, "variables", "variables"),
                                           _DO_LOWER_CASE_CKPT_KEY))
    except (tf.errors.NotFoundError, ValueError):
        pass
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "do_lower_case"):
        raise ValueError(f"{handle} has no do_lower_case variable: not a TF-Hub BERT encoder")
    return bool(loaded.do_lower_case.numpy())


# --------------------------------------------------------------------------------------------
# Image

# EfficientNet-Lite (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py)
# is B0 minus squeeze-excitation, with ReLU6 and the stem/head not scaled. At lite0's width and
# depth coefficients of 1.0 the unscaled stem/head and stage repeats equal B0's, so Keras's own
# builder expresses it exactly; lite1-4 would need the fixed repeats Keras cannot express.
_LITE0_BLOCKS_ARGS = [dict(args, se_ratio=0.0) for args in keras_efficientnet.DEFAULT_BLOCKS_ARGS]

# efficientnet-lite was trained on (pixel - 127) / 128; Keras EfficientNet computes
# Normalization(Rescaling(pixel, 1/255)), so these are the stats that reproduce it.
LITE_MEAN_RGB = (127.0 / 255.0,) * 3
LITE_VARIANCE_RGB = ((128.0 / 255.0) ** 2,) * 3

# Keras's hosted EfficientNetB* files store the ImageNet std (not its square) as the
# Normalization variance, and EfficientNet() multiplies by 1/sqrt(std) only when
# weights == "imagenet" (keras issue tensorflow/tensorflow#49930). Loading such a file by path
# (the usual way offline) would silently skip that fix.
_IMAGENET_STDDEV_RGB = np.asarray(keras_efficientnet.IMAGENET_STDDEV_RGB, np.float32)


def _lite0(include_top: bool, weights, input_shape, pooling, classes=1000,
           classifier_activation="softmax") -> tf_keras.Model:
    return keras_efficientnet.EfficientNet(
        1.0, 1.0, 224, dropout_rate=0.2,
        activation="relu6",
        blocks_args=copy.deepcopy(_LITE0_BLOCKS_ARGS),
        model_name="efficientnetlite0",
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
    variant: "b0" (Keras EfficientNetB0) or "lite0" (EfficientNet-Lite0 on the same builder).
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
        raise ValueError("Keras hosts no EfficientNet-Lite0 weights: pass the file built by "
                         "trainer/convert_efficientnet.py (scripts/setup_encoders.sh)")
    return _lite0(False, weights, input_shape, "avg")
