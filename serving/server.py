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

Not here, and in TF Serving: :classify/:regress (the exported model has predict signatures only),
server-side request batching, version labels, several models per server, Prometheus metrics.
Each request runs on a worker thread, so TensorFlow executes concurrent requests in parallel.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import signal

import grpc
import tensorflow as tf
from aiohttp import web
from google.protobuf import any_pb2, json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import json_tensor
from serving.errors import InvalidArgument, NotFound, ServingError, Unimplemented
from serving.servables import SIGNATURE_DEF_FIELD, ServableManager
from common import features

# TF Serving's route patterns (tensorflow_serving/model_servers/http_rest_api_util.cc).
PREDICTION_ROUTE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
MODEL_STATUS_ROUTE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
# TF Serving takes requests of any size; aiohttp and grpcio default to 1 and 4 MiB, a batch of photos.
MAX_REQUEST_BYTES = 256 * 1024 * 1024
DEFAULT_POLL_SECONDS = 1.0

log = logging.getLogger(__name__)


def _version_of(version: str | None, label: str | None) -> int | None:
    if label:
        raise NotFound(f"Unrecognized servable version label: {label}")
    return int(version) if version else None


def _status_json(response) -> dict:
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class RestApi:
    """TF Serving's REST API over a ServableManager; handlers run the model on `executor` threads."""

    def __init__(self, manager: ServableManager, executor: concurrent.futures.Executor):
        self.manager = manager
        self.executor = executor

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/v1/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read() if request.method == "POST" else b""
        loop = asyncio.get_running_loop()
        try:
            document = await loop.run_in_executor(self.executor, self.respond, request.method, request.path, body)
            status = 200
        except ServingError as e:
            document, status = {"error": e.message}, e.http_status
        except Exception as e:  # a bug here: still TF Serving's error shape, and the traceback in the log
            log.exception("%s %s failed", request.method, request.path)
            document, status = {"error": f"internal error: {type(e).__name__}: {e}"}, 500
        return web.Response(text=json_tensor.dumps(document), status=status, content_type="application/json")

    def respond(self, method: str, path: str, body: bytes) -> dict:
        if method == "POST" and (match := PREDICTION_ROUTE.fullmatch(path)):
            name, version, label, verb = match.groups()
            if verb.lower() != "predict":
                raise Unimplemented(f"this local server answers :predict only, not :{verb} (TF Serving does both)")
            return self.predict(name, _version_of(version, label), body)
        if method == "GET" and (match := MODEL_STATUS_ROUTE.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise InvalidArgument("Missing model name in request.")
            version = _version_of(version, label)
            if metadata:
                return self.manager.servable(name, version).metadata_json()
            return _status_json(self.manager.status(name, version))
        raise InvalidArgument(f"Malformed request: {method} {path}")

    def predict(self, name: str, version: int | None, body: bytes) -> dict:
        document = json_tensor.parse_request(body)
        servable = self.manager.servable(name, version)
        signature = document.get(json_tensor.SIGNATURE_KEY) or features.SERVING_SIGNATURE
        dtypes = {k: spec.dtype for k, spec in servable.input_specs(signature).items()}
        request_format, inputs = json_tensor.request_tensors(document, dtypes)
        return json_tensor.response_json(servable.predict(signature, inputs), request_format)


async def _unary(context: grpc.aio.ServicerContext, executor, function, *args):
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
    except ServingError as e:
        await context.abort(e.code, e.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ServableManager, executor: concurrent.futures.Executor):
        self.manager = manager
        self.executor = executor

    async def Predict(self, request: predict_pb2.PredictRequest, context):  # noqa: N802 (gRPC method name)
        return await _unary(context, self.executor, self._predict, request)

    async def GetModelMetadata(self, request, context):  # noqa: N802
        return await _unary(context, self.executor, self._metadata, request)

    def _servable(self, model_spec):
        if model_spec.version_label:
            raise NotFound(f"Unrecognized servable version label: {model_spec.version_label}")
        return self.manager.servable(model_spec.name, model_spec.version.value if model_spec.HasField("version") else None)

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self._servable(request.model_spec)
        signature = request.model_spec.signature_name or features.SERVING_SIGNATURE
        try:
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"malformed input tensor: {e}") from None
        outputs = servable.predict(signature, inputs, request.output_filter)
        response = predict_pb2.PredictResponse(model_spec=servable.model_spec(signature))
        for name, array in outputs.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
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
    def __init__(self, manager: ServableManager, executor: concurrent.futures.Executor):
        self.manager = manager
        self.executor = executor

    async def GetModelStatus(self, request, context):  # noqa: N802
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        return await _unary(context, self.executor, self.manager.status, spec.name, version)


async def _poll_forever(manager: ServableManager, poll_seconds: float, executor) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            await loop.run_in_executor(executor, manager.poll)
        except Exception:  # a transient listing error (e.g. a network file system) must not stop polling
            log.exception("polling %s failed", manager.model_base_path)


async def serve_async(
    manager: ServableManager,
    *,
    host: str = "127.0.0.1",
    rest_port: int = features.REST_PORT,
    grpc_port: int | None = features.GRPC_PORT,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    workers: int | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serves until `stop` is set (or SIGINT/SIGTERM when run by `serve`)."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers or 4 * (os.cpu_count() or 1))
    # A separate thread for loading, so a large model loading does not hold up requests.
    loader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    await loop.run_in_executor(loader, manager.poll)
    runner = web.AppRunner(RestApi(manager, executor).app(), access_log=None)
    await runner.setup()
    grpc_server = None
    try:
        await web.TCPSite(runner, host, rest_port).start()
        if grpc_port is not None:
            options = [("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                       ("grpc.max_send_message_length", MAX_REQUEST_BYTES)]
            grpc_server = grpc.aio.server(options=options)
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                PredictionService(manager, executor), grpc_server
            )
            model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, executor), grpc_server)
            if grpc_server.add_insecure_port(f"{host}:{grpc_port}") == 0:
                raise OSError(f"cannot bind gRPC to {host}:{grpc_port}")
            await grpc_server.start()
        poller = asyncio.create_task(_poll_forever(manager, poll_seconds, loader))
        log.info("serving %s from %s: REST on %s:%d, gRPC on %s", manager.name, manager.model_base_path, host,
                 rest_port, f"{host}:{grpc_port}" if grpc_port is not None else "(off)")
        await stop.wait()
        poller.cancel()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=1)
        await runner.cleanup()
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
