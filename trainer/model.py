"""The HANet model: text stream (TF-Hub BERT) and image stream (EfficientNet-B0) → fusion head → logits."""
from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from trainer import encoders, features, fusion


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    fusion: str = fusion.HANET
    # A TF-Hub BERT encoder: a tfhub.dev/Kaggle URL in production, a local SavedModel folder here.
    bert_handle: str = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    train_text_encoder: bool = True
    # "imagenet", a local weights file, or None for random initialisation.
    image_weights: str | None = "imagenet"
    image_variant: str = "b0"
    train_image_encoder: bool = True
    image_size: int = 224
    max_seq_length: int = 64
    fusion_width: int = 512
    key_dim: int = 64
    hybrid_hidden_units: int = 16
    hybrid_normalize: str = "softmax"
    dropout: float = 0.1

    def uses_text(self) -> bool:
        return self.fusion != fusion.IMAGE_ONLY

    def uses_image(self) -> bool:
        return self.fusion != fusion.TEXT_ONLY


def model_input_layers(config: ModelConfig) -> dict:
    inputs = {
        key: keras.Input([config.max_seq_length], dtype=tf.int32, name=key) for key in features.BERT_INPUT_KEYS
    }
    inputs[features.IMAGE_KEY] = keras.Input(
        [config.image_size, config.image_size, 3], dtype=tf.float32, name=features.IMAGE_KEY
    )
    return inputs


def build_model(config: ModelConfig, num_classes: int) -> keras.Model:
    """Model inputs (BERT ids, float pixels in [0, 255]) → class logits [batch, num_classes]."""
    inputs = model_input_layers(config)
    f_t = f_i = None
    if config.uses_text():
        bert = encoders.text_encoder(config.bert_handle, trainable=config.train_text_encoder)
        f_t = bert({key: inputs[key] for key in features.BERT_INPUT_KEYS})["pooled_output"]  # [batch, H]
    if config.uses_image():
        cnn = encoders.image_encoder(config.image_weights, config.image_variant, config.image_size)
        cnn.trainable = config.train_image_encoder
        # BatchNorm stays in inference mode even when fine-tuning: batch statistics of 32 products
        # are too noisy to replace ImageNet's (the Keras transfer-learning recipe).
        f_i = cnn(inputs[features.IMAGE_KEY], training=False)  # [batch, 1280]
    head = fusion.FusionHead(
        config.fusion,
        num_classes,
        width=config.fusion_width,
        key_dim=config.key_dim,
        hybrid_hidden_units=config.hybrid_hidden_units,
        hybrid_normalize=config.hybrid_normalize,
        dropout=config.dropout,
        name="fusion",
    )
    logits = head(f_t, f_i)
    return keras.Model(inputs, logits, name=f"hanet_{config.fusion}")
