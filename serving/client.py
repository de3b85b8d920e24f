"""Clients of a TF Serving endpoint (the real one on the cluster, or `python -m pipeline serve`):
a product's title and photo → its top classes with scores.

RestClient speaks the REST API (row format, the photo as {"b64": ...}); GrpcClient calls
PredictionService.Predict with tensorflow-serving-api's stub. Both send SERVING_SIGNATURE's raw
inputs, so they need nothing of the model but its name. Failures are ClientError, one line each.
"""
from __future__ import annotations

import base64

import numpy as np

from common import features

Prediction = list[tuple[str, float]]  # (class, score), best first


class ClientError(Exception):
    """The endpoint could not be reached or refused the request; the message says which and why."""


def _rows(classes, scores) -> list[Prediction]:
    return [
        [(c.decode("utf-8") if isinstance(c, bytes) else c, float(s)) for c, s in zip(row_classes, row_scores)]
        for row_classes, row_scores in zip(classes, scores)
    ]


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
        """(title, image bytes) products → for each, its top classes with scores."""
        document = self._call("POST", self.model_url + ":predict", json=self.predict_request(products))
        predictions = document["predictions"]
        return _rows(
            [p[features.OUTPUT_CLASSES_KEY] for p in predictions], [p[features.OUTPUT_SCORES_KEY] for p in predictions]
        )


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
        classes = tf.make_ndarray(response.outputs[features.OUTPUT_CLASSES_KEY])
        scores = tf.make_ndarray(response.outputs[features.OUTPUT_SCORES_KEY])
        return _rows(classes, np.asarray(scores))

    def close(self) -> None:
        self._channel.close()
