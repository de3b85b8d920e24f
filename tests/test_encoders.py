"""The encoder factories the model builder calls: interfaces, Lite0 structure, input scaling."""
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

from common import features
from components.preprocess.tokenizer import encoder_lower_case, encoder_vocab_file
from trainer import encoders


@pytest.fixture(scope="module")
def b0():
    return encoders.image_encoder(None, "b0")


@pytest.fixture(scope="module")
def lite0():
    return encoders.image_encoder(None, "lite0")


def test_text_encoder_speaks_the_tfhub_bert_interface(tiny_bert_handle):
    layer = encoders.text_encoder(str(tiny_bert_handle), trainable=True)
    assert isinstance(layer, hub.KerasLayer)
    ids = np.array([[101, 7127, 2392, 102, 0, 0], [101, 3422, 102, 0, 0, 0]], np.int32)
    inputs = {features.INPUT_WORD_IDS_KEY: ids,
              features.INPUT_MASK_KEY: (ids > 0).astype(np.int32),
              features.INPUT_TYPE_IDS_KEY: np.zeros_like(ids)}
    outputs = layer(inputs, training=False)
    hidden = outputs["pooled_output"].shape[-1]
    assert outputs["pooled_output"].shape == (2, hidden)
    assert outputs["sequence_output"].shape == (2, 6, hidden)
    assert outputs["pooled_output"].dtype == tf.float32
    # Keys are exactly the ones common/features.py owns; a renamed input fails loudly.
    with pytest.raises(Exception):
        layer({"word_ids": ids, features.INPUT_MASK_KEY: ids, features.INPUT_TYPE_IDS_KEY: ids})
    assert set(encoders.bert_input_spec()) == set(features.BERT_INPUT_KEYS)


def test_vocab_and_casing_fall_back_to_the_saved_model_attributes(tmp_path):
    # TF-Hub encoders whose vocab asset has another name: the attributes are the contract.
    vocab = tmp_path / "src" / "cased_vocab.txt"
    vocab.parent.mkdir()
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nHello\n")
    module = tf.Module()
    module.vocab_file = tf.saved_model.Asset(str(vocab))
    module.do_lower_case = tf.Variable(False, trainable=False)
    tf.saved_model.save(module, str(tmp_path / "model"))
    path = encoder_vocab_file(str(tmp_path / "model"))
    assert path.endswith("cased_vocab.txt") and open(path).read() == vocab.read_text()
    assert encoder_lower_case(str(tmp_path / "model")) is False


def test_image_encoders_output_1280_features(b0, lite0):
    for model in (b0, lite0):
        assert model.input_shape == (None, 224, 224, 3)
        assert model.output_shape == (None, encoders.EFFICIENTNET_FEATURES)
    small = encoders.image_encoder(None, "lite0", image_size=160)
    assert small.input_shape == (None, 160, 160, 3)
    assert small(np.zeros((1, 160, 160, 3), np.float32)).shape == (1, 1280)


def test_lite0_is_b0_without_squeeze_excitation_with_relu6(b0, lite0):
    # Auto-named preprocessing layers get per-session suffixes (rescaling_1, ...).
    b0_names = [re.sub(r"_\d+$", "", layer.name) for layer in b0.layers[1:]]
    lite_names = [re.sub(r"_\d+$", "", layer.name) for layer in lite0.layers[1:]]
    assert any("_se_" in n for n in b0_names)
    assert lite_names == [n for n in b0_names if "_se_" not in n]
    activations = {layer.get_config()["activation"] for layer in lite0.layers
                   if isinstance(layer, tf_keras.layers.Activation)}
    assert activations == {"relu6"}
    conv = [layer for layer in lite0.layers if isinstance(layer, tf_keras.layers.Conv2D)]
    assert conv[0].name == "stem_conv" and conv[0].filters == 32
    assert conv[-1].name == "top_conv" and conv[-1].filters == 1280
    # 4.65M with the 1000-way head is the published Lite0 size; without it 3.41M.
    assert lite0.count_params() == 3_413_031


# Published sizes with the 1000-way head (efficientnet-lite README): Lite1 5.4M, Lite2 6.1M parameters.
@pytest.mark.parametrize("variant, repeats, widths, published", [
    ("lite1", [1, 3, 3, 4, 4, 5, 1], [16, 24, 40, 80, 112, 192, 320], 5.4e6),
    ("lite2", [1, 3, 3, 4, 4, 5, 1], [16, 24, 48, 88, 120, 208, 352], 6.1e6),
])
def test_larger_lites_scale_the_middle_stages_but_not_stem_head_or_end_stages(variant, repeats, widths, published):
    model = encoders.image_encoder(None, variant, image_size=encoders.LITE_PARAMS[variant][2])
    blocks = encoders.efficientnet_blocks(model)
    assert [sum(name.startswith(f"block{stage}") for name in blocks) for stage in range(1, 8)] == repeats
    stage_widths = [model.get_layer(f"block{stage}{chr(96 + n)}_project_conv").filters
                    for stage, n in zip(range(1, 8), repeats)]
    assert stage_widths == widths
    conv = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Conv2D)]
    assert conv[0].filters == 32 and conv[-1].filters == encoders.EFFICIENTNET_FEATURES
    assert not any("_se_" in layer.name for layer in model.layers)
    head = encoders.EFFICIENTNET_FEATURES * 1000 + 1000
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)  # published sizes omit BN statistics
    assert abs(trainable + head - published) < 0.05e6, trainable + head
    assert model.input_shape == (None, encoders.LITE_PARAMS[variant][2], encoders.LITE_PARAMS[variant][2], 3)
    small = encoders.image_encoder(None, variant, image_size=96)  # any size, like run-local's 96 px
    assert small(np.zeros((1, 96, 96, 3), np.float32)).shape == (1, encoders.EFFICIENTNET_FEATURES)


def test_lite0_has_no_keras_imagenet_weights():
    with pytest.raises(ValueError, match="convert_efficientnet"):
        encoders.image_encoder("imagenet", "lite0")
    with pytest.raises(FileNotFoundError):
        encoders.image_encoder("/nonexistent/weights.h5", "lite0")
    with pytest.raises(ValueError, match="variant"):
        encoders.image_encoder(None, "b7")


def test_b0_weights_file_in_keras_hosted_layout_is_normalized_right(tmp_path, b0):
    # Keras's hosted efficientnetb0*.h5 keep std as "variance"; loaded by path (offline), the
    # 1/sqrt(std) correction Keras applies for weights="imagenet" would be skipped.
    norm = encoders._normalization_layer(b0)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    original = norm.get_weights()
    norm.set_weights([mean, std, original[2]])
    path = tmp_path / "efficientnetb0_notop.h5"
    b0.save_weights(str(path))
    norm.set_weights(original)

    loaded = encoders.image_encoder(str(path), "b0")
    pixels = np.full((1, 224, 224, 3), 200.0, np.float32)
    normalized = tf_keras.Model(loaded.input, encoders._normalization_layer(loaded).output)(pixels)
    np.testing.assert_allclose(normalized.numpy()[0, 0, 0], (200.0 / 255.0 - mean) / std, rtol=1e-5)
