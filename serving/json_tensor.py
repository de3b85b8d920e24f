"""TF Serving's REST JSON for tensors, both ways, as tensorflow_serving/util/json_tensor.cc has it.

Requests: `instances` (row format: one item per example; an object per example when the signature
has several inputs) or `inputs` (columnar: one value, or an object with one value per input);
binary strings as {"b64": "..."}. Responses: `predictions` (row) or `outputs` (columnar), the
output names omitted when there is one output; DT_STRING outputs whose name ends in `_bytes` come
back as {"b64": ...}; floats are written as TF Serving writes them (shortest form that reads back
as the same float32) and NaN/Infinity as bare tokens. Error messages are TF Serving's, so a client
reads the same text from either server.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import sys

import numpy as np
import tensorflow as tf

from serving.errors import InvalidArgument

ROW = "row"
COLUMNAR = "columnar"
SIGNATURE_KEY = "signature_name"
INSTANCES_KEY = "instances"
INPUTS_KEY = "inputs"
PREDICTIONS_KEY = "predictions"
OUTPUTS_KEY = "outputs"
BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"
_MAX_ERROR_VALUE_CHARS = 200
# A JSON tensor may nest lists this deep (numpy's, and so TensorFlow's host arrays', limit on dimensions).
MAX_RANK = 64
# Digits that always read back as the same value (C++'s max_digits10). float16 has no entry: %g's
# six digits read back as the same float16 for every one of its values, so it never needs more.
_MAX_DIGITS10 = {np.dtype(np.float32): 9, np.dtype(np.float64): 17}


def _dump(value) -> str:
    try:
        text = json.dumps(value, separators=(",", ":"))
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= _MAX_ERROR_VALUE_CHARS else text[:_MAX_ERROR_VALUE_CHARS] + "..."


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _is_base64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def _type_error(value, dtype: tf.DType) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {_dump(value)} Type: {_json_type(value)} is not of expected type: {dtype.name}")


def _scalar(value, dtype: tf.DType):
    """One JSON leaf → a Python value of `dtype`, with TF Serving's checks."""
    if dtype == tf.string:
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON's \ud800 escapes decode to lone surrogates, which UTF-8 cannot hold
                raise InvalidArgument(
                    f"JSON Value: {_dump(value)} is not valid Unicode: a lone surrogate "
                    f"\\u{ord(value[e.start]):04x} at character {e.start} (escape a character outside the "
                    "Basic Multilingual Plane as a surrogate pair)"
                ) from None
        if isinstance(value, dict):
            if not _is_base64_object(value):
                raise InvalidArgument(f"JSON Value: {_dump(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value[BASE64_KEY], validate=True)
            except binascii.Error:
                raise InvalidArgument("Unable to base64 decode") from None
        raise _type_error(value, dtype)
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype.is_floating:
        # TF Serving's IsLosslessDecimal: an integer up to 2^digits - 1 (digits = the mantissa's bits + 1).
        if isinstance(value, int) and abs(value) > 2 ** (np.finfo(dtype.as_numpy_dtype).nmant + 1) - 1:
            raise InvalidArgument(f"Cannot convert JSON value: {_dump(value)} to {dtype.name} without loss of precision.")
        if math.isfinite(value) and abs(value) > np.finfo(dtype.as_numpy_dtype).max:
            raise InvalidArgument(f"Cannot convert JSON value: {_dump(value)} to {dtype.name} without loss of precision.")
        return float(value)
    if dtype.is_integer:
        if not isinstance(value, int) or not dtype.min <= value <= dtype.max:
            raise _type_error(value, dtype)
        return value
    raise InvalidArgument(f"Conversion of JSON Value: {_dump(value)} to type: {dtype.name} is not supported")


def _dense_shape(value) -> list[int]:
    # As TF Serving: the shape is read along the first elements; every other list must agree with it.
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: tf.DType, out: list) -> None:
    if not isinstance(value, list):
        if level != len(shape):
            raise InvalidArgument(
                f"JSON Value: {_dump(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def to_array(value, dtype: tf.DType) -> np.ndarray:
    """A JSON value (scalar or nested lists) → a dense array of `dtype`."""
    shape = _dense_shape(value)
    if len(shape) > MAX_RANK:
        raise InvalidArgument(
            f"JSON Value: lists nested {len(shape)} levels deep, more than the {MAX_RANK} dimensions a tensor can have"
        )
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    numpy_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    return np.array(flat, dtype=numpy_dtype).reshape(shape)


def _from_instances(instances: list, dtypes: dict[str, tf.DType]) -> dict[str, np.ndarray]:
    first = instances[0]
    if (not isinstance(first, dict) or _is_base64_object(first)) and len(dtypes) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required "
            "as per tensorinfo_map"
        )
    objects = isinstance(first, dict) and not _is_base64_object(first)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in dtypes}
    for index, item in enumerate(instances):
        if objects:
            if not isinstance(item, dict) or _is_base64_object(item):
                raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
            for name, value in item.items():
                if name not in dtypes:
                    raise InvalidArgument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: JSON object: does not have named input: {name}"
                    )
                columns[name].append(_instance_item(value, name, dtypes[name], index, columns[name]))
            if set(item) != set(dtypes):
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {_dump(item)} "
                    f"must only have keys: {','.join(sorted(dtypes))}"
                )
        else:
            if isinstance(item, dict) and not _is_base64_object(item):
                raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
            (name,) = dtypes
            columns[name].append(_instance_item(item, name, dtypes[name], index, columns[name]))
    return {name: np.stack(items) if items[0].dtype != object else _stack_objects(items) for name, items in columns.items()}


def _stack_objects(items: list[np.ndarray]) -> np.ndarray:
    # np.stack of bytes objects would guess a fixed-width dtype; keep them as Python bytes.
    stacked = np.empty((len(items), *items[0].shape), dtype=object)
    for i, item in enumerate(items):
        stacked[i, ...] = item
    return stacked


def _instance_item(value, name: str, dtype: tf.DType, index: int, previous: list[np.ndarray]) -> np.ndarray:
    try:
        array = to_array(value, dtype)
        if array.ndim >= MAX_RANK:  # the instances stack along one more dimension
            raise InvalidArgument(
                f"JSON Value: lists nested {array.ndim} levels deep in one instance: instances stack to "
                f"more than the {MAX_RANK} dimensions a tensor can have"
            )
    except InvalidArgument as e:
        raise InvalidArgument(f"Failed to process element: {index} key: {name} of 'instances' list. Error: {e}") from None
    if previous and previous[0].shape != array.shape:
        raise InvalidArgument(
            f"Failed to process element: {index} key: {name} of 'instances' list. Error: Expecting shape "
            f"{list(previous[0].shape)} but got: {list(array.shape)}"
        )
    return array


def _from_inputs(inputs, dtypes: dict[str, tf.DType]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or _is_base64_object(inputs):
        if len(dtypes) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        (name,) = dtypes
        return {name: to_array(inputs, dtypes[name])}
    arrays = {}
    for name, dtype in dtypes.items():
        if name not in inputs:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(inputs[name], dtype)
    return arrays


def parse_request(body: bytes) -> dict:
    """The request body → its JSON object (NaN and Infinity accepted, as TF Serving does)."""
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except RecursionError:
        raise InvalidArgument("JSON Parse error: the document nests arrays or objects too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"JSON Parse error: {e}") from None
    except ValueError:  # Python refuses to read integers of more digits than sys.get_int_max_str_digits()
        raise InvalidArgument(
            f"JSON Parse error: a number has more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {_dump(document)} Is not object")
    if SIGNATURE_KEY in document and not isinstance(document[SIGNATURE_KEY], str):
        raise InvalidArgument(
            f"JSON Value: {_dump(document)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return document


def declared_batch_size(document: dict) -> int | None:
    """The instances a parsed request holds, counted without decoding any (None when its form does
    not say: request_tensors then refuses it or finds the batch): `instances`' length, or the first
    dimension its `inputs` lists agree on."""
    if INSTANCES_KEY in document:
        instances = document[INSTANCES_KEY]
        return len(instances) if isinstance(instances, list) and INPUTS_KEY not in document else None
    inputs = document.get(INPUTS_KEY)
    if isinstance(inputs, list):
        return len(inputs)
    if isinstance(inputs, dict) and inputs and all(isinstance(value, list) for value in inputs.values()):
        sizes = {len(value) for value in inputs.values()}
        return sizes.pop() if len(sizes) == 1 else None
    return None


def request_tensors(document: dict, dtypes: dict[str, tf.DType]) -> tuple[str, dict[str, np.ndarray]]:
    """(ROW | COLUMNAR, {input name: array}) of a parsed predict request, for a signature whose
    inputs have `dtypes`."""
    if INSTANCES_KEY in document and INPUTS_KEY in document:
        raise InvalidArgument(
            f"JSON Value: {_dump(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if INSTANCES_KEY in document:
        instances = document[INSTANCES_KEY]
        if not isinstance(instances, list):
            raise InvalidArgument(f"JSON Value: {_dump(document)} Excepting 'instances' to be an list/array")
        if not instances:
            raise InvalidArgument(f"JSON Value: {_dump(document)} No values in 'instances' array")
        return ROW, _from_instances(instances, dtypes)
    if INPUTS_KEY in document:
        return COLUMNAR, _from_inputs(document[INPUTS_KEY], dtypes)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def _float(value: float, numpy_type) -> float:
    """The float TF Serving writes: %g when that reads back exactly, else the type's full precision."""
    if not math.isfinite(value):
        return float(value)
    text = "%g" % value
    if numpy_type(text) != value:
        text = "%.*g" % (_MAX_DIGITS10[np.dtype(numpy_type)], value)
    return float(text)


def _json_values(array: np.ndarray, as_bytes: bool):
    if array.dtype == object:  # TensorFlow's strings, as .numpy() gives them
        if as_bytes:
            convert = lambda b: {BASE64_KEY: base64.b64encode(b).decode("ascii")}  # noqa: E731
        else:
            convert = lambda b: b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b)  # noqa: E731
    elif array.dtype.kind == "f":
        numpy_type = array.dtype.type
        convert = lambda x: _float(float(x), numpy_type)  # noqa: E731
    else:
        return array.tolist()

    def walk(a):
        return convert(a.item() if isinstance(a, np.ndarray) else a) if np.ndim(a) == 0 else [walk(x) for x in a]

    return walk(array)


def response_json(outputs: dict[str, np.ndarray], request_format: str) -> dict:
    """Model outputs → the JSON object TF Serving answers a ROW or COLUMNAR request with."""
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    as_bytes = {name: outputs[name].dtype == object and name.endswith(BYTES_SUFFIX) for name in names}
    if request_format == COLUMNAR:
        values = {name: _json_values(outputs[name], as_bytes[name]) for name in names}
        return {OUTPUTS_KEY: values if len(names) > 1 else values[names[0]]}
    batch_size = None
    for name in names:
        if outputs[name].ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        size = outputs[name].shape[0]
        if size < 1:
            raise InvalidArgument(f"Tensor name: {name} has invalid batch size: {size}")
        if batch_size is not None and size != batch_size:
            raise InvalidArgument(f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch_size}")
        batch_size = size
    columns = {name: _json_values(outputs[name], as_bytes[name]) for name in names}
    if len(names) == 1:
        return {PREDICTIONS_KEY: columns[names[0]]}
    return {PREDICTIONS_KEY: [{name: columns[name][i] for name in names} for i in range(batch_size)]}


def dumps(document: dict) -> str:
    # allow_nan: NaN/Infinity as bare tokens, as TF Serving writes them.
    return json.dumps(document, allow_nan=True, separators=(",", ":"))
