"""The serving SavedModel: raw title + image bytes in, top-k classes and calibrated scores out.

The transform graph is inside (TFX's `tft_layer` pattern), so clients never tokenize or resize, and
training and serving share one definition of the features. So is the calibration
(trainer/calibration.py fits it): the temperature T and the review threshold t are constants of the graph,

    scores = softmax(logits / T)[classes],   needs_review = scores[:, 0] < t,

so a client gets calibrated scores with no change, and `logits` (uncalibrated) for whoever wants
them. Models whose head weighs the streams also answer (s_t, s_i) per product: which stream decided.
Next to the graph, assets.extra/ holds TF Serving's warm-up file (tf_serving_warmup_requests: real
requests replayed on load, so the first client does not pay for the graph's lazy initialisation) and
calibration.json (T, the thresholds per target precision, how they were fitted), for people and for
the evaluate stage.
"""
from __future__ import annotations

import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from common import calibration as calibrations
from common import features
from common.labels import label_names
from trainer import data
from trainer.model import explained_model

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_PRODUCTS = 4


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
    warmup_examples: list[tuple[str, bytes]] = (),
    calibration: calibrations.Calibration | None = None,
) -> str:
    """Writes the SavedModel of `model` (inputs → logits) with the signatures SERVING_SIGNATURE,
    TF_EXAMPLE_SIGNATURE, TRANSFORMED_SIGNATURE, its calibration (None: temperature 1, nothing needs
    review) and, given (title, image bytes) products, its warm-up requests."""
    calibration = calibration or calibrations.Calibration()
    names = label_names(tft_output)
    k = min(top_k, len(names))
    model.tft_layer = tft_output.transform_features_layer()
    model.label_names = tf.constant(names)
    explained = explained_model(model)  # the same layers: logits and, for attention heads, (s_t, s_i)
    temperature = tf.constant(calibration.temperature, tf.float32)
    review_threshold = tf.constant(calibration.review_threshold, tf.float32)

    def predict(transformed: dict) -> dict:
        """Every class: calibrated probabilities, uncalibrated logits, and the stream weights."""
        out = explained(data.model_inputs(transformed, image_size), training=False)
        logits = tf.cast(out["logits"], tf.float32)
        outputs = {
            features.OUTPUT_PROBABILITIES_KEY: tf.nn.softmax(logits / temperature, axis=-1),
            features.OUTPUT_LOGITS_KEY: logits,
        }
        if "stream_weights" in out:
            weights = tf.cast(out["stream_weights"], tf.float32)
            outputs[features.OUTPUT_TEXT_WEIGHT_KEY] = weights[:, 0]
            outputs[features.OUTPUT_IMAGE_WEIGHT_KEY] = weights[:, 1]
        return outputs

    def top_classes(transformed: dict) -> dict:
        outputs = predict(transformed)
        probabilities = outputs.pop(features.OUTPUT_PROBABILITIES_KEY)
        # Ranked by the logits: the same order as the scores (T > 0), without the ties of scores
        # that round to 0 or 1 in float32.
        logits, indices = tf.math.top_k(outputs[features.OUTPUT_LOGITS_KEY], k=k)
        scores = tf.gather(probabilities, indices, batch_dims=1)
        return {
            **outputs,
            features.OUTPUT_CLASSES_KEY: tf.gather(model.label_names, indices),
            features.OUTPUT_SCORES_KEY: scores,
            features.OUTPUT_LOGITS_KEY: logits,
            features.OUTPUT_NEEDS_REVIEW_KEY: scores[:, 0] < review_threshold,
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
        return predict(transformed)

    signatures = {
        features.SERVING_SIGNATURE: serve_raw,
        features.TF_EXAMPLE_SIGNATURE: serve_tf_example,
        features.TRANSFORMED_SIGNATURE: serve_transformed,
    }
    # save_traces=False: serving needs the signatures only; tracing every layer's call function for
    # Keras revival (EfficientNet has ~240 layers) would make the export several times slower.
    model.save(export_dir, save_format="tf", include_optimizer=False, signatures=signatures, save_traces=False)
    calibrations.write(calibration, export_dir)
    if warmup_examples:
        write_warmup_requests(export_dir, warmup_examples)
    return export_dir


def _tf_example(title: str, image: bytes) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        features.TITLE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[title.encode("utf-8")])),
        features.IMAGE_BYTES_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
    })).SerializeToString()


def warmup_requests(products: list[tuple[str, bytes]]) -> list:
    """PredictionLogs as TF Serving replays them: each product alone and all of them in one batch
    on SERVING_SIGNATURE (the batch sizes clients send), and all of them on TF_EXAMPLE_SIGNATURE."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    def request(signature: str, inputs: dict) -> prediction_log_pb2.PredictionLog:
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = features.MODEL_NAME
        predict.model_spec.signature_name = signature
        for key, values in inputs.items():
            predict.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=predict))

    def raw(batch):
        return {features.TITLE_KEY: [t.encode("utf-8") for t, _ in batch],
                features.IMAGE_BYTES_KEY: [image for _, image in batch]}

    logs = [request(features.SERVING_SIGNATURE, raw([product])) for product in products]
    logs.append(request(features.SERVING_SIGNATURE, raw(products)))
    logs.append(request(features.TF_EXAMPLE_SIGNATURE, {"examples": [_tf_example(t, i) for t, i in products]}))
    return logs


def write_warmup_requests(export_dir: str, products: list[tuple[str, bytes]]) -> str:
    path = os.path.join(export_dir, WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in warmup_requests(products):
            writer.write(log.SerializeToString())
    return path


def warmup_examples(
    examples_dir: str, tft_output: tft.TFTransformOutput, count: int = WARMUP_PRODUCTS
) -> list[tuple[str, bytes]]:
    """(title, image bytes) of the first `count` eval products (train if eval is empty), from the
    transformed records: the raw title the transform passes through, and the stored JPEG."""
    spec = {key: tft_output.transformed_feature_spec()[key] for key in (features.TITLE_KEY, features.IMAGE_KEY)}
    products = []
    for split in (features.EVAL_SPLIT, features.TRAIN_SPLIT):
        files = tf.io.gfile.glob(os.path.join(examples_dir, split, "*"))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count - len(products)):
            parsed = tf.io.parse_single_example(record, spec)
            products.append((parsed[features.TITLE_KEY].numpy().decode("utf-8"), parsed[features.IMAGE_KEY].numpy()))
        if len(products) == count:
            break
    return products
