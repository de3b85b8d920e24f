"""`predict`: a product's title and photo → its top classes, from a TF Serving endpoint (REST or gRPC)."""
from __future__ import annotations

import argparse
import os

from pipeline import cli
from common import features


def register(commands) -> None:
    parser = commands.add_parser("predict", help="ask a TF Serving endpoint for a product's top classes")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help=f"the REST endpoint, e.g. http://127.0.0.1:{features.REST_PORT}")
    where.add_argument("--grpc", metavar="HOST:PORT", help=f"the gRPC endpoint, e.g. 127.0.0.1:{features.GRPC_PORT}")
    parser.add_argument("--model-name", default=features.MODEL_NAME)
    parser.add_argument("--model-version", type=int, help="a specific version (default: the newest served)")
    parser.add_argument("--title", required=True, help="the product's title")
    parser.add_argument("--image", required=True, help="the product's photo (JPEG, PNG, GIF, BMP or WebP file)")
    parser.add_argument("--top-k", type=int, default=features.DEFAULT_TOP_K, help="how many classes to print")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    from serving.client import ClientError, GrpcClient, RestClient

    if args.top_k < 1:
        raise cli.UserError(f"--top-k must be at least 1, got {args.top_k}")
    if not os.path.isfile(args.image):
        raise cli.UserError(f"image {args.image} does not exist")
    with open(args.image, "rb") as f:
        image = f.read()
    if args.grpc:
        client = GrpcClient(args.grpc, args.model_name, args.model_version, timeout=args.timeout)
    else:
        client = RestClient(args.endpoint, args.model_name, args.model_version, timeout=args.timeout)
    try:
        (prediction,) = client.predict([(args.title, image)])
    except ClientError as e:
        raise cli.UserError(str(e)) from None
    top = prediction.classes[: args.top_k]
    width = max(len(name) for name, _ in top)
    for name, score in top:
        print(f"{name:<{width}}  {score:.4f}")
    if args.top_k > len(prediction.classes):
        print(f"(the model returns its top {len(prediction.classes)} classes)")
    # Whatever else the model answers, when it does: which stream decided, whether to review, ...
    known = [features.OUTPUT_TEXT_WEIGHT_KEY, features.OUTPUT_IMAGE_WEIGHT_KEY, features.OUTPUT_NEEDS_REVIEW_KEY,
             features.OUTPUT_LOGITS_KEY]
    for name in [k for k in known if k in prediction.extras] + sorted(set(prediction.extras) - set(known)):
        value = prediction.extras[name]
        if isinstance(value, list):  # per class (the logits of `classes`): as many as the classes printed
            value = value[: len(top)]
        print(f"{name}: {_format(value)}")


def _format(value) -> str:
    if isinstance(value, list):
        return ", ".join(_format(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
