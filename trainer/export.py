"""The serving SavedModel: raw title + image bytes in, top-k classes and scores out.

The transform graph is inside (TFX's `tft_layer` pattern), so clients never tokenize or resize, and
training and serving share one definition of the features.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from trainer import data, features

OOV_LABEL = "[OOV]"


def label_names(tft_output: tft.TFTransformOutput) -> list[str]:
    """Class index → label string; the last index is the out-of-vocabulary bucket."""
    vocabulary = tft_output.vocabulary_by_name(features.LABEL_VOCABULARY_NAME)
    return [v.decode("utf-8") if isinstance(v, bytes) else v for v in vocabulary] + [OOV_LABEL]


def _transformed_input_spec(max_seq_length: int) -> dict:
    spec = {
        key: tf.TensorSpec([None, max_seq_length], tf.int64, name=key) for key in features.BERT_INPUT_KEYS
    }
    spec[features.IMAGE_KEY] = tf.TensorSpec([None], tf.string, name=features.IMAGE_KEY)
    return spec


def export_serving_model(
    model: keras.Model,
    tft_output: tft.TFTransformOutput,
    export_dir: str,
    *,
    image_size: int,
    max_seq_length: int,
    top_k: int = features.DEFAULT_TOP_K,
) -> str:
    names = label_names(tft_output)
    k = min(top_k, len(names))
    model.tft_layer = tft_output.transform_features_layer()
    model.label_names = tf.constant(names)

    def probabilities(transformed: dict) -> tf.Tensor:
        return tf.nn.softmax(model(data.model_inputs(transformed, image_size), training=False), axis=-1)

    def top_classes(transformed: dict) -> dict:
        scores, indices = tf.math.top_k(probabilities(transformed), k=k)
        return {
            features.OUTPUT_CLASSES_KEY: tf.gather(model.label_names, indices),
            features.OUTPUT_SCORES_KEY: scores,
        }

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=features.TITLE_KEY),
            tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_KEY),
        ]
    )
    def serve_raw(title, image_bytes):
        return top_classes(model.tft_layer({features.TITLE_KEY: title, features.IMAGE_BYTES_KEY: image_bytes}))

    raw_spec = {
        key: tf.io.FixedLenFeature([], tf.string) for key in (features.TITLE_KEY, features.IMAGE_BYTES_KEY)
    }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_example(serialized):
        return top_classes(model.tft_layer(tf.io.parse_example(serialized, raw_spec)))

    @tf.function(input_signature=[_transformed_input_spec(max_seq_length)])
    def serve_transformed(transformed):
        return {features.OUTPUT_PROBABILITIES_KEY: probabilities(transformed)}

    signatures = {
        features.SERVING_SIGNATURE: serve_raw,
        features.TF_EXAMPLE_SIGNATURE: serve_tf_example,
        features.TRANSFORMED_SIGNATURE: serve_transformed,
    }
    model.save(export_dir, save_format="tf", include_optimizer=False, signatures=signatures)
    return export_dir
