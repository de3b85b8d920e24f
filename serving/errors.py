"""Errors with the status codes TF Serving answers with: gRPC codes, and their HTTP statuses for REST."""
from __future__ import annotations

import re

import grpc

# TF Serving's REST handler maps a status to HTTP this way (ToHTTPStatusCode in its http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ServingError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class Unimplemented(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class PayloadTooLarge(ServingError):
    """A REST body over the server's limit: HTTP's own status for it, RESOURCE_EXHAUSTED for gRPC."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class RequestTimeout(ServingError):
    """A REST body not received within the server's time: HTTP's own status for it."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 408


# What a client reads of an error that is the server's, not its input's: the details (and the
# exception's class, which says nothing to a client) go to the server's log.
INTERNAL_ERROR_MESSAGE = "Internal error while serving the request; the server's log has the details"


# Lines of a graph-execution error that say where, not what: headers, the (indented) Python stack
# of the op, the node in [[...]], blank lines.
_CONTEXT_LINE = re.compile(r"^(Graph execution error:|Detected at node |<stack traces unavailable>|\s|$)")


def from_tf_error(error) -> ServingError:
    """A TensorFlow runtime error (tf.errors.OpError) → the same code (TF's codes are gRPC's) and
    the line that says what went wrong, e.g. "Unknown image file format. One of JPEG, ... required."."""
    code = next((c for c in grpc.StatusCode if c.value[0] == error.error_code), grpc.StatusCode.INTERNAL)
    lines = [line for line in error.message.splitlines() if not _CONTEXT_LINE.match(line)]
    return ServingError(lines[0].strip() if lines else error.message.strip() or type(error).__name__, code)
