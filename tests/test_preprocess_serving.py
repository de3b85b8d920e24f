"""The exported serving model (transform graph and tokenizer inside) runs where tensorflow_text cannot
be imported, as in stock TF Serving: every op in it is a core TensorFlow op."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from tests.conftest import FASHION_DIR
from tests.no_tensorflow_text import PRELUDE
from common import features
from common.labels import num_classes
from trainer import export
from trainer.fusion import HeadConfig
from trainer.model import ModelConfig, build_model

IMAGE_SIZE = 32
MAX_SEQ_LENGTH = 24  # the small_preprocessed fixture's
TITLES = ["Turtle Check Men Navy Blue Shirt", "Café Crème Kurta 中文 👗 T-Shirt!!!", "x" * 300]
PHOTOS = ["15970.jpg", "10000.jpg", "10001.jpg"]

_BLOCKED_SCRIPT = PRELUDE + textwrap.dedent('''
    model_dir, signature, title_key, image_key, titles, photos = sys.argv[1:7]
    ops = op_types(model_dir)
    # Checked before loading the model: only core TensorFlow's ops are registered at this point.
    unregistered = sorted(op for op in ops if op_def_registry.get(op) is None)

    serve = tf.saved_model.load(model_dir).signatures[signature]
    images = [open(p, "rb").read() for p in json.loads(photos)]
    out = serve(**{title_key: tf.constant(json.loads(titles)), image_key: tf.constant(images)})
    print(json.dumps({
        "ops": sorted(ops),
        "unregistered": unregistered,
        "tensorflow_text_loaded": any(m.startswith("tensorflow_text") for m in sys.modules),
        "outputs": {k: v.numpy().tolist() for k, v in out.items()},
    }, default=lambda b: b.decode()))
''')


@pytest.fixture(scope="module")
def serving_model(small_preprocessed, tiny_bert_handle, tmp_path_factory):
    """The serving model as train() exports it (trainer.export), from the transform graph of the real
    preprocess stage. Unfitted: fitting changes weights, not the graph this test is about."""
    tft_output = tft.TFTransformOutput(small_preprocessed.transform_graph_dir)
    config = ModelConfig(fusion="hanet", bert_handle=str(tiny_bert_handle), image_weights=None,
                         image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH, head=HeadConfig(width=32))
    model = build_model(config, num_classes(tft_output))
    export_dir = str(tmp_path_factory.mktemp("serving") / "model")
    export.export_serving_model(model, tft_output, export_dir, image_size=IMAGE_SIZE, max_seq_length=MAX_SEQ_LENGTH)
    return export_dir


def test_the_serving_model_predicts_without_tensorflow_text(serving_model):
    photos = [str(FASHION_DIR / "images" / name) for name in PHOTOS]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_SCRIPT, serving_model, features.SERVING_SIGNATURE, features.TITLE_KEY,
         features.IMAGE_BYTES_KEY, json.dumps(TITLES), json.dumps(photos)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert not result["tensorflow_text_loaded"]
    assert result["unregistered"] == []
    # The graph really holds the tokenizer and the image transform, not just the network.
    assert {"StaticRegexReplace", "StringNGrams", "LookupTableFindV2", "DecodeImage", "EncodeJpeg"} <= set(result["ops"])
    assert not {"CaseFoldUTF8", "WordpieceTokenizeWithOffsets", "NormalizeUTF8"} & set(result["ops"])

    # The same answers as the model loaded in this process, where tensorflow_text is importable.
    reference = tf.saved_model.load(serving_model).signatures[features.SERVING_SIGNATURE](
        **{features.TITLE_KEY: tf.constant(TITLES),
           features.IMAGE_BYTES_KEY: tf.constant([open(p, "rb").read() for p in photos])}
    )
    outputs = result["outputs"]
    assert np.array(outputs[features.OUTPUT_SCORES_KEY]).shape == (len(TITLES), features.DEFAULT_TOP_K)
    np.testing.assert_allclose(outputs[features.OUTPUT_SCORES_KEY], reference[features.OUTPUT_SCORES_KEY], rtol=1e-5)
    assert outputs[features.OUTPUT_CLASSES_KEY] == [[c.decode() for c in row]
                                                    for row in reference[features.OUTPUT_CLASSES_KEY].numpy()]
