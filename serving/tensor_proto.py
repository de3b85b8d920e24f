"""A gRPC request's TensorProtos → numpy arrays, checked against the signature before any allocation.

tf.make_ndarray trusts what a proto declares: it fills a declared shape from however few values
the proto holds (TensorProto allows that: the last value repeats), so a shape of [10^13] with one
value asks for terabytes; it raises KeyError for dtypes numpy has no type for (DT_VARIANT,
DT_RESOURCE) and accepts negative dimensions. Here dtype, shape and the number of values are
checked against the signature and the server's batch limit first; every failure is
INVALID_ARGUMENT naming the input.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.errors import InvalidArgument

# A proto holding one value for many elements (TensorProto's repeat-the-last-value form) is expanded
# only up to this many bytes: gRPC messages are capped at the same size, so nothing legitimate is larger.
MAX_EXPANDED_BYTES = 256 * 1024 * 1024


def dtype_name(enum: int) -> str:
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"unknown data type {enum}"


def spec_shape(spec: tf.TensorSpec) -> list[int]:
    """A signature input's shape as TF Serving shows it: -1 for any size."""
    return [d if d is not None else -1 for d in spec.shape.as_list()]


def _value_count(proto, dtype: tf.DType) -> int:
    count = sum(len(value) for field, value in proto.ListFields() if field.name.endswith("_val"))
    return count // 2 if dtype.is_complex else count  # complex values are stored as (real, imaginary) pairs


def to_array(name: str, proto, spec: tf.TensorSpec, check_batch_size) -> np.ndarray:
    """The array of request input `name`, which the signature declares as `spec`;
    `check_batch_size(n)` raises if a batch of n instances is more than the server takes."""
    expected = spec.dtype.as_datatype_enum
    if proto.dtype != expected:
        raise InvalidArgument(f"input {name!r} is {dtype_name(proto.dtype)}, but the signature takes {dtype_name(expected)}")
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument(f"input {name!r} has an unknown rank; a request tensor must give its shape")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise InvalidArgument(f"input {name!r} has shape {shape}: a dimension cannot be negative")
    if not spec.shape.is_compatible_with(shape):
        raise InvalidArgument(
            f"input {name!r} has shape {shape}, but the signature takes {spec_shape(spec)} (-1: any size)"
        )
    if shape:
        check_batch_size(shape[0])
    elements = math.prod(shape)
    if proto.tensor_content:
        if spec.dtype == tf.string:
            raise InvalidArgument(f"input {name!r}: a DT_STRING tensor holds its values in string_val, not tensor_content")
        itemsize = np.dtype(spec.dtype.as_numpy_dtype).itemsize
        if len(proto.tensor_content) != elements * itemsize:
            raise InvalidArgument(
                f"input {name!r} has shape {shape} ({elements} values of {itemsize} bytes), but its "
                f"tensor_content has {len(proto.tensor_content)} bytes"
            )
    else:
        count = _value_count(proto, spec.dtype)
        itemsize = 8 if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype).itemsize
        repeated = count <= 1 and elements * itemsize <= MAX_EXPANDED_BYTES
        if count != elements and not repeated:
            raise InvalidArgument(f"input {name!r} has shape {shape} ({elements} values), but holds {count} values")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise InvalidArgument(f"input {name!r} is not a valid {dtype_name(proto.dtype)} tensor of shape {shape}: {e}") from None
