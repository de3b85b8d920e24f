"""Build a TF-Hub-format BERT encoder SavedModel from a HuggingFace checkpoint, or a tiny random one.

    python -m trainer.convert_bert --checkpoint-dir DIR --output DIR
    python -m trainer.convert_bert --tiny --vocab-file vocab.txt --output DIR

The result follows official/nlp/tools/export_tfhub_lib.py: a tf-keras model around
tf-models-official's BertEncoder with dict inputs (input_word_ids, input_mask, input_type_ids) and
dict outputs (sequence_output, pooled_output, default, encoder_outputs), saved in the Keras
SavedModel format so that hub.KerasLayer(..., trainable=True) restores trainable variables and a
training-aware call; plus assets/vocab.txt and a root `do_lower_case` variable.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from official.nlp.modeling import networks  # noqa: E402

from common import features  # noqa: E402

SAFETENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

TINY_CONFIG = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                   intermediate_size=512, max_position_embeddings=512, type_vocab_size=2,
                   hidden_act="gelu", hidden_dropout_prob=0.1,
                   attention_probs_dropout_prob=0.1, initializer_range=0.02,
                   layer_norm_eps=1e-12)

# HF "gelu" is the exact erf form; tf-models' own "gelu" (official.modeling.activations) is the
# tanh approximation, which would put the converted MiniLM ~1e-2 off the checkpoint.
_ACTIVATIONS = ("gelu", "relu")
_BERT_LAYER_NORM_EPS = 1e-12  # hardwired in BertEncoder / TransformerEncoderBlock

# HF buffers that are not weights of the network.
_IGNORED_TENSORS = re.compile(r"^embeddings\.position_ids$")


class ConversionError(ValueError):
    pass


# --------------------------------------------------------------------------------------------
# Building


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ConversionError(f"{CONFIG_FILE}: unsupported hidden_act {name!r}")
    return tf_keras.activations.get(name)


def build_encoder(config: dict, vocab_size: int) -> networks.BertEncoder:
    if config.get("layer_norm_eps", _BERT_LAYER_NORM_EPS) != _BERT_LAYER_NORM_EPS:
        raise ConversionError(f"{CONFIG_FILE}: layer_norm_eps {config['layer_norm_eps']} "
                              f"!= {_BERT_LAYER_NORM_EPS}, which BertEncoder hardwires")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError(f"{CONFIG_FILE}: only absolute position embeddings are supported")
    return networks.BertEncoder(
        vocab_size=vocab_size,
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        inner_dim=config["intermediate_size"],
        inner_activation=_activation(config.get("hidden_act", "gelu")),
        output_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        max_sequence_length=config["max_position_embeddings"],
        type_vocab_size=config["type_vocab_size"],
        initializer=tf_keras.initializers.TruncatedNormal(
            stddev=config.get("initializer_range", 0.02)),
        dict_outputs=True)


def _core_model(encoder: networks.BertEncoder) -> tf_keras.Model:
    """Dict-in/dict-out wrapper, as export_tfhub_lib._create_model does it."""
    inputs = {x.name: x for x in encoder.inputs}
    if sorted(inputs) != sorted(features.BERT_INPUT_KEYS):
        raise ConversionError(f"encoder inputs {sorted(inputs)} != {features.BERT_INPUT_KEYS}")
    outputs = dict(encoder(inputs))
    # TF-Hub text-embedding convention: "default" aliases the whole-input representation.
    outputs["default"] = outputs["pooled_output"]
    return tf_keras.Model(inputs=inputs, outputs=outputs)


def save_tfhub_encoder(encoder: networks.BertEncoder, output_dir: str, vocab_file: str,
                       do_lower_case: bool) -> None:
    core_model = _core_model(encoder)
    # The Asset's basename becomes assets/<basename>; TF-Hub BERTs call it vocab.txt.
    with tempfile.TemporaryDirectory() as tmp:
        staged_vocab = os.path.join(tmp, VOCAB_FILE)
        tf.io.gfile.copy(vocab_file, staged_vocab, overwrite=True)
        core_model.vocab_file = tf.saved_model.Asset(staged_vocab)
        core_model.do_lower_case = tf.Variable(do_lower_case, trainable=False, name="do_lower_case")
        core_model.save(output_dir, include_optimizer=False, save_format="tf")


# --------------------------------------------------------------------------------------------
# Weights


def _split_heads(kernel_out_in: np.ndarray, heads: int) -> np.ndarray:
    """torch Linear weight [out, in] -> EinsumDense kernel [in, heads, head_dim]."""
    out_dim, in_dim = kernel_out_in.shape
    return kernel_out_in.T.reshape(in_dim, heads, out_dim // heads)


def hf_to_keras_weights(tensors: dict[str, np.ndarray], config: dict) -> tuple[dict, list[str]]:
    """Map HF BertModel tensor names onto BertEncoder variable names (without ':0').

    Returns the mapping and the sorted list of tensors that were not used.
    """
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    # BertForPreTraining / BertForSequenceClassification checkpoints prefix the encoder.
    if not any(k.startswith("embeddings.") for k in tensors) and any(
            k.startswith("bert.") for k in tensors):
        tensors = {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise ConversionError(f"{SAFETENSORS_FILE}: missing tensor {name!r}")
        if name in used:
            raise ConversionError(f"{SAFETENSORS_FILE}: tensor {name!r} mapped twice")
        used.add(name)
        return np.asarray(tensors[name], dtype=np.float32)

    w = {
        "word_embeddings/embeddings": take("embeddings.word_embeddings.weight"),
        "position_embedding/embeddings": take("embeddings.position_embeddings.weight"),
        "type_embeddings/embeddings": take("embeddings.token_type_embeddings.weight"),
        "embeddings/layer_norm/gamma": take("embeddings.LayerNorm.weight"),
        "embeddings/layer_norm/beta": take("embeddings.LayerNorm.bias"),
    }
    for i in range(config["num_hidden_layers"]):
        src, dst = f"encoder.layer.{i}.", f"transformer/layer_{i}/"
        for part in ("query", "key", "value"):
            w[f"{dst}self_attention/{part}/kernel"] = _split_heads(
                take(f"{src}attention.self.{part}.weight"), heads)
            w[f"{dst}self_attention/{part}/bias"] = take(
                f"{src}attention.self.{part}.bias").reshape(heads, -1)
        # Output projection [hidden_out, heads*head_dim] -> [heads, head_dim, hidden_out].
        w[f"{dst}self_attention/attention_output/kernel"] = take(
            f"{src}attention.output.dense.weight").T.reshape(heads, -1, hidden)
        w[f"{dst}self_attention/attention_output/bias"] = take(f"{src}attention.output.dense.bias")
        w[f"{dst}self_attention_layer_norm/gamma"] = take(f"{src}attention.output.LayerNorm.weight")
        w[f"{dst}self_attention_layer_norm/beta"] = take(f"{src}attention.output.LayerNorm.bias")
        w[f"{dst}intermediate/kernel"] = take(f"{src}intermediate.dense.weight").T
        w[f"{dst}intermediate/bias"] = take(f"{src}intermediate.dense.bias")
        w[f"{dst}output/kernel"] = take(f"{src}output.dense.weight").T
        w[f"{dst}output/bias"] = take(f"{src}output.dense.bias")
        w[f"{dst}output_layer_norm/gamma"] = take(f"{src}output.LayerNorm.weight")
        w[f"{dst}output_layer_norm/beta"] = take(f"{src}output.LayerNorm.bias")
    if "pooler.dense.weight" in tensors:
        w["pooler_transform/kernel"] = take("pooler.dense.weight").T
        w["pooler_transform/bias"] = take("pooler.dense.bias")
    unused = sorted(k for k in tensors if k not in used and not _IGNORED_TENSORS.match(k))
    return w, unused


def assign_weights(encoder: networks.BertEncoder, weights: dict[str, np.ndarray]) -> list[str]:
    """Assigns by variable name; returns the names of variables left at their random init."""
    remaining = dict(weights)
    untouched = []
    for var in encoder.weights:
        name = var.name.split(":")[0]
        if name not in remaining:
            untouched.append(name)
            continue
        value = remaining.pop(name)
        if tuple(var.shape) != value.shape:
            raise ConversionError(f"{name}: checkpoint shape {value.shape} != model {tuple(var.shape)}")
        var.assign(value)
    if remaining:
        raise ConversionError(f"no encoder variable for {sorted(remaining)}")
    return untouched


# --------------------------------------------------------------------------------------------
# Inputs


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise ConversionError(f"missing {what}: {path}")
    return path


def read_vocab_size(vocab_file: str) -> int:
    with open(_require_file(vocab_file, "WordPiece vocabulary"), encoding="utf-8") as f:
        size = sum(1 for _ in f)
    if size == 0:
        raise ConversionError(f"empty WordPiece vocabulary: {vocab_file}")
    return size


def guess_lower_case(vocab_file: str) -> bool:
    """Whether the vocab is an uncased one: then no ordinary word piece has a capital letter."""
    tokenizer_config = os.path.join(os.path.dirname(vocab_file), TOKENIZER_CONFIG_FILE)
    if os.path.isfile(tokenizer_config):
        with open(tokenizer_config, encoding="utf-8") as f:
            value = json.load(f).get("do_lower_case")
        if value is not None:
            return bool(value)
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [t.strip() for t in f]
    return not any(any(c.isupper() for c in t) for t in tokens
                   if t and not (t.startswith("[") and t.endswith("]")))


def load_checkpoint(checkpoint_dir: str) -> tuple[dict, dict[str, np.ndarray], str]:
    from safetensors.numpy import load_file

    config_path = _require_file(os.path.join(checkpoint_dir, CONFIG_FILE), "BERT config")
    weights_path = _require_file(os.path.join(checkpoint_dir, SAFETENSORS_FILE), "BERT weights")
    vocab_path = _require_file(os.path.join(checkpoint_dir, VOCAB_FILE), "WordPiece vocabulary")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "max_position_embeddings", "type_vocab_size")
               if k not in config]
    if missing:
        raise ConversionError(f"{config_path}: missing keys {missing}")
    if config.get("model_type", "bert") != "bert":
        raise ConversionError(f"{config_path}: model_type {config['model_type']!r} is not bert")
    return config, load_file(weights_path), vocab_path


# --------------------------------------------------------------------------------------------
# Commands


def convert_checkpoint(checkpoint_dir: str, output_dir: str, do_lower_case: bool | None = None) -> None:
    config, tensors, vocab_path = load_checkpoint(checkpoint_dir)
    vocab_size = read_vocab_size(vocab_path)
    if config.get("vocab_size", vocab_size) != vocab_size:
        raise ConversionError(f"{CONFIG_FILE}: vocab_size {config['vocab_size']} != "
                              f"{vocab_size} lines of {vocab_path}")
    weights, unused = hf_to_keras_weights(tensors, config)
    if unused:
        # MLM/NSP heads are legitimately present in pretraining checkpoints; say so, don't fail.
        print(f"convert_bert: not part of the encoder, ignored: {unused}", file=sys.stderr)
    encoder = build_encoder(config, vocab_size)
    untouched = assign_weights(encoder, weights)
    if untouched and untouched != ["pooler_transform/kernel", "pooler_transform/bias"]:
        raise ConversionError(f"{SAFETENSORS_FILE}: no weights for {untouched}")
    if untouched:
        print("convert_bert: checkpoint has no pooler; pooled_output uses a random-init dense "
              "layer and needs fine-tuning", file=sys.stderr)
    if do_lower_case is None:
        do_lower_case = guess_lower_case(vocab_path)
    save_tfhub_encoder(encoder, output_dir, vocab_path, do_lower_case)


def build_tiny(vocab_file: str, output_dir: str, do_lower_case: bool | None = None,
               seed: int = 0) -> None:
    vocab_size = read_vocab_size(vocab_file)
    tf_keras.utils.set_random_seed(seed)
    encoder = build_encoder(TINY_CONFIG, vocab_size)
    if do_lower_case is None:
        do_lower_case = guess_lower_case(vocab_file)
    save_tfhub_encoder(encoder, output_dir, vocab_file, do_lower_case)


def _parse_bool(value: str) -> bool | None:
    return {"auto": None, "true": True, "false": False}[value.lower()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint-dir", help="HF BERT folder: model.safetensors, config.json, vocab.txt")
    parser.add_argument("--tiny", action="store_true", help="build a small random-init encoder instead")
    parser.add_argument("--vocab-file", help="WordPiece vocabulary for --tiny")
    parser.add_argument("--lower-case", default="auto", choices=["auto", "true", "false"],
                        help="do_lower_case to record (auto: tokenizer_config.json, else the vocab's casing)")
    parser.add_argument("--output", required=True, help="SavedModel directory to write")
    args = parser.parse_args(argv)
    try:
        if args.tiny:
            if args.checkpoint_dir or not args.vocab_file:
                parser.error("--tiny takes --vocab-file and no --checkpoint-dir")
            build_tiny(args.vocab_file, args.output, _parse_bool(args.lower_case))
        else:
            if not args.checkpoint_dir:
                parser.error("--checkpoint-dir is required (or --tiny --vocab-file)")
            convert_checkpoint(args.checkpoint_dir, args.output, _parse_bool(args.lower_case))
    except ConversionError as e:
        print(f"convert_bert: error: {e}", file=sys.stderr)
        return 1
    print(f"convert_bert: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
