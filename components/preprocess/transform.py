"""The preprocessing_fn: raw features → model features, the one definition shared by training and serving.

It is traced once by tensorflow-transform; its graph is written as the transform graph and embedded
in every exported model, so a serving client sends a raw title and raw image bytes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf
import tensorflow_transform as tft

from components.preprocess.tokenizer import BertTokenizer
from common import features

RAW_FEATURE_SPEC = {
    features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
    features.TITLE_KEY: tf.io.FixedLenFeature([], tf.string),
    features.IMAGE_BYTES_KEY: tf.io.FixedLenFeature([], tf.string),
    features.LABEL_KEY: tf.io.FixedLenFeature([], tf.string),
}

JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class TransformOptions:
    vocab_file: str  # the WordPiece vocabulary of the text encoder
    max_seq_length: int
    image_size: int
    lower_case: bool = True
    # Labels seen fewer times than this in the train split share the out-of-vocabulary bucket.
    label_min_count: int = 1

    @classmethod
    def for_text_encoder(cls, bert_handle: str, **options) -> "TransformOptions":
        """Tokenizes with the WordPiece vocabulary and casing of the text encoder that will read the ids."""
        from components.preprocess.tokenizer import encoder_lower_case, encoder_vocab_file

        return cls(vocab_file=encoder_vocab_file(bert_handle), lower_case=encoder_lower_case(bert_handle), **options)


def resize_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded image bytes of any size and format TF decodes → square RGB JPEG bytes.

    The records keep JPEG (tens of KB at 224px) rather than float pixels (600 KB); the trainer and the
    serving signature decode the same bytes, so both see the same JPEG artifacts.
    """

    def one(data: tf.Tensor) -> tf.Tensor:
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        pixels.set_shape([None, None, 3])
        resized = tf.image.resize(pixels, [image_size, image_size], antialias=True)
        return tf.io.encode_jpeg(tf.cast(tf.round(tf.clip_by_value(resized, 0, 255)), tf.uint8), quality=JPEG_QUALITY)

    return tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([], tf.string))


def make_preprocessing_fn(options: TransformOptions) -> Callable[[dict], dict]:
    def preprocessing_fn(inputs: dict) -> dict:
        tokenizer = BertTokenizer(options.vocab_file, options.max_seq_length, options.lower_case)
        outputs = dict(tokenizer(inputs[features.TITLE_KEY]))
        outputs[features.IMAGE_KEY] = resize_image(inputs[features.IMAGE_BYTES_KEY], options.image_size)
        outputs[features.ID_KEY] = tf.identity(inputs[features.ID_KEY])
        # Passed through for the evaluation report and for scoring the served model through its
        # raw-title serving signature; the model itself reads only the token ids.
        outputs[features.TITLE_KEY] = tf.identity(inputs[features.TITLE_KEY])
        outputs[features.LABEL_ID_KEY] = tft.compute_and_apply_vocabulary(
            inputs[features.LABEL_KEY],
            # TFT warns that a threshold of 1 is a no-op; None says the same without the warning.
            frequency_threshold=options.label_min_count if options.label_min_count > 1 else None,
            num_oov_buckets=1,
            vocab_filename=features.LABEL_VOCABULARY_NAME,
        )
        return outputs

    return preprocessing_fn
