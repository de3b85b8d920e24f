"""Convert EfficientNet-Lite0/1/2 ImageNet weights from a legacy torch pickle to Keras, without torch.

    python -m trainer.convert_efficientnet --checkpoint efficientnet-lite0.pth --output lite0.h5
    python -m trainer.convert_efficientnet --variant lite2 --checkpoint efficientnet-lite2.pth --output lite2.h5

Writes OUTPUT (weights of image_encoder(None, VARIANT): no top, average pooling, loadable with
image_encoder(OUTPUT, VARIANT)) and OUTPUT's head file (the 1000-way ImageNet classifier, see
head_file_for), used by image_classifier() to check the conversion on real photos.

Input preprocessing: efficientnet-lite was trained on (pixel - 127) / 128. Keras's EfficientNet
keeps its Rescaling(1/255) + Normalization layers at the input, so the converter writes
Normalization mean = 127/255 and variance = (128/255)^2 into the weights file: the Keras model
then takes [0, 255] pixels like every Keras EfficientNet, and computes exactly what the torch
weights expect.
"""
from __future__ import annotations

import argparse
import collections
import os
import pickle
import re
import struct
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

# --------------------------------------------------------------------------------------------
# Legacy torch serialization (torch.save(..., _use_new_zipfile_serialization=False)), read with
# pickle + numpy: magic-number pickle, protocol pickle, sys-info pickle, the object pickle (its
# persistent ids name storages), a pickle of storage keys, then per key: int64 element count
# followed by the raw little-endian elements.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    pass


_TensorRef = collections.namedtuple("_TensorRef", "storage_key offset size stride")


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only what a state_dict needs, so a hostile pickle cannot run code."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, tuple[str, int]] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, requires_grad=False, backward_hooks=None: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise CheckpointError(f"unsupported object in checkpoint: {module}.{name}")

    @staticmethod
    def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
        return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))

    def persistent_load(self, pid):
        typename, storage_type, key, _location, size, view_metadata = pid
        if typename != "storage" or view_metadata is not None:
            raise CheckpointError(f"unsupported storage reference {pid!r}")
        self.storages[key] = (storage_type, int(size))
        return key


def load_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    try:
        return _load_legacy_state_dict(path)
    except (pickle.UnpicklingError, EOFError, struct.error, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable legacy torch checkpoint ({e})") from e


def _load_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, ValueError):
            magic = None
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a legacy torch file (bad magic number); "
                                  "zip-format checkpoints are not supported")
        if pickle.load(f) != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy protocol")
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", False):
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        unpickler = _StateDictUnpickler(f)
        state = unpickler.load()
        keys = pickle.load(f)
        if sorted(keys) != sorted(unpickler.storages):
            raise CheckpointError(f"{path}: storage key list does not match the tensors' storages")
        buffers = {}
        for key in keys:
            storage_type, declared = unpickler.storages[key]
            dtype = np.dtype(_STORAGE_DTYPES[storage_type])
            (count,) = struct.unpack("<q", f.read(8))
            if count != declared:
                raise CheckpointError(f"{path}: storage {key} holds {count} elements, "
                                      f"pickle says {declared}")
            data = f.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise CheckpointError(f"{path}: truncated at storage {key}")
            buffers[key] = np.frombuffer(data, dtype.newbyteorder("<"))
        if f.read(1):
            raise CheckpointError(f"{path}: trailing bytes after the last storage")

    tensors = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise CheckpointError(f"{path}: {name} is not a tensor")
        buf = buffers[ref.storage_key]
        # Strides matter: converted-from-TF weights are often transposed views, not contiguous.
        extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) + 1
        if any(n == 0 for n in ref.size):
            extent = ref.offset
        if extent > buf.size:
            raise CheckpointError(f"{path}: {name} reaches past its storage")
        view = np.lib.stride_tricks.as_strided(
            buf[ref.offset:], shape=ref.size,
            strides=[s * buf.itemsize for s in ref.stride], writeable=False)
        tensors[name] = np.array(view)  # own the memory, contiguous
    return tensors


# --------------------------------------------------------------------------------------------
# Torch (EfficientNet-PyTorch naming) -> Keras EfficientNet-Lite

_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")  # BN training counters; Keras has none
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")  # = Keras gamma, beta, mean, var
NUM_CLASSES = 1000


def _conv_kernel(w: np.ndarray) -> np.ndarray:  # OIHW -> HWIO
    return w.transpose(2, 3, 1, 0)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:  # [C, 1, H, W] -> [H, W, C, 1]
    return w.transpose(2, 3, 0, 1)


class _Mapper:
    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors
        self.used: collections.Counter = collections.Counter()

    def take(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise CheckpointError(f"checkpoint has no tensor {name!r}")
        self.used[name] += 1
        return self.tensors[name]

    def bn(self, prefix: str) -> list[np.ndarray]:
        return [self.take(f"{prefix}.{part}") for part in _BN_PARTS]


def _keras_block_prefixes(model) -> list[str]:
    # Keras names blocks block{stage}{letter}_ in build order, which is torch's _blocks.{i} order.
    return [layer.name[: -len("dwconv")] for layer in model.layers
            if re.fullmatch(r"block\d+[a-z]_dwconv", layer.name)]


def map_weights(model, tensors: dict[str, np.ndarray]
                ) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Keras layer name -> weight list for image_encoder(None, variant) (`model`), and the [kernel, bias] head."""
    se = [k for k in tensors if "_se_" in k]
    if se:
        raise CheckpointError(f"squeeze-excitation weights {se[:2]}...: not an EfficientNet-Lite checkpoint")
    m = _Mapper(tensors)
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv_kernel(m.take("_conv_stem.weight"))],
        "stem_bn": m.bn("_bn0"),
        "top_conv": [_conv_kernel(m.take("_conv_head.weight"))],
        "top_bn": m.bn("_bn1"),
    }
    prefixes = _keras_block_prefixes(model)
    keras_names = {layer.name for layer in model.layers}
    torch_blocks = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("_blocks.")})
    if torch_blocks != list(range(len(prefixes))):
        raise CheckpointError(f"checkpoint has {len(torch_blocks)} blocks, Keras {model.name} has {len(prefixes)}: "
                              "is --variant the checkpoint's?")
    for i, p in enumerate(prefixes):
        t = f"_blocks.{i}."
        # Keras omits the expansion conv where expand_ratio == 1 (block1a), as torch does; a
        # disagreement surfaces as an unused tensor here or an unset layer in assign().
        if p + "expand_conv" in keras_names:
            out[p + "expand_conv"] = [_conv_kernel(m.take(t + "_expand_conv.weight"))]
            out[p + "expand_bn"] = m.bn(t + "_bn0")
        out[p + "dwconv"] = [_depthwise_kernel(m.take(t + "_depthwise_conv.weight"))]
        out[p + "bn"] = m.bn(t + "_bn1")
        out[p + "project_conv"] = [_conv_kernel(m.take(t + "_project_conv.weight"))]
        out[p + "project_bn"] = m.bn(t + "_bn2")
    head = [m.take("_fc.weight").T, m.take("_fc.bias")]

    twice = sorted(k for k, n in m.used.items() if n > 1)
    unused = sorted(k for k in tensors if not m.used[k] and not _IGNORED.search(k))
    if twice or unused:
        raise CheckpointError(f"tensors used more than once: {twice}; never used: {unused}")
    return out, head


def assign(model, layer_weights: dict[str, list[np.ndarray]]) -> None:
    """Sets every weighted layer of the model exactly once, checking shapes."""
    from trainer import encoders

    pending = dict(layer_weights)
    norm = encoders._normalization_layer(model)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer is norm:
            _, _, count = layer.get_weights()
            layer.set_weights([np.asarray(encoders.LITE_MEAN_RGB, np.float32),
                               np.asarray(encoders.LITE_VARIANCE_RGB, np.float32), count])
            continue
        if layer.name not in pending:
            raise CheckpointError(f"no checkpoint weights for Keras layer {layer.name}")
        values = pending.pop(layer.name)
        expected = [tuple(w.shape) for w in layer.weights]
        if expected != [v.shape for v in values]:
            raise CheckpointError(f"{layer.name}: checkpoint shapes {[v.shape for v in values]} "
                                  f"!= Keras {expected}")
        if hasattr(layer, "epsilon") and abs(layer.epsilon - 1e-3) > 1e-9:
            # efficientnet(-lite) was trained with TF's BN epsilon 1e-3, not torch's default 1e-5.
            raise CheckpointError(f"{layer.name}: BatchNormalization epsilon {layer.epsilon} != 1e-3")
        layer.set_weights(values)
    if pending:
        raise CheckpointError(f"Keras {model.name} has no layers {sorted(pending)}")


def head_file_for(weights_file: str) -> str:
    root, _ = os.path.splitext(str(weights_file))
    return root + ".head.npz"


def image_classifier(weights_file: str, head_file: str | None = None, image_size: int | None = None,
                     variant: str = "lite0"):
    """EfficientNet-Lite with its 1000-way ImageNet softmax: [0, 255] pixels -> class probabilities
    (at image_size, by default the resolution the variant was trained at)."""
    import tf_keras

    from trainer import encoders

    head_file = head_file or head_file_for(weights_file)
    if not os.path.isfile(head_file):
        raise FileNotFoundError(f"ImageNet head not found: {head_file}")
    encoder = encoders.image_encoder(weights_file, variant, image_size or encoders.LITE_PARAMS[variant][2])
    # Same as include_top=True at inference: avg_pool -> (dropout) -> Dense softmax.
    dense = tf_keras.layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")
    model = tf_keras.Model(encoder.input, dense(encoder.output), name=f"efficientnet{variant}_imagenet")
    with np.load(head_file) as head:
        dense.set_weights([head["kernel"], head["bias"]])
    return model


def convert(checkpoint: str, output: str, variant: str = "lite0") -> None:
    import tf_keras

    from trainer import encoders

    if variant not in encoders.LITE_PARAMS:
        raise CheckpointError(f"variant must be one of {sorted(encoders.LITE_PARAMS)}, got {variant!r}")
    tensors = load_legacy_state_dict(checkpoint)
    size = encoders.LITE_PARAMS[variant][2]
    model = encoders.image_encoder(None, variant, size)
    layer_weights, (kernel, bias) = map_weights(model, tensors)
    if kernel.shape != (encoders.EFFICIENTNET_FEATURES, NUM_CLASSES):
        raise CheckpointError(f"_fc.weight has shape {kernel.T.shape}, expected "
                              f"({NUM_CLASSES}, {encoders.EFFICIENTNET_FEATURES})")
    assign(model, layer_weights)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    model.save_weights(output)
    np.savez(head_file_for(output), kernel=kernel, bias=bias)

    # The file, not the in-memory model, is the deliverable: reload it the way the trainer will.
    probe = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    reloaded = encoders.image_encoder(output, variant, size)
    diff = np.abs(reloaded(probe, training=False).numpy() - model(probe, training=False).numpy()).max()
    if diff > 1e-5:
        raise CheckpointError(f"reloaded {output} differs from the converted model by {diff}")
    tf_keras.backend.clear_session()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="lite0", choices=("lite0", "lite1", "lite2"),
                        help="the EfficientNet-Lite the checkpoint holds")
    parser.add_argument("--checkpoint", required=True, help="legacy torch .pth of EfficientNet-Lite")
    parser.add_argument("--output", required=True, help="Keras .h5 weights file to write")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        print(f"convert_efficientnet: error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 1
    try:
        convert(args.checkpoint, args.output, args.variant)
    except CheckpointError as e:
        print(f"convert_efficientnet: error: {e}", file=sys.stderr)
        return 1
    print(f"convert_efficientnet: wrote {args.output} and {head_file_for(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
