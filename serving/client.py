"""Clients of a TF Serving endpoint (the real one on the cluster, or `python -m pipeline serve`):
a product's title and photo → its top classes with scores.

RestClient speaks the REST API (row format, the photo as {"b64": ...}); GrpcClient calls
PredictionService.Predict with tensorflow-serving-api's stub. Both send SERVING_SIGNATURE's raw
inputs, so they need nothing of the model but its name, and need of its answer only the classes and
scores: any other output (logits, the stream weights, needs_review) comes back in
Prediction.extras when the model has it. Failures are ClientError, one line each.
"""
from __future__ import annotations

import base64
import dataclasses

import numpy as np

from common import features


@dataclasses.dataclass
class Prediction:
    """One product's answer: its top classes with their scores, best first, and every other output
    of the signature by name (a float, a bool, a string or a list of them)."""

    classes: list[tuple[str, float]]
    extras: dict[str, object] = dataclasses.field(default_factory=dict)


class ClientError(Exception):
    """The endpoint could not be reached or refused the request; the message says which and why."""


def _text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _plain(value):
    """An output value as plain Python (numpy scalars and arrays, bytes → str)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return _text(value)


def _predictions(rows: list[dict]) -> list[Prediction]:
    """Per product, its outputs by name → Prediction."""
    classes_key, scores_key = features.OUTPUT_CLASSES_KEY, features.OUTPUT_SCORES_KEY
    predictions = []
    for row in rows:
        if classes_key not in row or scores_key not in row:
            raise ClientError(f"the answer has no {classes_key!r} and {scores_key!r} outputs, only {sorted(row)}")
        classes = [(_text(c), float(s)) for c, s in zip(_plain(row[classes_key]), _plain(row[scores_key]))]
        extras = {name: _plain(value) for name, value in row.items() if name not in (classes_key, scores_key)}
        predictions.append(Prediction(classes, extras))
    return predictions


class RestClient:
    """POST /v1/models/NAME[/versions/N]:predict, and the status route."""

    def __init__(self, endpoint: str, model_name: str = features.MODEL_NAME, version: int | None = None,
                 timeout: float = 60.0):
        import requests

        self.endpoint = endpoint.rstrip("/")
        if "://" not in self.endpoint:
            self.endpoint = "http://" + self.endpoint
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self._session = requests.Session()

    @property
    def model_url(self) -> str:
        url = f"{self.endpoint}/v1/models/{self.model_name}"
        return f"{url}/versions/{self.version}" if self.version is not None else url

    def _call(self, method: str, url: str, **kwargs) -> dict:
        import requests

        try:
            response = self._session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as e:
            reason = "connection refused" if "refused" in str(e).lower() else "cannot connect"
            raise ClientError(f"cannot reach {self.endpoint}: {reason} (is the server running?)") from None
        except requests.Timeout:
            raise ClientError(f"{url} did not answer within {self.timeout:g} s") from None
        try:
            document = response.json()
        except ValueError:
            raise ClientError(f"{url} answered {response.status_code} without JSON: {response.text[:200]!r}") from None
        if response.status_code != 200:
            raise ClientError(f"{url} answered {response.status_code}: {document.get('error', document)}")
        return document

    def status(self) -> dict:
        return self._call("GET", self.model_url)

    def metadata(self) -> dict:
        return self._call("GET", self.model_url + "/metadata")

    def predict_request(self, products: list[tuple[str, bytes]]) -> dict:
        return {
            "signature_name": features.SERVING_SIGNATURE,
            "instances": [
                {features.TITLE_KEY: title, features.IMAGE_BYTES_KEY: {"b64": base64.b64encode(image).decode("ascii")}}
                for title, image in products
            ],
        }

    def predict(self, products: list[tuple[str, bytes]]) -> list[Prediction]:
        """(title, image bytes) products → for each, its top classes with scores (and any other outputs)."""
        document = self._call("POST", self.model_url + ":predict", json=self.predict_request(products))
        predictions = document.get("predictions")
        if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
            # One output only: TF Serving then leaves out the names.
            raise ClientError(f"{self.model_url}:predict answered without named outputs: {str(document)[:200]}")
        return _predictions(predictions)


class GrpcClient:
    """tensorflow.serving.PredictionService/Predict (and ModelService/GetModelStatus) over gRPC."""

    def __init__(self, target: str, model_name: str = features.MODEL_NAME, version: int | None = None,
                 timeout: float = 60.0, max_message_bytes: int = 256 * 1024 * 1024):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.target = target
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _model_spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise ClientError(f"cannot reach {self.target} over gRPC: {e.details()} (is the server running?)") from None
            raise ClientError(f"{self.target} answered {e.code().name}: {e.details()}") from None

    def status(self):
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        return self._call(self._models.GetModelStatus, request)

    def predict_request(self, products: list[tuple[str, bytes]]):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec)
        request.model_spec.signature_name = features.SERVING_SIGNATURE
        request.inputs[features.TITLE_KEY].CopyFrom(
            tf.make_tensor_proto([title.encode("utf-8") for title, _ in products], dtype=tf.string)
        )
        request.inputs[features.IMAGE_BYTES_KEY].CopyFrom(
            tf.make_tensor_proto([image for _, image in products], dtype=tf.string)
        )
        return request

    def predict(self, products: list[tuple[str, bytes]]) -> list[Prediction]:
        import tensorflow as tf

        response = self._call(self._predictions.Predict, self.predict_request(products))
        outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        for name, array in outputs.items():
            if array.ndim == 0 or len(array) != len(products):
                raise ClientError(f"{self.target} answered output {name!r} of shape {list(array.shape)} "
                                  f"for {len(products)} products")
        return _predictions([{name: array[i] for name, array in outputs.items()} for i in range(len(products))])

    def close(self) -> None:
        self._channel.close()
