"""The exported model refuses, by their headers, the images its preprocess run would have quarantined:
the limit preprocess ran with is recorded beside the transform graph and read by the export."""
import json

import pytest
import tensorflow as tf
import tensorflow_transform as tft

from common import features, splits
from common.labels import num_classes
from tests import hostile_images
from tests.conftest import FASHION_DIR, write_small_catalog
from trainer import export
from trainer.fusion import HeadConfig
from trainer.model import ModelConfig, build_model

IMAGE_SIZE = 32
MAX_SEQ_LENGTH = 16
# The catalog's photos are 224x224 (50,176 pixels): kept; a 300x300 photo (90,000) is not.
LIMIT = 60_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory, bert_vocab_file, tiny_bert_handle):
    """A preprocess run with a pixel limit of LIMIT, and an untrained model exported from its transform
    graph (no limit passed to the export)."""
    from components.preprocess.catalog import CatalogColumns
    from components.preprocess.job import preprocess
    from components.preprocess.transform import TransformOptions

    root = tmp_path_factory.mktemp("limited")
    large = root / "large.png"
    large.write_bytes(hostile_images.png(300, 300, rows=300))
    extra = [{"id": "900003", "title": "Large Photo Shirt", "image": str(large), "articleType": "Shirts"}]
    result = preprocess(
        catalog=str(write_small_catalog(root / "catalog.csv", 12, extra)),
        columns=CatalogColumns(label="articleType"),
        options=TransformOptions(vocab_file=str(bert_vocab_file), max_seq_length=MAX_SEQ_LENGTH, image_size=IMAGE_SIZE),
        examples_dir=str(root / "examples"),
        transform_graph_dir=str(root / "transform_graph"),
        quarantine_file=str(root / "report" / "quarantine.jsonl"),
        metrics_file=str(root / "report" / "metrics.json"),
        max_image_pixels=LIMIT,
        beam_args=["--direct_running_mode=in_memory"],
    )
    tft_output = tft.TFTransformOutput(result.transform_graph_dir)
    config = ModelConfig(fusion="text_only", bert_handle=str(tiny_bert_handle), image_weights=None,
                         image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH, head=HeadConfig(width=16))
    export_dir = str(root / "model")
    export.export_serving_model(build_model(config, num_classes(tft_output)), tft_output, export_dir,
                                image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH)
    return result, export_dir


def test_preprocess_records_its_pixel_limit_beside_the_transform_graph(limited):
    result, _ = limited
    assert splits.read_max_image_pixels(result.transform_graph_dir) == LIMIT
    with open(result.quarantine_file) as f:
        quarantined = [json.loads(line) for line in f]
    assert [q["id"] for q in quarantined] == ["900003"]  # preprocess refused the 300x300 photo


def test_the_exported_model_refuses_an_image_over_the_preprocess_limit_and_decodes_one_under(limited):
    serve = tf.saved_model.load(limited[1]).signatures[features.SERVING_SIGNATURE]
    photo = (FASHION_DIR / "images" / "15970.jpg").read_bytes()
    under = hostile_images.png(240, 240, rows=240)  # 57,600 pixels
    out = serve(title=tf.constant(["a", "b"]), image_bytes=tf.constant([photo, under]))
    assert out[features.OUTPUT_CLASSES_KEY].shape[0] == 2
    over = hostile_images.png(300, 300, rows=300)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"instance 1 declares 300x300 pixels, more than the {LIMIT} this model decodes"):
        serve(title=tf.constant(["a", "b"]), image_bytes=tf.constant([photo, over]))


@pytest.mark.parametrize("content", ['{"max_image_pixels": 0}', '{"max_image_pixels": "1e6"}', '{}', "[]", "not json"])
def test_a_malformed_recorded_limit_is_refused_naming_the_file(tmp_path, content):
    (tmp_path / splits.IMAGE_LIMITS_FILE).write_text(content)
    with pytest.raises(ValueError, match=f"{splits.IMAGE_LIMITS_FILE}: max_image_pixels must be a positive integer"):
        splits.read_max_image_pixels(str(tmp_path))


def test_a_transform_graph_without_a_recorded_limit_has_the_default(tmp_path):
    assert splits.read_max_image_pixels(str(tmp_path)) == features.DEFAULT_MAX_IMAGE_PIXELS
