"""The model side of batch prediction: which SavedModel a MODEL_DIR names, what its serving signature
returns, and the RunInference model handler that calls it.

The signature is read from saved_model.pb (a protobuf parse, no graph loaded), so the driver knows the
outputs, their top-k and the label vocabulary before any worker starts, and a wrong directory fails in
one line instead of inside a worker.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Any, Iterable, Sequence

from apache_beam.ml.inference.base import PredictionResult
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor

from common import features
from common.labels import OOV_LABEL

SAVED_MODEL_FILE = "saved_model.pb"
# What a prediction record carries of the signature's outputs, when the model has them: the
# per-product answers. `logits` is left out: uncalibrated, and `scores` already ranks the classes.
PER_PRODUCT_OUTPUTS = (
    features.OUTPUT_CLASSES_KEY,
    features.OUTPUT_SCORES_KEY,
    features.OUTPUT_NEEDS_REVIEW_KEY,
    features.OUTPUT_TEXT_WEIGHT_KEY,
    features.OUTPUT_IMAGE_WEIGHT_KEY,
)
REQUIRED_OUTPUTS = (features.OUTPUT_CLASSES_KEY, features.OUTPUT_SCORES_KEY)
INPUTS = (features.TITLE_KEY, features.IMAGE_BYTES_KEY)


class ModelError(ValueError):
    """MODEL_DIR is not a model batch prediction can use: the user's to fix before anything runs."""


@dataclasses.dataclass(frozen=True)
class ServingModel:
    path: str  # the SavedModel directory
    version: int | None  # its version under a serving base (SERVING_BASE/MODEL_NAME/<version>/), if it is one
    outputs: tuple[str, ...]  # the PER_PRODUCT_OUTPUTS its serving signature has, in that order
    classes_per_product: int | None  # k of its [batch, k] classes (None: not fixed in the signature)
    # Class index → label of its classifier (the OOV bucket last), from the transform graph's asset
    # inside the model; None when the model carries no such file.
    label_vocabulary: tuple[str, ...] | None


def _path(uri_or_path: str):
    # URIs (gs://...) join with "/" whatever the local OS does.
    return posixpath if "://" in uri_or_path else os.path


def _join(*parts: str) -> str:
    return _path(parts[0]).join(*parts)


def resolve(model_dir: str) -> ServingModel:
    """The model MODEL_DIR names: a SavedModel directory (a pushed version SERVING_BASE/hanet/<n>/ or
    a model artifact), or a model base SERVING_BASE/hanet/, whose newest complete version is taken, as
    TF Serving would serve it."""
    import tensorflow as tf

    from components.push import newest_served_model

    path = model_dir.rstrip("/") or model_dir
    if not tf.io.gfile.exists(_join(path, SAVED_MODEL_FILE)):
        if not tf.io.gfile.isdir(path):
            raise ModelError(f"model {model_dir} does not exist")
        newest = newest_served_model(_path(path).dirname(path), _path(path).basename(path))
        if newest is None:
            raise ModelError(f"model {model_dir} holds no {SAVED_MODEL_FILE} and no complete version directory")
        path = newest[1]
    name = _path(path).basename(path)
    version = int(name) if name.isdigit() else None
    return _describe(path, version)


def _describe(path: str, version: int | None) -> ServingModel:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(_join(path, SAVED_MODEL_FILE), "rb") as f:
            saved_model.ParseFromString(f.read())
    except Exception as e:  # protobuf's DecodeError has no stable import path across versions
        raise ModelError(f"model {path}: {SAVED_MODEL_FILE} cannot be read: {e}") from None
    graph = saved_model.meta_graphs[0] if saved_model.meta_graphs else None
    if graph is None or features.SERVING_SIGNATURE not in graph.signature_def:
        raise ModelError(f"model {path} has no {features.SERVING_SIGNATURE!r} signature")
    signature = graph.signature_def[features.SERVING_SIGNATURE]
    absent = [name for name in INPUTS if name not in signature.inputs]
    if absent:
        raise ModelError(
            f"model {path}: its {features.SERVING_SIGNATURE!r} signature takes {sorted(signature.inputs)}, "
            f"not {', '.join(absent)}"
        )
    missing = [name for name in REQUIRED_OUTPUTS if name not in signature.outputs]
    if missing:
        raise ModelError(
            f"model {path}: its {features.SERVING_SIGNATURE!r} signature returns {sorted(signature.outputs)}, "
            f"without {', '.join(missing)}"
        )
    dims = signature.outputs[features.OUTPUT_CLASSES_KEY].tensor_shape.dim
    k = dims[1].size if len(dims) == 2 and dims[1].size > 0 else None
    return ServingModel(
        path=path,
        version=version,
        outputs=tuple(name for name in PER_PRODUCT_OUTPUTS if name in signature.outputs),
        classes_per_product=k,
        label_vocabulary=_label_vocabulary(path, graph),
    )


def _label_vocabulary(path: str, graph) -> tuple[str, ...] | None:
    """The classifier's class names: the transform graph's label vocabulary (one label per line,
    most frequent first), which the model carries as an asset, plus the OOV bucket it appends."""
    import tensorflow as tf

    names = {posixpath.basename(asset.filename) for asset in graph.asset_file_def}
    if features.LABEL_VOCABULARY_NAME not in names:
        return None
    with tf.io.gfile.GFile(_join(path, "assets", features.LABEL_VOCABULARY_NAME)) as f:
        vocabulary = [line.rstrip("\n") for line in f]
    return (*vocabulary, OOV_LABEL)


class ServingFunction:
    """A loaded SavedModel's serving signature, called with lists of bytes and answering numpy arrays:
    plain values, so that the calls can also cross a process boundary (with `large_model`, Beam's
    MultiProcessShared keeps the model in one process and proxies the other processes' calls to it)."""

    def __init__(self, path: str, outputs: Sequence[str]):
        import tensorflow as tf

        # The loaded object is kept: a signature outliving it would lose the variables it reads.
        self._model = tf.saved_model.load(path)
        self._signature = self._model.signatures[features.SERVING_SIGNATURE]
        self._outputs = tuple(outputs)

    def predict(self, titles: Sequence[bytes], images: Sequence[bytes]) -> dict:
        import tensorflow as tf

        answer = self._signature(
            **{
                features.TITLE_KEY: tf.constant(list(titles), tf.string),
                features.IMAGE_BYTES_KEY: tf.constant(list(images), tf.string),
            }
        )
        return {name: answer[name].numpy() for name in self._outputs}


def _serving_inference(
    model: ServingFunction, batch: Sequence[tuple[bytes, bytes]], inference_args: dict[str, Any], model_id: str | None = None
) -> Iterable[PredictionResult]:
    """One call of the serving signature on a batch of (title, image bytes); a result per product holding
    its row of each output (the example itself is not kept: its photo would travel on for nothing)."""
    arrays = model.predict([title for title, _ in batch], [image for _, image in batch])
    return [
        PredictionResult(None, {name: values[i] for name, values in arrays.items()}, model_id) for i in range(len(batch))
    ]


class ServingModelHandler(TFModelHandlerTensor):
    """Beam's TensorFlow model handler over a SavedModel's serving signature.

    The library's handler loads a Keras model (`tf.keras.models.load_model`), which an exported serving
    model is not meant to be revived as (it is saved without Keras traces); here the SavedModel is
    loaded as such (`ServingFunction`), and `_serving_inference` calls its signature. Batching
    (BatchElements, `batch_size` products per call) and sharing (one model per worker process, shared
    by its threads; with `large_model`, one per machine, shared by its processes) are RunInference's.
    """

    def __init__(self, model: ServingModel, batch_size: int, large_model: bool = False):
        super().__init__(
            model.path,
            inference_fn=_serving_inference,
            min_batch_size=batch_size,
            max_batch_size=batch_size,
            large_model=large_model,
        )
        self._outputs = model.outputs

    def load_model(self) -> ServingFunction:
        return ServingFunction(self._model_uri, self._outputs)

    def get_num_bytes(self, batch: Sequence[tuple[bytes, bytes]]) -> int:
        return sum(len(title) + len(image) for title, image in batch)

    def get_metrics_namespace(self) -> str:
        return "hanet_batch_predict"
