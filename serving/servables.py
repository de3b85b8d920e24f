"""The versions of one model, as TF Serving manages them: found on disk, loaded, served, unloaded.

`ServableManager.poll()` lists MODEL_BASE_PATH for integer version directories (the layout the push
stage writes) and keeps the newest `num_versions` loaded (TF Serving's default policy is the newest
one): when the newest is deleted, the newest remaining one is loaded again (a rollback), and the
deleted one serves from memory until it is. Like TF Serving's availability-preserving policy, it
loads a new version before it unloads the one it replaces: a version that fails to load leaves the
previous one serving. Each loaded version replays its warm-up requests
(assets.extra/tf_serving_warmup_requests) before it is AVAILABLE, as TF Serving does.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
import re
import threading

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, prediction_log_pb2

from serving.errors import InvalidArgument, NotFound, from_tf_error
from common import features

SERVE_TAG = "serve"
WARMUP_FILE = posixpath.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving replays at most this many warm-up records.
MAX_WARMUP_RECORDS = 1000
SIGNATURE_DEF_FIELD = "signature_def"
# A version directory's name, as TF Serving reads it: ASCII digits of a number that fits int64
# ("007" is version 7); anything else under the model base is not a version.
VERSION_NAME = re.compile(r"[0-9]+")
MAX_VERSION = 2**63 - 1

State = get_model_status_pb2.ModelVersionStatus.State

log = logging.getLogger(__name__)


def _join(*parts: str) -> str:
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


def signature_defs(model_dir: str) -> dict:
    """name → SignatureDef of the MetaGraphDef tagged "serve", read from saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(_join(model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{model_dir} has no MetaGraphDef tagged {SERVE_TAG!r}")


def _check_examples(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Every record of a tf.Example signature's input is a serialized tf.Example; returns their images
    (b"" for a record without one: the graph refuses it)."""
    images = []
    for name, array in inputs.items():
        for index, record in enumerate(array.reshape(-1)):
            try:
                example = tf.train.Example.FromString(record)
            except Exception:  # DecodeError, or bytes that are no protocol buffer at all
                raise InvalidArgument(f"input {name!r}: record {index} is not a serialized tf.Example") from None
            values = example.features.feature[features.IMAGE_BYTES_KEY].bytes_list.value
            images.append(values[0] if values else b"")
    return np.array(images, dtype=object)


class Servable:
    """One loaded version of the model: its signatures, callable on numpy arrays."""

    def __init__(self, name: str, version: int, path: str):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = signature_defs(path)
        self._loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        self._signatures = dict(self._loaded.signatures)
        # Models exported before it have no header check of their own: their graph alone refuses.
        self._image_check = getattr(self._loaded, features.IMAGE_CHECK_FUNCTION, None)

    def input_specs(self, signature_name: str) -> dict[str, tf.TensorSpec]:
        return dict(self._signature(signature_name).structured_input_signature[1])

    def _signature(self, signature_name: str):
        name = signature_name or features.SERVING_SIGNATURE
        if name not in self._signatures:
            raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
        return self._signatures[name]

    def output_names(self, signature_name: str, output_filter=()) -> list[str]:
        """The outputs a request asks for: those of `output_filter`, or every output of the signature."""
        outputs = set(self._signature(signature_name).structured_outputs)
        unknown = sorted(set(output_filter) - outputs)
        if unknown:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {unknown[0]} Outputs expected to be in the set "
                f"{{{','.join(sorted(outputs))}}}."
            )
        return sorted(set(output_filter) or outputs)

    def check_input_names(self, signature_name: str, names) -> None:
        """Every input of the signature, and no other."""
        specs = self.input_specs(signature_name)
        unknown = sorted(set(names) - set(specs))
        if unknown:
            raise InvalidArgument(
                f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the set "
                f"{{{','.join(sorted(specs))}}}."
            )
        missing = sorted(set(specs) - set(names))
        if missing:
            raise InvalidArgument(
                f"Expected inputs: {','.join(sorted(specs))} but missing: {','.join(missing)} "
                f"(signature {signature_name or features.SERVING_SIGNATURE})"
            )

    def check_inputs(self, signature_name: str, inputs: dict[str, np.ndarray]) -> None:
        """Every input of the signature and no other, each of its shape and dtype."""
        self.check_input_names(signature_name, inputs)
        for name, spec in self.input_specs(signature_name).items():
            array = inputs[name]
            if not spec.shape.is_compatible_with(array.shape):
                raise InvalidArgument(
                    f"input {name!r} has shape {list(array.shape)}, but the signature takes "
                    f"{[d if d is not None else -1 for d in spec.shape.as_list()]} (-1: any size)"
                )
            expected = object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype
            if array.dtype != expected and not (spec.dtype == tf.string and array.dtype.kind == "S"):
                raise InvalidArgument(f"input {name!r} is {array.dtype}, but the signature takes {spec.dtype.name}")
        if (signature_name or features.SERVING_SIGNATURE) == features.TF_EXAMPLE_SIGNATURE:
            _check_examples(inputs)

    def check_images(self, signature_name: str, inputs: dict[str, np.ndarray]) -> None:
        """The model's own header check of checked inputs' raw images (check_inputs), for a server to run
        just before a model call: an image its graph would refuse then costs this check, not the model
        call (the graph checks again)."""
        signature_name = signature_name or features.SERVING_SIGNATURE
        if self._image_check is None or signature_name not in (features.SERVING_SIGNATURE, features.TF_EXAMPLE_SIGNATURE):
            return
        if signature_name == features.TF_EXAMPLE_SIGNATURE:
            images = _check_examples(inputs)
        else:
            images = inputs[features.IMAGE_BYTES_KEY]
        try:
            self._image_check(tf.constant(images, dtype=tf.string))
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calls a signature on checked inputs (check_inputs); every output, by name."""
        specs = self.input_specs(signature_name)
        tensors = {name: tf.constant(array, dtype=specs[name].dtype) for name, array in inputs.items()}
        try:
            outputs = self._signature(signature_name)(**tensors)
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None
        except UnicodeDecodeError:  # TensorFlow's message quoted the input's bytes, which are not UTF-8
            raise InvalidArgument(
                f"signature {signature_name or features.SERVING_SIGNATURE} refused its input, with an error that "
                "quotes bytes of it that are not UTF-8 text"
            ) from None
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def predict(self, signature_name: str, inputs: dict[str, np.ndarray], output_filter=()) -> dict[str, np.ndarray]:
        """Runs a signature on one request, unbatched: inputs by name, outputs by name."""
        self.check_inputs(signature_name, inputs)
        wanted = self.output_names(signature_name, output_filter)
        outputs = self.run(signature_name, inputs)
        return {name: outputs[name] for name in wanted}

    def warm_up(self) -> int:
        """Replays the model's warm-up PredictLogs; returns how many ran."""
        path = _join(self.path, WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            log_entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log_entry.WhichOneof("log_type") != "predict_log":
                continue
            request = log_entry.predict_log.request
            self.predict(
                request.model_spec.signature_name,
                {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()},
            )
            count += 1
        return count

    def metadata_json(self) -> dict:
        """GET /v1/models/NAME/metadata, in TF Serving's JSON."""
        options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        return {
            "model_spec": json_format.MessageToDict(self.model_spec(), **options),
            "metadata": {SIGNATURE_DEF_FIELD: json_format.MessageToDict(self.signature_def_map(), **options)},
        }

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        return signature_map

    def model_spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.name, signature_name=signature_name)
        spec.version.value = self.version
        return spec


@dataclasses.dataclass
class _Version:
    state: int
    error: str = ""
    servable: Servable | None = None
    fingerprint: tuple = ()  # of the directory that failed to load: a change means a retry


def version_of(name: str) -> int | None:
    """The version a directory name stands for, or None if it is no version."""
    if not VERSION_NAME.fullmatch(name):
        return None
    version = int(name)
    return version if version <= MAX_VERSION else None


def _fingerprint(path: str) -> tuple:
    """What changes when a version directory's contents do: every file's path, size and mtime."""
    entries = []
    for directory, _, files in tf.io.gfile.walk(path):
        for name in files:
            stat = tf.io.gfile.stat(_join(directory, name))
            entries.append((directory, name, stat.length, stat.mtime_nsec))
    return tuple(sorted(entries))


class ServableManager:
    """Serves the newest `num_versions` complete versions under MODEL_BASE_PATH (= SERVING_BASE/NAME)."""

    def __init__(self, model_base_path: str, name: str = features.MODEL_NAME, num_versions: int = 1):
        if num_versions < 1:
            raise ValueError(f"num_versions must be at least 1, got {num_versions}")
        self.model_base_path = model_base_path
        self.name = name
        self.num_versions = num_versions
        self._versions: dict[int, _Version] = {}
        self._directories: dict[int, str] = {}  # version → its directory's name ("007" for 7)
        self._skipped: set[str] = set()  # names already logged as no version
        self._lock = threading.Lock()
        self._polling = threading.Lock()

    def versions_on_disk(self) -> list[int]:
        """Complete version directories: a version's name (version_of) and a saved_model.pb (on object
        stores the push stage writes saved_model.pb last, so its presence says the copy is whole).
        Other entries are skipped, each named in the log once; two names of one version ("7" and
        "007"): the first in name order."""
        if not tf.io.gfile.isdir(self.model_base_path):
            return []
        directories = {}
        for entry in sorted(tf.io.gfile.listdir(self.model_base_path)):
            name = entry.rstrip("/")
            version = version_of(name)
            if version is None or version in directories:
                if name not in self._skipped:
                    self._skipped.add(name)
                    reason = "another name of a version already found" if version is not None else (
                        "not a version: a version's name is ASCII digits of a number up to 2^63-1")
                    log.warning("skipping %r under %s: %s", name[:80], self.model_base_path, reason)
                continue
            try:
                complete = tf.io.gfile.exists(_join(self.model_base_path, name, "saved_model.pb"))
            except (tf.errors.OpError, OSError) as e:  # unreadable: not a version this time
                log.warning("cannot read %s under %s: %s", name, self.model_base_path, e)
                complete = False
            if complete:
                directories[version] = name
        self._directories = directories
        return sorted(directories)

    def _changed(self, version: int, entry: _Version) -> bool:
        """Whether a version that failed to load has changed on disk since (then it is tried again)."""
        try:
            return _fingerprint(self._path(version)) != entry.fingerprint
        except (tf.errors.OpError, OSError):
            return False

    def _path(self, version: int) -> str:
        return _join(self.model_base_path, self._directories.get(version, str(version)))

    def poll(self) -> None:
        """Loads new aspired versions, then unloads versions no longer aspired."""
        with self._polling:
            aspired = self.versions_on_disk()[-self.num_versions:]
            for version in reversed(aspired):
                with self._lock:
                    entry = self._versions.get(version)
                # A version unloaded earlier is loaded again when it is aspired again (the newer one
                # was removed: a rollback); one that failed to load when its directory has changed.
                if entry is not None and (entry.state != State.END or (entry.error and not self._changed(version, entry))):
                    continue
                with self._lock:
                    self._versions[version] = _Version(State.LOADING)
                self._load(version)
            on_disk = set(self.versions_on_disk())
            with self._lock:
                available = [v for v in aspired if self._versions[v].state == State.AVAILABLE]
                for version, entry in self._versions.items():
                    # Availability first: a version no longer aspired stays until an aspired one
                    # serves, unless its directory is gone.
                    if version in aspired or entry.state != State.AVAILABLE:
                        continue
                    if available or version not in on_disk:
                        entry.state, entry.servable = State.END, None
                        log.info("unloaded %s version %d", self.name, version)

    def _load(self, version: int) -> None:
        path = self._path(version)
        try:
            fingerprint = _fingerprint(path)
        except (tf.errors.OpError, OSError):
            fingerprint = ()
        try:
            servable = Servable(self.name, version, path)
            warmed = servable.warm_up()
        except Exception as e:  # whatever is wrong with a version on disk, the server goes on serving
            message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            with self._lock:
                self._versions[version] = _Version(State.END, error=message, fingerprint=fingerprint)
            log.error("failed to load %s version %d from %s: %s", self.name, version, path, message)
            return
        with self._lock:
            self._versions[version] = _Version(State.AVAILABLE, servable=servable)
        log.info("loaded %s version %d from %s (%d warm-up requests)", self.name, version, path, warmed)

    def servable(self, name: str, version: int | None = None) -> Servable:
        """The servable a request names: a specific version, or the newest available."""
        with self._lock:
            available = {v: e.servable for v, e in self._versions.items() if e.state == State.AVAILABLE}
        if name == self.name:
            if version is None and available:
                return available[max(available)]
            if version in available:
                return available[version]
        request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
        raise NotFound(f"Servable not found for request: {request}")

    def status(self, name: str, version: int | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        with self._lock:
            known = {v: (e.state, e.error) for v, e in self._versions.items()}
        if name != self.name or not known:
            raise NotFound(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in known:
                raise NotFound(f"Could not find version {version} of model {name}")
            known = {version: known[version]}
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(known, reverse=True):
            state, error = known[v]
            status = response.model_version_status.add(version=v, state=state)
            status.status.error_code = 2 if error else 0  # UNKNOWN, OK (tensorflow.error.Code)
            status.status.error_message = error
        return response
