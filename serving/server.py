"""A local stand-in for TF Serving: the same REST and gRPC APIs over the same model directories.

    REST (aiohttp)   GET  /v1/models/NAME[/versions/N]            version status (GetModelStatusResponse)
                     GET  /v1/models/NAME[/versions/N]/metadata   signatures (GetModelMetadataResponse)
                     POST /v1/models/NAME[/versions/N]:predict    `instances` or `inputs`, {"b64": ...}
    gRPC (grpcio)    tensorflow.serving.PredictionService/Predict, /GetModelMetadata
                     tensorflow.serving.ModelService/GetModelStatus

Routes are matched with TF Serving's own regular expressions, JSON is read and written as TF Serving
does (serving/json_tensor.py), and errors carry TF Serving's codes and messages. New versions pushed
under MODEL_BASE_PATH are picked up every `poll_seconds` (serving/servables.py). A client written
against this server works unchanged against TF Serving on the cluster (k8s/), and the reverse.

Before anything is parsed, a client's cost is bounded (serving/limits.py): REST bodies by size as
sent and as inflated, headers and bodies by time, connections by count (Connections). Requests are
parsed and answered on worker threads; the model runs on the batch threads of a
BatchScheduler (serving/batching.py: TF Serving's batching, large requests split, cancelled ones
dropped). Every failure of a request is a ServingError with TF Serving's code and a message about
the input; anything else is logged and answered 500 / INTERNAL with a generic message, on both
transports (GuardInterceptor also turns undecodable gRPC requests into INVALID_ARGUMENT).

Not here, and in TF Serving: :classify/:regress (the exported model has predict signatures only),
version labels, several models per server, Prometheus metrics.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import re
import signal
import zlib

import grpc
import tensorflow as tf
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import any_pb2, json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import json_tensor, tensor_proto
from serving.batching import BatchingOptions, BatchScheduler, _cpu_count, batch_size
from serving.errors import (
    INTERNAL_ERROR_MESSAGE,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    Unimplemented,
)
from serving.fair import FairWork, Pushback
from serving.limits import ServerLimits
from serving.servables import MAX_VERSION, SIGNATURE_DEF_FIELD, Servable, ServableManager
from common import features

# TF Serving's route patterns (tensorflow_serving/model_servers/http_rest_api_util.cc); RE2's \\d is
# ASCII only, Python's is not, hence [0-9].
PREDICTION_ROUTE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
MODEL_STATUS_ROUTE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
DEFAULT_POLL_SECONDS = 1.0
# Inflating (on a worker thread) produces this many bytes at a time, each step checked against the limits.
_INFLATE_STEP = 256 * 1024

log = logging.getLogger(__name__)


def _version_of(version: str | None, label: str | None) -> int | None:
    if label:
        raise NotFound(f"Unrecognized servable version label: {label}")
    if not version:
        return None
    if len(version) > len(str(MAX_VERSION)) or int(version) > MAX_VERSION:
        raise InvalidArgument(f"Failed to convert version: {version[:30]}{'...' if len(version) > 30 else ''} to numeric.")
    return int(version)


def _status_json(response) -> dict:
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _batch_key(servable: Servable, signature: str, inputs) -> tuple:
    # Requests share a model call only if they call the same version's signature with inputs that
    # concatenate: the same dtype and the same shape after the batch dimension.
    return (servable, signature, tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())))


async def _queued_call(scheduler: BatchScheduler, fair: FairWork, client: object, servable: Servable,
                       signature: str, inputs):
    """Admits a request's decoded inputs to the queue (a request it refuses costs nothing more) and
    returns what its model call runs; the model's image header check goes where it costs the good
    clients least, so an image the graph would refuse costs a check, not a model call.

    Without batching, on the batch thread just before the model: on a server of few cores
    TensorFlow runs its calls on as few inter-op threads, one after the other, so a check run as a
    job before the queue waited for another client's whole model call, and the request then waited
    again for the model (one core, a good single under 50 concurrent singles of 4 clients: its
    check 30.7 ms at the median against 2.3 idle, its p99 3.4-4.1 times idle; here 2.4-2.7). A
    [1000] request's headers are then checked a piece at a time, as its pieces run.

    With batching, as a job before the request is queued, for requests of one model call or less
    (a larger one is left to the graph, a piece at a time): checked on the batch thread, the
    attackers' singles reached the queue unchecked and faster, every call was full (32 instances,
    22 times a single's cost on one core) and the good single's p99 went from 8 to 30-48 times idle."""
    size = batch_size(inputs)
    scheduler.check_size(size)
    scheduler.check_admission(size)
    if not scheduler.options.enable_batching:
        def checked_run(batch):
            servable.check_images(signature, batch)
            return servable.run(signature, batch)
        return checked_run
    if size <= scheduler.options.max_execution_batch_size:
        await fair.run(client, servable.check_images, signature, inputs)
    return functools.partial(servable.run, signature)


def request_work(executor: concurrent.futures.Executor, limits: ServerLimits) -> FairWork:
    """The work of requests outside the model (inflating, parsing, the header check, the answer),
    shared by the clients in turns. As many jobs at once as cores: more only share the cores, and
    each job then takes longer, the good client's too; and always one more than a client may hold,
    so that one client's slow jobs never hold every slot."""
    per_client = limits.max_parsing_per_client
    return FairWork(executor, max(_cpu_count(), per_client + 1), per_client)


def refusal_pushback(limits: ServerLimits) -> Pushback:
    """How long a refusal for a full queue is held (serving/fair.py), for REST and gRPC alike."""
    return Pushback(limits.refusal_delay, limits.max_held_refusals)


_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Inflater:
    """A gzip/deflate body inflated as it arrives (`step`, a worker thread's work: zlib releases the GIL),
    refused as soon as it inflates past the limit, or past the limits' ratio to the bytes it came from.
    Concatenated gzip members are one body, as gzip reads them; bytes after a deflate stream are refused."""

    def __init__(self, encoding: str, limits: ServerLimits):
        self.encoding, self.limits = encoding, limits
        self.size = self.consumed = 0
        self._decompressor = zlib.decompressobj(_DECOMPRESSORS[encoding])
        self._parts: list[bytes] = []

    def step(self, data: bytes) -> bytes:
        """Inflates at most _INFLATE_STEP bytes of `data`; what is left of it (b"" once all is read):
        a bounded job, so that a body that inflates a lot takes its turns with other clients' work."""
        if self._decompressor.eof:
            data = self._next_member(data)
        try:
            out = self._decompressor.decompress(data, _INFLATE_STEP)
        except zlib.error as e:
            raise self._invalid(str(e)) from None
        tail = self._decompressor.unconsumed_tail or self._decompressor.unused_data
        if not out and len(tail) == len(data):  # zlib neither read nor wrote: it never will
            raise self._invalid("the compressed stream makes no progress")
        self.consumed += len(data) - len(tail)
        self._add(out)
        return tail

    def _next_member(self, data: bytes) -> bytes:
        if self.encoding == "deflate":
            raise self._invalid(f"{len(data)} bytes follow the end of the compressed stream")
        self._decompressor = zlib.decompressobj(_DECOMPRESSORS[self.encoding])
        return data

    def _invalid(self, reason: str) -> InvalidArgument:
        return InvalidArgument(
            f"the request body is not valid {self.encoding} data (Content-Encoding: {self.encoding}): {reason}"
        )

    def _add(self, out: bytes) -> None:
        self.size += len(out)
        if self.size > self.limits.max_body_bytes:
            raise PayloadTooLarge(
                f"the request body inflates to more than {self.limits.max_body_bytes} bytes, the server's limit"
            )
        ratio = self.limits.max_inflate_ratio
        if self.size > self.limits.inflate_ratio_after and self.size > ratio * self.consumed:
            raise PayloadTooLarge(
                f"the request body inflates more than {ratio:g} times its compressed size "
                f"({self.size} bytes from {self.consumed}), the server's limit"
            )
        self._parts.append(out)

    def result(self) -> bytes:
        self._add(self._decompressor.flush())
        if not self._decompressor.eof:
            raise InvalidArgument(f"the request body is truncated {self.encoding} data (Content-Encoding: {self.encoding})")
        return b"".join(self._parts)


def _declared_length(request: web.BaseRequest, limit: int) -> None:
    """Refuses a body whose Content-Length is over `limit`, before a byte of it is read."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the request body is {request.content_length} bytes (Content-Length), more than {limit}, the server's limit"
        )


class RestApi:
    """TF Serving's REST API over a ServableManager: requests inflated, parsed and answered by
    `fair` (each connection a client), metadata read on `executor` threads, the model run by
    `scheduler`, each client's cost bounded by `limits`."""

    def __init__(self, manager: ServableManager, executor: concurrent.futures.Executor, scheduler: BatchScheduler,
                 limits: ServerLimits = ServerLimits(), connections: Connections | None = None,
                 fair: FairWork | None = None, pushback: Pushback | None = None):
        self.manager = manager
        self.executor = executor
        self.scheduler = scheduler
        self.limits = limits
        self.connections = connections
        self.fair = fair or request_work(executor, limits)
        self.pushback = pushback or refusal_pushback(limits)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes)
        app.router.add_route("*", "/v1/{path:.*}", self.handle, expect_handler=self._expect)
        return app

    async def _expect(self, request: web.Request) -> web.Response | None:
        """`Expect: 100-continue`: the body is asked for only if its declared length is within the limit."""
        if request.headers.get("Expect", "").strip().lower() != "100-continue":
            return self._error_response(ServingError("Expectation Failed: only 100-continue is understood"), 417)
        try:
            _declared_length(request, self.limits.max_body_bytes)
        except PayloadTooLarge as e:
            return self._error_response(e, e.http_status)
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    @staticmethod
    def _error_response(error: ServingError, status: int) -> web.Response:
        response = web.Response(text=json_tensor.dumps({"error": error.message}), status=status,
                                content_type="application/json")
        response.force_close()  # the body was not read: the connection cannot carry another request
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.connections is not None:
            self.connections.request_started(request.transport)
        try:
            document = await self.respond(request)
            status = 200
        except ServingError as e:
            document, status = {"error": e.message}, e.http_status
            await self.pushback.hold(e)
        except Exception:  # a bug here: TF Serving's error shape, a message that gives nothing away, the traceback in the log
            log.exception("%s %s failed", request.method, request.path)
            document, status = {"error": INTERNAL_ERROR_MESSAGE}, 500
        response = web.Response(text=json_tensor.dumps(document), status=status, content_type="application/json")
        if not request.content.is_eof():
            response.force_close()  # the body was not read to its end: the connection cannot carry another request
        await response.prepare(request)
        await response.write_eof()
        if self.connections is not None:
            self.connections.request_done(request.transport)
        return response

    async def _body(self, request: web.Request) -> bytes:
        """The body, read (and inflated) up to the limit within the body timeout."""
        # The server decompresses bodies itself (auto_decompress is off): aiohttp would answer a bad
        # gzip body or an unknown Content-Encoding with its own text/plain error.
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity") and encoding not in _DECOMPRESSORS:
            raise InvalidArgument(
                f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed, gzip or deflate"
            )
        limit = self.limits.max_body_bytes
        _declared_length(request, limit)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        inflater = _Inflater(encoding, self.limits) if encoding in _DECOMPRESSORS else None
        parts, size = [], 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await request.content.readany()
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body was not received within {self.limits.body_timeout:g} s, the server's limit"
                ) from None
            except RequestPayloadError as e:
                raise InvalidArgument(f"the request body could not be read: {str(e).splitlines()[-1].strip()}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body is larger than {limit} bytes, the server's limit")
            if inflater is not None:
                while chunk:
                    chunk = await self.fair.run(request.transport, inflater.step, chunk)
            else:
                parts.append(chunk)
        return inflater.result() if inflater is not None else b"".join(parts)

    async def respond(self, request: web.Request) -> dict:
        method, path = request.method, request.path
        loop = asyncio.get_running_loop()
        if method == "POST" and (match := PREDICTION_ROUTE.fullmatch(path)):
            name, version, label, verb = match.groups()
            if verb.lower() != "predict":
                raise Unimplemented(f"this local server answers :predict only, not :{verb} (TF Serving does both)")
            version = _version_of(version, label)
            client = request.transport
            # The instances a body holds are known only once its JSON is parsed; what can be said before
            # reading it is whether the queue has room for any request at all.
            self.scheduler.check_room()
            body = await self._body(request)
            servable, signature, document = await self.fair.run(client, self._parse, name, version, body)
            # Admission by the instances counted in the parsed document, before they are decoded
            # (base64, arrays) and their images checked: a [1000] body the queue has no room for costs
            # its parsing only.
            if (declared := json_tensor.declared_batch_size(document)) is not None:
                self.scheduler.check_size(declared)
                self.scheduler.check_admission(declared)
            request_format, inputs = await self.fair.run(client, self._tensors, servable, signature, document)
            run = await _queued_call(self.scheduler, self.fair, client, servable, signature, inputs)
            outputs = await self.scheduler.run(
                _batch_key(servable, signature, inputs), run, inputs,
                client=client,
            )
            return await self.fair.run(client, json_tensor.response_json, outputs, request_format)
        if method == "GET" and (match := MODEL_STATUS_ROUTE.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise InvalidArgument("Missing model name in request.")
            version = _version_of(version, label)
            if metadata:
                return await loop.run_in_executor(self.executor, lambda: self.manager.servable(name, version).metadata_json())
            return _status_json(self.manager.status(name, version))
        raise InvalidArgument(f"Malformed request: {method} {path}")

    def _parse(self, name: str, version: int | None, body: bytes):
        document = json_tensor.parse_request(body)
        servable = self.manager.servable(name, version)
        signature = document.get(json_tensor.SIGNATURE_KEY) or features.SERVING_SIGNATURE
        servable.input_specs(signature)  # an unknown signature is refused before anything is decoded
        return servable, signature, document

    @staticmethod
    def _tensors(servable: Servable, signature: str, document: dict):
        specs = servable.input_specs(signature)
        request_format, inputs = json_tensor.request_tensors(document, {k: spec.dtype for k, spec in specs.items()})
        servable.check_inputs(signature, inputs)
        return request_format, inputs


class _GuardedConnection(asyncio.Protocol):
    """One REST connection, handed to aiohttp's protocol unless the server is at its connection cap,
    and closed if its headers do not arrive in time."""

    def __init__(self, connections: Connections, inner: asyncio.Protocol):
        self.connections, self.inner = connections, inner
        self.transport = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.connections.admit(self):
            self.inner = None
            transport.abort()
            return
        self.arm()
        self.inner.connection_made(transport)

    def arm(self) -> None:
        self.disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.connections.limits.header_timeout, self.transport.abort)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc) -> None:
        self.disarm()
        if self.inner is not None:
            self.connections.release(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class Connections:
    """The open REST connections: at most `limits.max_connections`; each must send a request's
    headers within `limits.header_timeout` of opening or of its previous answer."""

    def __init__(self, limits: ServerLimits):
        self.limits = limits
        self._open: dict[object, _GuardedConnection] = {}
        self.refused = 0

    def protocol_factory(self, inner_factory):
        return lambda: _GuardedConnection(self, inner_factory())

    def admit(self, connection: _GuardedConnection) -> bool:
        if len(self._open) >= self.limits.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("%d connections open, the server's limit: closing new ones (%d so far)",
                            len(self._open), self.refused)
            return False
        self._open[connection.transport] = connection
        return True

    def release(self, connection: _GuardedConnection) -> None:
        self._open.pop(connection.transport, None)

    def request_started(self, transport) -> None:
        if (connection := self._open.get(transport)) is not None:
            connection.disarm()

    def request_done(self, transport) -> None:
        if (connection := self._open.get(transport)) is not None and not transport.is_closing():
            connection.arm()

    @property
    def count(self) -> int:
        return len(self._open)


class _Undecodable:
    """What a request that is not the method's message deserializes to, so the handler can refuse it."""

    def __init__(self, reason: str):
        self.reason = reason


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Two answers grpcio would otherwise give as UNKNOWN with a Python exception's class: a request
    that does not parse as its message (INVALID_ARGUMENT), and an unexpected error (INTERNAL, with a
    message that gives nothing away and the traceback in the log)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method, deserialize, behaviour = handler_call_details.method, handler.request_deserializer, handler.unary_unary

        def lenient_deserialize(data: bytes):
            try:
                return deserialize(data)
            except Exception as e:  # DecodeError, or whatever a deserializer raises on garbage
                return _Undecodable(str(e) or type(e).__name__)

        async def guarded(request, context):
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request to {method} does not parse: {request.reason}")
            try:
                return await behaviour(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)

        return handler._replace(unary_unary=guarded, request_deserializer=lenient_deserialize)


async def _unary(context: grpc.aio.ServicerContext, call, pushback: Pushback | None = None):
    try:
        return await call
    except ServingError as e:
        if pushback is not None:
            await pushback.hold(e)
        await context.abort(e.code, e.message)


async def _unimplemented(context: grpc.aio.ServicerContext, method: str) -> None:
    # TF Serving answers these from a model config and classify/regress signatures, which this
    # server (one model from one directory, predict signatures only) does not have.
    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                        f"this local server answers Predict, GetModelMetadata and GetModelStatus, not {method}")


def _declared_batch_size(request: predict_pb2.PredictRequest) -> int | None:
    """The first dimension every input tensor of a gRPC request declares, or None if they do not agree
    (to_array and batch_size then refuse it, naming the inputs)."""
    sizes = {proto.tensor_shape.dim[0].size if proto.tensor_shape.dim else None for proto in request.inputs.values()}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ServableManager, executor: concurrent.futures.Executor, scheduler: BatchScheduler,
                 fair: FairWork | None = None, pushback: Pushback | None = None):
        self.manager = manager
        self.executor = executor
        self.scheduler = scheduler
        self.fair = fair or request_work(executor, ServerLimits())
        self.pushback = pushback or refusal_pushback(ServerLimits())

    async def Predict(self, request: predict_pb2.PredictRequest, context):  # noqa: N802 (gRPC method name)
        return await _unary(context, self._predict(request, context.peer()), self.pushback)

    async def GetModelMetadata(self, request, context):  # noqa: N802
        loop = asyncio.get_running_loop()
        return await _unary(context, loop.run_in_executor(self.executor, self._metadata, request))

    async def Classify(self, request, context):  # noqa: N802
        await _unimplemented(context, "Classify")

    async def Regress(self, request, context):  # noqa: N802
        await _unimplemented(context, "Regress")

    async def MultiInference(self, request, context):  # noqa: N802
        await _unimplemented(context, "MultiInference")

    def _servable(self, model_spec):
        if model_spec.version_label:
            raise NotFound(f"Unrecognized servable version label: {model_spec.version_label}")
        return self.manager.servable(model_spec.name, model_spec.version.value if model_spec.HasField("version") else None)

    async def _predict(self, request: predict_pb2.PredictRequest, peer: str) -> predict_pb2.PredictResponse:
        # The queue's answer first, from the declared batch: a [1000] tensor of a few KB that the queue
        # has no room for is refused before its values are expanded (1000 copies of a photo).
        if (declared := _declared_batch_size(request)) is not None:
            self.scheduler.check_size(declared)
            self.scheduler.check_admission(declared)
        servable, signature, inputs, wanted = await self.fair.run(peer, self._request, request)
        run = await _queued_call(self.scheduler, self.fair, peer, servable, signature, inputs)
        outputs = await self.scheduler.run(
            _batch_key(servable, signature, inputs), run, inputs, client=peer
        )
        return await self.fair.run(peer, self._response, servable, signature, outputs, wanted)

    def _request(self, request: predict_pb2.PredictRequest):
        servable = self._servable(request.model_spec)
        signature = request.model_spec.signature_name or features.SERVING_SIGNATURE
        specs = servable.input_specs(signature)
        servable.check_input_names(signature, request.inputs)
        inputs = {
            name: tensor_proto.to_array(name, proto, specs[name], self.scheduler.check_size)
            for name, proto in request.inputs.items()
        }
        servable.check_inputs(signature, inputs)
        wanted = servable.output_names(signature, request.output_filter)
        return servable, signature, inputs, wanted

    @staticmethod
    def _response(servable: Servable, signature: str, outputs, wanted) -> predict_pb2.PredictResponse:
        response = predict_pb2.PredictResponse(model_spec=servable.model_spec(signature))
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def _metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        unsupported = [f for f in request.metadata_field if f != SIGNATURE_DEF_FIELD]
        if unsupported or not request.metadata_field:
            raise InvalidArgument(f"Metadata field {unsupported[0] if unsupported else '(none)'} is not supported")
        servable = self._servable(request.model_spec)
        packed = any_pb2.Any()
        packed.Pack(servable.signature_def_map())
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=servable.model_spec())
        response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ServableManager):
        self.manager = manager

    async def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        await _unimplemented(context, "HandleReloadConfigRequest")

    async def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None

        async def status():
            return self.manager.status(spec.name, version)

        return await _unary(context, status())


async def _poll_once(manager: ServableManager, executor) -> None:
    try:
        await asyncio.get_running_loop().run_in_executor(executor, manager.poll)
    except Exception:  # a transient listing error (e.g. a network file system) must not stop polling, or start-up
        log.exception("polling %s failed", manager.model_base_path)


async def _poll_forever(manager: ServableManager, poll_seconds: float, executor) -> None:
    while True:
        await asyncio.sleep(poll_seconds)
        await _poll_once(manager, executor)


async def serve_async(
    manager: ServableManager,
    *,
    host: str = "127.0.0.1",
    rest_port: int = features.REST_PORT,
    grpc_port: int | None = features.GRPC_PORT,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    workers: int | None = None,
    batching: BatchingOptions | None = None,
    scheduler: BatchScheduler | None = None,
    limits: ServerLimits = ServerLimits(),
    stop: asyncio.Event | None = None,
) -> None:
    """Serves until `stop` is set (or SIGINT/SIGTERM when run by `serve`); the model runs on
    `scheduler`, or on one made from `batching` (default: BatchingOptions())."""
    scheduler = scheduler or BatchScheduler(batching or BatchingOptions())
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers or 4 * (os.cpu_count() or 1))
    # A separate thread for loading, so a large model loading does not hold up requests.
    loader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    await _poll_once(manager, loader)
    connections = Connections(limits)
    fair = request_work(executor, limits)  # one turn order for REST and gRPC clients
    pushback = refusal_pushback(limits)
    # handler_cancellation: a client that disconnects cancels its handler, and so its queued work.
    # lingering_time 0: a body refused unread is not read to its end before the connection closes.
    runner = web.AppRunner(
        RestApi(manager, executor, scheduler, limits, connections, fair, pushback).app(), access_log=None,
        handler_cancellation=True, auto_decompress=False, lingering_time=0,
    )
    await runner.setup()
    grpc_server = rest_server = None
    try:
        rest_server = await loop.create_server(connections.protocol_factory(runner.server), host, rest_port)
        if grpc_port is not None:
            options = [("grpc.max_receive_message_length", limits.max_body_bytes),
                       ("grpc.max_send_message_length", limits.max_body_bytes)]
            grpc_server = grpc.aio.server(options=options, interceptors=[GuardInterceptor()])
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                PredictionService(manager, executor, scheduler, fair, pushback), grpc_server
            )
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), grpc_server)
            if grpc_server.add_insecure_port(f"{host}:{grpc_port}") == 0:
                raise OSError(f"cannot bind gRPC to {host}:{grpc_port}")
            await grpc_server.start()
        poller = asyncio.create_task(_poll_forever(manager, poll_seconds, loader))
        log.info("serving %s from %s: REST on %s:%d, gRPC on %s; %s; %s", manager.name, manager.model_base_path, host,
                 rest_port, f"{host}:{grpc_port}" if grpc_port is not None else "(off)", scheduler.options.describe(),
                 limits.describe())
        await stop.wait()
        poller.cancel()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=1)
        if rest_server is not None:
            rest_server.close()
        await runner.cleanup()
        scheduler.close()
        executor.shutdown(wait=False, cancel_futures=True)
        loader.shutdown(wait=False, cancel_futures=True)


def serve(manager: ServableManager, **options) -> None:
    """Runs the server in the foreground until SIGINT or SIGTERM; `options` as serve_async's."""

    async def main():
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await serve_async(manager, stop=stop, **options)

    asyncio.run(main())
