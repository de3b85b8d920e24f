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
from common import features, splits
from common.labels import label_names
from trainer import data, gif_frames
from trainer.model import explained_model

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
WARMUP_PRODUCTS = 4


def _transformed_input_spec(max_seq_length: int, title: bool = False) -> dict:
    spec = {
        key: tf.TensorSpec([None, max_seq_length], tf.int64, name=key) for key in features.BERT_INPUT_KEYS
    }
    spec[features.IMAGE_KEY] = tf.TensorSpec([None], tf.string, name=features.IMAGE_KEY)
    if title:  # the lexical expert reads the title itself
        spec[features.TITLE_KEY] = tf.TensorSpec([None], tf.string, name=features.TITLE_KEY)
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
    max_image_pixels: int | None = None,
    lexical: keras.layers.Layer | None = None,
) -> str:
    """Writes the SavedModel of `model` (inputs → logits) with the signatures SERVING_SIGNATURE,
    TF_EXAMPLE_SIGNATURE, TRANSFORMED_SIGNATURE, its calibration (None: temperature 1, nothing needs
    review) and, given (title, image bytes) products, its warm-up requests. The raw signatures refuse
    an image whose header declares more than `max_image_pixels` (the preprocess limit) before
    decoding it (None: the limit the preprocess run of `tft_output` recorded); the transformed one
    refuses token ids outside the text encoder's vocabulary."""
    if max_image_pixels is None:
        max_image_pixels = splits.read_max_image_pixels(os.path.dirname(tft_output.transform_savedmodel_dir))
    calibration = calibration or calibrations.Calibration()
    names = label_names(tft_output)
    k = min(top_k, len(names))
    model.tft_layer = tft_output.transform_features_layer()
    model.label_names = tf.constant(names)
    explained = explained_model(model)  # the same layers: logits and, for attention heads, (s_t, s_i)
    temperature = tf.constant(calibration.temperature, tf.float32)
    review_threshold = tf.constant(calibration.review_threshold, tf.float32)

    vocabulary = _vocabulary_size(model)
    reads_lexical = features.LEXICAL_LOG_PROBS_KEY in model.input
    if reads_lexical != (lexical is not None):
        raise ValueError(f"{model.name} {'reads' if reads_lexical else 'does not read'} the lexical expert's "
                         f"scores, and the export was {'not ' if lexical is None else ''}given the expert")
    model.lexical_expert = lexical  # tracked: its vocabulary table and weights are saved with the model

    def model_inputs(transformed: dict) -> dict:
        inputs = data.model_inputs(transformed, image_size)
        if reads_lexical:  # the whole-train expert on the raw title, in core TF ops
            inputs[features.LEXICAL_LOG_PROBS_KEY] = model.lexical_expert(transformed[features.TITLE_KEY])
        return inputs

    def predict(transformed: dict) -> dict:
        """Every class: calibrated probabilities, uncalibrated logits, and the stream weights."""
        out = explained(model_inputs(transformed), training=False)
        logits = tf.cast(out["logits"], tf.float32)
        outputs = {
            features.OUTPUT_PROBABILITIES_KEY: tf.nn.softmax(logits / temperature, axis=-1),
            features.OUTPUT_LOGITS_KEY: logits,
        }
        if "stream_weights" in out:
            weights = tf.cast(out["stream_weights"], tf.float32)
            outputs[features.OUTPUT_TEXT_WEIGHT_KEY] = weights[:, 0]
            outputs[features.OUTPUT_IMAGE_WEIGHT_KEY] = weights[:, 1]
            if reads_lexical:  # the lexical expert's part of the title's weight (its third column)
                outputs[features.OUTPUT_LEXICAL_WEIGHT_KEY] = weights[:, 2]
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
        return top_classes(transform({features.TITLE_KEY: title, features.IMAGE_BYTES_KEY: image_bytes}))

    def transform(raw: dict) -> dict:
        images = refuse_large_images(raw[features.IMAGE_BYTES_KEY], max_image_pixels)
        return model.tft_layer({**raw, features.IMAGE_BYTES_KEY: images})

    raw_spec = {
        key: tf.io.FixedLenFeature([], tf.string) for key in (features.TITLE_KEY, features.IMAGE_BYTES_KEY)
    }
    # The same check on its own, for a server to refuse an image without a model call (serving/servables.py).
    setattr(model, features.IMAGE_CHECK_FUNCTION, tf.function(
        lambda image_bytes: refuse_large_images(image_bytes, max_image_pixels),
        input_signature=[tf.TensorSpec([None], tf.string, name=features.IMAGE_BYTES_KEY)],
    ))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_tf_example(serialized):
        return top_classes(transform(tf.io.parse_example(serialized, raw_spec)))

    @tf.function(input_signature=[_transformed_input_spec(max_seq_length, reads_lexical)])
    def serve_transformed(transformed):
        # The stored images are JPEGs of image_size²: a header declaring more is refused undecoded.
        images = refuse_large_images(transformed[features.IMAGE_KEY], image_size * image_size)
        return predict(refuse_ids_outside({**transformed, features.IMAGE_KEY: images}, vocabulary))

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


# Image signatures as tf.io.decode_image recognises them (its first bytes), and where each format's
# header states the size: decoding is refused from these few bytes, before any pixel is allocated.
_HEADER_BYTES = 32


@tf.function(autograph=False)  # plain Python at trace time; callable eagerly too
def _declared_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """[n] encoded images → [n, 2] int64 (width, height) as their headers declare them, for JPEG,
    PNG, GIF, WebP (VP8, VP8L, VP8X) and BMP; (0, 0) for anything else, which the decoder refuses."""
    padded = tf.strings.join([image_bytes, tf.constant(b"\0" * _HEADER_BYTES)])
    raw = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)
    head = tf.reshape(tf.cast(raw, tf.int64), [-1, _HEADER_BYTES])  # [0, 32] for an empty batch too

    def little(offset: int, count: int) -> tf.Tensor:
        return sum(tf.bitwise.left_shift(head[:, offset + i], 8 * i) for i in range(count))

    def big(offset: int, count: int) -> tf.Tensor:
        return sum(tf.bitwise.left_shift(head[:, offset + i], 8 * (count - 1 - i)) for i in range(count))

    def starts(prefix: bytes, offset: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(padded, offset, len(prefix)), prefix)

    def signed32(value: tf.Tensor) -> tf.Tensor:
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    webp = starts(b"RIFF") & starts(b"WEBP", 8)
    vp8l = little(21, 4)
    known = [
        (starts(b"\x89PNG\r\n\x1a\n"), big(16, 4), big(20, 4)),
        (starts(b"GIF8"), little(6, 2), little(8, 2)),
        (starts(b"BM"), signed32(little(18, 4)), signed32(little(22, 4))),
        (webp & starts(b"VP8 ", 12), tf.bitwise.bitwise_and(little(26, 2), 0x3FFF),
         tf.bitwise.bitwise_and(little(28, 2), 0x3FFF)),
        (webp & starts(b"VP8L", 12), tf.bitwise.bitwise_and(vp8l, 0x3FFF) + 1,
         tf.bitwise.bitwise_and(tf.bitwise.right_shift(vp8l, 14), 0x3FFF) + 1),
        (webp & starts(b"VP8X", 12), little(24, 3) + 1, little(27, 3) + 1),
    ]
    width = tf.zeros_like(head[:, 0])
    height = tf.zeros_like(head[:, 0])
    for is_format, w, h in known:
        width, height = tf.where(is_format, w, width), tf.where(is_format, h, height)
    # A JPEG's frame header follows its other segments (EXIF, ICC profiles) at no fixed place:
    # extract_jpeg_shape reads the markers up to it, without decoding.
    is_jpeg = starts(b"\xff\xd8\xff")

    def jpeg_size(args):
        data, jpeg = args
        return tf.cond(jpeg, lambda: tf.cast(tf.io.extract_jpeg_shape(data)[1::-1], tf.int64),
                       lambda: tf.zeros([2], tf.int64))

    jpeg_sizes = tf.map_fn(jpeg_size, (image_bytes, is_jpeg), fn_output_signature=tf.TensorSpec([2], tf.int64))
    return tf.where(is_jpeg[:, None], jpeg_sizes, tf.stack([width, height], axis=1))


@tf.function(autograph=False)  # plain Python at trace time; callable eagerly too
def refuse_large_images(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """`image_bytes`, to be decoded only once every image's header declares at most `max_pixels`
    pixels; otherwise INVALID_ARGUMENT naming the first instance over (core ops only, so TF Serving
    itself refuses the same images)."""
    size = _declared_pixels(image_bytes)
    frames = gif_frames.gif_frame_pixels(image_bytes)  # a GIF's frames may each be larger than its screen
    header_over = size[:, 0] * size[:, 1] > max_pixels
    over = tf.concat([header_over | (frames > max_pixels) | (frames == gif_frames.UNCHECKABLE), [True]], axis=0)
    first = tf.argmax(tf.cast(over, tf.int32), output_type=tf.int32)  # the batch size when none is over
    size = tf.concat([size, [[0, 0]]], axis=0)[first]
    frames = tf.concat([frames, [0]], axis=0)[first]
    instance = f"{features.IMAGE_BYTES_KEY} of instance {{}}"
    limit = f"more than the {max_pixels} this model decodes: refused before decoding"
    message = tf.where(
        tf.concat([header_over, [True]], axis=0)[first],
        tf.strings.format(f"{instance} declares {{}}x{{}} pixels, {limit}", (first, size[0], size[1])),
        tf.where(
            tf.equal(frames, gif_frames.UNCHECKABLE),
            tf.strings.format(f"{instance} is a GIF whose frames cannot be counted within {gif_frames.MAX_GIF_BLOCKS} "
                              f"blocks and {gif_frames.MAX_GIF_STEPS} steps: refused before decoding", (first,)),
            tf.strings.format(f"{instance} is a GIF whose frames declare {{}} pixels in all, {limit}", (first, frames)),
        ),
    )
    check = tf.debugging.Assert(tf.equal(first, tf.shape(image_bytes, out_type=tf.int32)[0]), [message])
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


# The ranges of the text encoder's inputs besides the word ids: a padding mask, and BERT's two segments.
_ID_RANGES = {features.INPUT_MASK_KEY: 2, features.INPUT_TYPE_IDS_KEY: 2}


def _vocabulary_size(model: keras.Model) -> int:
    """The rows of the text encoder's word embedding (the largest int32 when the model reads no text):
    int64 ids the model casts to int32 are checked against it, so none wraps into the vocabulary."""
    rows = [w.shape[0] for w in model.weights if "word_embeddings" in w.name and len(w.shape) == 2]
    return int(rows[0]) if rows else 2**31 - 1


def refuse_ids_outside(transformed: dict, vocabulary: int) -> dict:
    """`transformed`, its int64 text inputs to be read only if each lies in [0, its range):
    INVALID_ARGUMENT naming the input and the first instance out of range otherwise."""
    checks = []
    for key in features.BERT_INPUT_KEYS:
        ids, limit = transformed[key], _ID_RANGES.get(key, vocabulary)
        bad = tf.reduce_any((ids < 0) | (ids >= limit), axis=-1)
        first = tf.argmax(tf.cast(tf.concat([bad, [True]], 0), tf.int32), output_type=tf.int32)
        message = tf.strings.format(f"{key} of instance {{}} holds an id outside [0, {limit})", (first,))
        checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message]))
    with tf.control_dependencies(checks):
        return {key: tf.identity(value) for key, value in transformed.items()}
