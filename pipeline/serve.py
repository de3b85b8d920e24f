"""`serve`: a local endpoint with TF Serving's REST (and gRPC) API over the pushed model versions."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import posixpath
import sys

from pipeline import cli
from common import features
from serving.limits import MIB, ServerLimits


def register(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve SERVING_BASE/MODEL_NAME/<version> with TF Serving's REST and gRPC APIs",
        description="A local stand-in for TF Serving: the newest version under SERVING_BASE/MODEL_NAME is "
        "served and new versions are picked up as the push stage writes them. On a cluster, TF Serving "
        "itself serves the same directory (k8s/).",
    )
    parser.add_argument("--model-base", required=True, help="the pipeline's serving base (path or tf.io.gfile URI)")
    parser.add_argument("--model-name", default=features.MODEL_NAME, help="the model's directory under it")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=features.REST_PORT, help="the REST port")
    parser.add_argument("--grpc-port", type=int, default=features.GRPC_PORT, help="the gRPC port")
    parser.add_argument("--no-grpc", action="store_true", help="serve REST only")
    parser.add_argument("--num-versions", type=int, default=1, help="how many of the newest versions to keep loaded")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="how often to look for new versions")
    parser.add_argument(
        "--enable-batching", action="store_true",
        help="merge concurrent requests into one model call, as TF Serving's --enable_batching",
    )
    parser.add_argument(
        "--batching-parameters", metavar="FILE",
        help="TF Serving's BatchingParameters text file (as its --batching_parameters_file, e.g. "
        "k8s/base/config/batching_parameters.txt): request and batch limits, batch threads, queue, timeout; "
        "with --enable-batching, as TF Serving requires",
    )
    limits = parser.add_argument_group("limits", "what one client may cost the server (docs/serving.md)")
    limits.add_argument("--max-enqueued-instances", type=int, metavar="N",
                        help="instances waiting in each of the queue's pools (requests of one model call or less, "
                        "larger ones); default: max_enqueued_batches full batches, at least max_batch_size")
    limits.add_argument("--max-body-mib", type=float, default=ServerLimits.max_body_bytes / MIB,
                        help="the largest REST body or gRPC message, as sent and once inflated")
    limits.add_argument("--max-inflate-ratio", type=float, default=ServerLimits.max_inflate_ratio,
                        help="a gzip/deflate body inflating more than this many times its compressed size "
                        "(past its first MiB) is refused")
    limits.add_argument("--header-timeout", type=float, default=ServerLimits.header_timeout,
                        help="seconds a REST client has to send a request's headers")
    limits.add_argument("--body-timeout", type=float, default=ServerLimits.body_timeout,
                        help="seconds a REST client has to send a request's body")
    limits.add_argument("--max-connections", type=int, default=ServerLimits.max_connections,
                        help="open REST connections; more are closed at once")
    limits.add_argument("--max-parsing-per-client", type=int, default=ServerLimits.max_parsing_per_client,
                        help="a client's (a connection's) jobs outside the model (inflating, parsing, the image "
                        "header check, the answer) run at a time; the rest wait their turn, the clients taking "
                        "turns")
    limits.add_argument("--refusal-delay", type=float, default=ServerLimits.refusal_delay,
                        help="seconds a refusal for a full queue (503 / UNAVAILABLE) is held before it is answered, "
                        "so a client retrying in a loop costs one request per delay; 0: at once")
    limits.add_argument("--max-held-refusals", type=int, default=ServerLimits.max_held_refusals,
                        help="refusals held at a time; more are answered at once")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    from serving.batching import BatchingParametersError, load_batching_options

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.num_versions < 1:
        raise cli.UserError(f"--num-versions must be at least 1, got {args.num_versions}")
    if args.batching_parameters and not args.enable_batching:
        raise cli.UserError("--batching-parameters needs --enable-batching (TF Serving refuses a batching "
                            "parameters file without batching enabled, too)")
    try:
        batching = load_batching_options(args.batching_parameters, args.enable_batching, args.max_enqueued_instances)
        limits = ServerLimits(max_body_bytes=int(args.max_body_mib * MIB), max_inflate_ratio=args.max_inflate_ratio,
                              header_timeout=args.header_timeout,
                              body_timeout=args.body_timeout, max_connections=args.max_connections,
                              max_parsing_per_client=args.max_parsing_per_client,
                              refusal_delay=args.refusal_delay, max_held_refusals=args.max_held_refusals)
    except (BatchingParametersError, ValueError) as e:
        raise cli.UserError(str(e)) from None
    # TensorFlow (tens of seconds to import) only once the arguments are known to be good.
    from serving import server
    from serving.servables import ServableManager

    # posixpath for URIs (gs://...), which os.path would mangle on other platforms.
    model_base_path = (posixpath if "://" in args.model_base else os.path).join(args.model_base, args.model_name)
    if "://" not in model_base_path and not os.path.isdir(model_base_path):
        print(f"warning: {model_base_path} does not exist yet: waiting for the push stage to write a version",
              file=sys.stderr)
    manager = ServableManager(model_base_path, args.model_name, args.num_versions)
    try:
        server.serve(
            manager,
            host=args.host,
            rest_port=args.port,
            grpc_port=None if args.no_grpc else args.grpc_port,
            poll_seconds=args.poll_seconds,
            batching=batching,
            limits=limits,
        )
    except OSError as e:
        if e.errno == errno.EADDRINUSE or "bind" in str(e):
            raise cli.UserError(f"cannot listen on {args.host}: {e.strerror or e}") from None
        raise
