"""The exported model's answers (trainer/export.py): calibrated scores, the uncalibrated logits, the
review flag and the stream weights, checked against the Keras model they come from; and called from a
process that has none of the project's code, as a shop's client or TF Serving would."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from scipy.special import softmax

from common import calibration as calibrations
from common import features
from common.labels import label_names
from tests import hostile_images
from tests.conftest import FASHION_DIR
from tests.no_tensorflow_text import PRELUDE
from common.calibration import Calibration, ReviewThreshold
from trainer import data, export
from trainer.fusion import HeadConfig
from trainer.model import ModelConfig, build_model, explained_model

IMAGE_SIZE = 32
MAX_SEQ_LENGTH = 24  # the small_preprocessed fixture's
TEMPERATURE = 2.5
PRODUCTS = [("Turtle Check Men Navy Blue Shirt", "15970.jpg"), ("Fila Men Cush Flex Black Slippers", "18653.jpg"),
            ("CASIO G-Shock Men Black Digital Watch G-7710-1DR G223", "17429.jpg"),
            ("Manchester United Men Solid Black Track Pants", "21379.jpg"),
            ("David Beckham Signature Men Deos", "18461.jpg"), ("Diva Women Embroided Green Kurta", "20099.jpg")]

# Nothing of the project: `python -I` from another directory (no PYTHONPATH, no current directory on
# the path), tensorflow_text blocked as in TF Serving; the calibration read as plain JSON.
_CLIENT = PRELUDE + textwrap.dedent('''
    import importlib.util
    assert not any(importlib.util.find_spec(m) for m in ("common", "trainer", "components")), "project code found"
    model_dir, titles, photos = sys.argv[1:4]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    out = serve(title=tf.constant(json.loads(titles)), image_bytes=tf.constant([open(p, "rb").read() for p in json.loads(photos)]))
    with open(os.path.join(model_dir, "assets.extra", "calibration.json")) as f:
        calibration = json.load(f)
    print(json.dumps({"outputs": {k: v.numpy().tolist() for k, v in out.items()},
                      "dtypes": {k: v.dtype.name for k, v in out.items()}, "calibration": calibration},
                     default=lambda b: b.decode()))
''')


def _raw(products):
    return {features.TITLE_KEY: tf.constant([t for t, _ in products]),
            features.IMAGE_BYTES_KEY: tf.constant([(FASHION_DIR / "images" / p).read_bytes() for _, p in products])}


@pytest.fixture(scope="module")
def hanet(small_preprocessed, tiny_bert_handle, tmp_path_factory):
    """An untrained hanet exported with a temperature and a review threshold between its products'
    calibrated top-1 scores (so some need review and some do not); and what the Keras model itself
    answers for them: logits [products, classes] and (s_t, s_i)."""
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    config = ModelConfig(fusion="hanet", bert_handle=str(tiny_bert_handle), image_weights=None,
                         image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH, head=HeadConfig(width=32))
    model = build_model(config, len(label_names(tft_output)))
    transformed = tft_output.transform_features_layer()(_raw(PRODUCTS))
    reference = {k: v.numpy() for k, v in explained_model(model)(data.model_inputs(transformed, IMAGE_SIZE)).items()}
    top = np.sort(softmax(reference["logits"] / TEMPERATURE, -1).max(-1))
    gap = np.argmax(np.diff(top))  # the threshold goes in the widest gap between two products' scores
    threshold = float((top[gap] + top[gap + 1]) / 2)
    calibration = Calibration(temperature=TEMPERATURE, target_precision=0.98, validation_products=100,
                              review_thresholds=(ReviewThreshold(0.95, 0.01, 0.9), ReviewThreshold(0.98, threshold, 0.5)))
    export_dir = str(tmp_path_factory.mktemp("export") / "hanet")
    export.export_serving_model(model, tft_output, export_dir, image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH,
                                calibration=calibration)
    return export_dir, reference, calibration, label_names(tft_output)


def test_a_client_without_the_project_gets_calibrated_scores_logits_review_flags_and_stream_weights(hanet, tmp_path):
    export_dir, reference, calibration, names = hanet
    photos = [str(FASHION_DIR / "images" / p) for _, p in PRODUCTS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", "-c", _CLIENT, export_dir, json.dumps([t for t, _ in PRODUCTS]),
                           json.dumps(photos)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {k: np.array(v) for k, v in answer["outputs"].items()}
    assert answer["dtypes"] == {
        features.OUTPUT_CLASSES_KEY: "string", features.OUTPUT_SCORES_KEY: "float32",
        features.OUTPUT_LOGITS_KEY: "float32", features.OUTPUT_NEEDS_REVIEW_KEY: "bool",
        features.OUTPUT_TEXT_WEIGHT_KEY: "float32", features.OUTPUT_IMAGE_WEIGHT_KEY: "float32",
    }
    k = features.DEFAULT_TOP_K
    logits = reference["logits"]
    order = np.argsort(-logits, -1)[:, :k]
    probabilities = softmax(logits / TEMPERATURE, -1)
    # Calibrated scores of the model's own top-k classes, and their uncalibrated logits.
    assert out[features.OUTPUT_CLASSES_KEY].tolist() == [[names[c] for c in row] for row in order]
    np.testing.assert_allclose(out[features.OUTPUT_SCORES_KEY], np.take_along_axis(probabilities, order, -1), rtol=1e-4)
    np.testing.assert_allclose(out[features.OUTPUT_LOGITS_KEY], np.take_along_axis(logits, order, -1), rtol=1e-4, atol=1e-5)
    # The temperature is really applied: the uncalibrated scores would differ, the top class would not.
    assert not np.allclose(out[features.OUTPUT_SCORES_KEY][:, 0], softmax(logits, -1).max(-1), rtol=1e-2)
    assert [row[0] for row in out[features.OUTPUT_CLASSES_KEY]] == [names[c] for c in softmax(logits, -1).argmax(-1)]
    # What a client can check from the answer alone: score ratios are exp(logit difference / T).
    np.testing.assert_allclose(out[features.OUTPUT_SCORES_KEY] / out[features.OUTPUT_SCORES_KEY][:, :1],
                               np.exp((out[features.OUTPUT_LOGITS_KEY] - out[features.OUTPUT_LOGITS_KEY][:, :1])
                                      / answer["calibration"]["temperature"]), rtol=1e-4)
    needs_review = out[features.OUTPUT_NEEDS_REVIEW_KEY]
    assert needs_review.tolist() == (out[features.OUTPUT_SCORES_KEY][:, 0] < calibration.review_threshold).tolist()
    assert needs_review.any() and not needs_review.all()
    np.testing.assert_allclose(out[features.OUTPUT_TEXT_WEIGHT_KEY], reference["stream_weights"][:, 0], rtol=1e-4)
    np.testing.assert_allclose(out[features.OUTPUT_IMAGE_WEIGHT_KEY], reference["stream_weights"][:, 1], rtol=1e-4)
    assert answer["calibration"]["temperature"] == TEMPERATURE
    assert answer["calibration"]["review_threshold"] == calibration.review_threshold
    assert calibrations.read(export_dir) == calibration


def test_the_transformed_signature_returns_every_class_calibrated_and_the_logits(hanet, small_preprocessed):
    export_dir, reference, _, names = hanet
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    transformed = tft_output.transform_features_layer()(_raw(PRODUCTS))
    signature = tf.saved_model.load(export_dir).signatures[features.TRANSFORMED_SIGNATURE]
    out = signature(**{k: transformed[k] for k in signature.structured_input_signature[1]})
    assert set(out) == {features.OUTPUT_PROBABILITIES_KEY, features.OUTPUT_LOGITS_KEY,
                        features.OUTPUT_TEXT_WEIGHT_KEY, features.OUTPUT_IMAGE_WEIGHT_KEY}
    logits = out[features.OUTPUT_LOGITS_KEY].numpy()
    assert logits.shape == (len(PRODUCTS), len(names))
    np.testing.assert_allclose(logits, reference["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[features.OUTPUT_PROBABILITIES_KEY].numpy(), softmax(logits / TEMPERATURE, -1), rtol=1e-4)


def test_without_calibration_a_model_that_weighs_no_streams_serves_softmax_scores_and_reviews_nothing(
    small_preprocessed, tiny_bert_handle, tmp_path
):
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    config = ModelConfig(fusion="text_only", bert_handle=str(tiny_bert_handle), image_weights=None,
                         image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH, head=HeadConfig(width=32))
    model = build_model(config, len(label_names(tft_output)))
    export_dir = str(tmp_path / "text_only")
    export.export_serving_model(model, tft_output, export_dir, image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH)
    out = tf.saved_model.load(export_dir).signatures[features.SERVING_SIGNATURE](**_raw(PRODUCTS))
    assert set(out) == {features.OUTPUT_CLASSES_KEY, features.OUTPUT_SCORES_KEY, features.OUTPUT_LOGITS_KEY,
                        features.OUTPUT_NEEDS_REVIEW_KEY}
    assert not out[features.OUTPUT_NEEDS_REVIEW_KEY].numpy().any()
    scores, logits = out[features.OUTPUT_SCORES_KEY].numpy(), out[features.OUTPUT_LOGITS_KEY].numpy()
    np.testing.assert_allclose(scores / scores[:, :1], np.exp(logits - logits[:, :1]), rtol=1e-4)  # T = 1
    assert calibrations.read(export_dir) == Calibration()
    with open(os.path.join(export_dir, calibrations.CALIBRATION_FILE)) as f:
        assert json.load(f)["temperature"] == 1.0


@pytest.mark.parametrize("name, bomb, width, height", hostile_images.BOMBS, ids=[b[0] for b in hostile_images.BOMBS])
def test_an_image_declaring_more_pixels_than_the_limit_is_refused_by_its_header_naming_the_instance(
    hanet, name, bomb, width, height
):
    export_dir = hanet[0]
    loaded = tf.saved_model.load(export_dir)
    titles = [t for t, _ in PRODUCTS[:2]] + ["a bomb"]
    images = [(FASHION_DIR / "images" / p).read_bytes() for _, p in PRODUCTS[:2]] + [bomb]
    expected = f"image_bytes of instance 2 declares {width}x{height} pixels, more than the 20000000"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        loaded.signatures[features.SERVING_SIGNATURE](title=tf.constant(titles), image_bytes=tf.constant(images))
    examples = [export._tf_example(t, i) for t, i in zip(titles, images)]
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected):
        loaded.signatures[features.TF_EXAMPLE_SIGNATURE](examples=tf.constant(examples))


def test_images_under_the_limit_in_every_format_are_decoded(hanet, tmp_path):
    images = [hostile_images.small(fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "WEBP")]
    # A whole image of more pixels than the limit but a few kilobytes: refused for a lower limit only.
    bomb = hostile_images.png(1000, 1000, rows=1000)
    images.append(bomb)
    declared = export._declared_pixels(tf.constant(images)).numpy()
    assert declared.tolist() == [[16, 16]] * 5 + [[1000, 1000]]
    checked = export.refuse_large_images(tf.constant(images), 1_000_000)
    assert checked.numpy().tolist() == images
    with pytest.raises(tf.errors.InvalidArgumentError, match="instance 5 declares 1000x1000 pixels, more than the 999999"):
        export.refuse_large_images(tf.constant(images), 999_999)
    out = tf.saved_model.load(hanet[0]).signatures[features.SERVING_SIGNATURE](
        title=tf.constant(["x"] * len(images)), image_bytes=tf.constant(images))
    assert out[features.OUTPUT_CLASSES_KEY].shape[0] == len(images)


@pytest.mark.parametrize("key, value", [(features.INPUT_WORD_IDS_KEY, 2**32 + 101), (features.INPUT_WORD_IDS_KEY, 2**40 + 101),
                                        (features.INPUT_WORD_IDS_KEY, -1), (features.INPUT_MASK_KEY, 2**32 + 1),
                                        (features.INPUT_TYPE_IDS_KEY, 2)])
def test_transformed_ids_outside_their_range_are_refused_not_wrapped(hanet, small_preprocessed, key, value):
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    transformed = tft_output.transform_features_layer()(_raw(PRODUCTS[:2]))
    signature = tf.saved_model.load(hanet[0]).signatures[features.TRANSFORMED_SIGNATURE]
    inputs = {k: transformed[k] for k in signature.structured_input_signature[1]}
    signature(**inputs)  # in range: answered
    ids = inputs[key].numpy()
    ids[1, 0] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{key} of instance 1 holds an id outside"):
        signature(**{**inputs, key: tf.constant(ids)})
