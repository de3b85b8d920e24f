"""The HANet model: text stream (TF-Hub BERT) and image stream (EfficientNet-B0) → fusion head → logits.

The same fusion head (the layer named FUSION_LAYER) sits on live encoders in `build_model` and on
cached features in `head_model`, so weights trained on one move to the other with `copy_head`.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from common import features
from trainer import encoders, fusion

FUSION_LAYER = "fusion"
TEXT_ENCODER_LAYER = "bert_encoder"  # the name encoders.text_encoder gives the hub.KerasLayer
TEXT_POOLINGS = ("pooled", "mean")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    fusion: str = fusion.HANET
    # A TF-Hub BERT encoder: a tfhub.dev/Kaggle URL in production, a local SavedModel folder here.
    bert_handle: str = features.PAPER_BERT_HANDLE
    train_text_encoder: bool = True
    # "imagenet", a local weights file, or None for random initialisation.
    image_weights: str | None = "imagenet"
    image_variant: str = "b0"
    train_image_encoder: bool = True
    image_size: int = 224
    max_seq_length: int = 64
    # f_t: "pooled" is BERT's pooled output (the paper's); "mean" averages sequence_output over the
    # title's tokens, for encoders trained that way that ship no trained pooler (sentence-transformers
    # checkpoints such as the MiniLM stand-in, whose pooled output is a random projection).
    text_pooling: str = "pooled"
    # The fusion heads and the open choices of HANET.md (see fusion.py for the arguments).
    fusion_width: int = 512
    key_dim: int = 64
    hybrid_hidden_units: int = 16
    hybrid_normalize: str = "softmax"
    shared_scorer: bool = True
    scaled: bool = True
    combine: str = "concat"
    policy_top_k: int = 5
    dropout: float = 0.1
    stream_norm: bool = False

    def __post_init__(self):
        if self.fusion not in fusion.FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}; expected one of {fusion.FUSIONS}")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}")

    def uses_text(self) -> bool:
        return self.fusion != fusion.IMAGE_ONLY

    def uses_image(self) -> bool:
        return self.fusion != fusion.TEXT_ONLY

    def encoders_trainable(self) -> bool:
        # Decision-level heads fuse the predictions of trained unimodal models, which stay fixed.
        return self.fusion not in fusion.DECISION_FUSIONS

    def encoder_fields(self) -> dict:
        """What determines the features f_t and f_i of a product (the frozen-encoder cache's key)."""
        names = ("bert_handle", "text_pooling", "image_weights", "image_variant", "image_size", "max_seq_length")
        return {name: getattr(self, name) for name in names}

    def head(self, num_classes: int) -> keras.layers.Layer:
        return fusion.fusion_head(
            self.fusion,
            num_classes,
            width=self.fusion_width,
            key_dim=self.key_dim,
            hybrid_hidden_units=self.hybrid_hidden_units,
            hybrid_normalize=self.hybrid_normalize,
            shared_scorer=self.shared_scorer,
            scaled=self.scaled,
            combine=self.combine,
            policy_top_k=self.policy_top_k,
            dropout=self.dropout,
            stream_norm=self.stream_norm,
            name=FUSION_LAYER,
        )


def model_input_layers(config: ModelConfig) -> dict:
    inputs = {
        key: keras.Input([config.max_seq_length], dtype=tf.int32, name=key) for key in features.BERT_INPUT_KEYS
    }
    inputs[features.IMAGE_KEY] = keras.Input(
        [config.image_size, config.image_size, 3], dtype=tf.float32, name=features.IMAGE_KEY
    )
    return inputs


def _text_features(config: ModelConfig, inputs: dict, trainable: bool):
    bert = encoders.text_encoder(config.bert_handle, trainable=trainable)
    outputs = bert({key: inputs[key] for key in features.BERT_INPUT_KEYS})
    if config.text_pooling == "pooled":
        return outputs["pooled_output"]  # [batch, H]
    mask = tf.cast(inputs[features.INPUT_MASK_KEY], outputs["sequence_output"].dtype)[:, :, None]  # [batch, seq, 1]
    return tf.reduce_sum(outputs["sequence_output"] * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)


def _image_features(config: ModelConfig, inputs: dict, trainable: bool):
    cnn = encoders.image_encoder(config.image_weights, config.image_variant, config.image_size)
    cnn.trainable = trainable
    # BatchNorm stays in inference mode even when fine-tuning: batch statistics of 32 products
    # are too noisy to replace ImageNet's (the Keras transfer-learning recipe).
    return cnn(inputs[features.IMAGE_KEY], training=False)  # [batch, 1280]


def build_model(config: ModelConfig, num_classes: int) -> keras.Model:
    """Model inputs (BERT ids, float pixels in [0, 255]) → class logits [batch, num_classes]."""
    inputs = model_input_layers(config)
    f_t = _text_features(config, inputs, config.train_text_encoder and config.encoders_trainable()) if (
        config.uses_text()) else None
    f_i = _image_features(config, inputs, config.train_image_encoder and config.encoders_trainable()) if (
        config.uses_image()) else None
    logits = config.head(num_classes)(f_t, f_i)
    return keras.Model(inputs, logits, name=f"hanet_{config.fusion}")


def encoder_model(config: ModelConfig) -> keras.Model:
    """Model inputs → {TEXT_FEATURES_KEY: f_t [batch, H], IMAGE_FEATURES_KEY: f_i [batch, 1280]}, in
    inference mode: what the frozen-encoder mode computes once per product."""
    inputs = model_input_layers(config)
    outputs = {
        features.TEXT_FEATURES_KEY: tf.cast(_text_features(config, inputs, False), tf.float32),
        features.IMAGE_FEATURES_KEY: tf.cast(_image_features(config, inputs, False), tf.float32),
    }
    return keras.Model(inputs, outputs, name="encoders")


def head_model(config: ModelConfig, num_classes: int, text_dim: int, image_dim: int) -> keras.Model:
    """Cached features {TEXT_FEATURES_KEY, IMAGE_FEATURES_KEY} → logits: the fusion head alone."""
    f_t = keras.Input([text_dim], name=features.TEXT_FEATURES_KEY)
    f_i = keras.Input([image_dim], name=features.IMAGE_FEATURES_KEY)
    logits = config.head(num_classes)(f_t, f_i)
    return keras.Model(
        {features.TEXT_FEATURES_KEY: f_t, features.IMAGE_FEATURES_KEY: f_i}, logits, name=f"head_{config.fusion}"
    )


def fusion_layer(model: keras.Model) -> keras.layers.Layer:
    return model.get_layer(FUSION_LAYER)


def explained_model(model: keras.Model) -> keras.Model:
    """`model` (inputs → logits) as inputs → {"logits", and "stream_weights" (s_t, s_i) [batch, 2]
    when its head weighs the streams}: the same layers and weights, called once."""
    head = fusion_layer(model)
    outputs = {"logits": model.outputs[0]}
    if getattr(head, "weighs_streams", False):
        f_t, f_i = head.inbound_nodes[0].call_args[:2]  # the features the head was built on
        outputs["stream_weights"] = head.stream_weights(f_t, f_i)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_explained")


def copy_head(source: keras.Model, target: keras.Model) -> None:
    """Moves the fusion head's weights between models of one fusion (head model ↔ full model)."""
    copy_weights(fusion_layer(source), fusion_layer(target))


def image_encoder_layer(model: keras.Model) -> keras.Model:
    (cnn,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return cnn


def copy_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    """Copies weights between two layers built alike, layer by layer: a model's flat weight list
    is reordered when its `trainable` flag differs, a primitive layer's is not."""
    if isinstance(source, keras.Model) and isinstance(target, keras.Model):
        if len(source.layers) != len(target.layers):
            raise ValueError(f"cannot copy {source.name} into {target.name}: different architectures")
        for src, dst in zip(source.layers, target.layers):
            copy_weights(src, dst)
    else:
        target.set_weights(source.get_weights())


def load_unimodal_heads(model: keras.Model, text_model: keras.Model, image_model: keras.Model) -> None:
    """Gives a decision-level head the trained unimodal heads (full models or head models alike)."""
    head = fusion_layer(model)
    if isinstance(head, fusion.DecisionFusion):
        head.load_unimodal_heads(fusion_layer(text_model), fusion_layer(image_model))


def init_from_unimodal(model: keras.Model, text_model: keras.Model, image_model: keras.Model) -> None:
    """Starts `model` from the trained unimodal models: the text encoder of `text_model`, the image
    encoder of `image_model` and, for the decision-level heads, both of their classifier heads."""
    load_unimodal_heads(model, text_model, image_model)
    copy_weights(text_model.get_layer(TEXT_ENCODER_LAYER), model.get_layer(TEXT_ENCODER_LAYER))
    copy_weights(image_encoder_layer(image_model), image_encoder_layer(model))
