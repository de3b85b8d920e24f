"""`compile`: the KFP v2 pipeline spec (IR YAML), ready to upload to a Kubeflow cluster."""
from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser("compile", help="write the KFP v2 pipeline spec (IR YAML)")
    parser.add_argument("--output", default="hanet_pipeline.yaml")
    parser.set_defaults(func=main)


def compile_pipeline(output: str) -> str:
    from kfp import compiler

    from components import kfp_components
    from pipeline.pipeline import create_pipeline

    components = kfp_components.containerized("hanet-components:latest", "hanet-trainer:latest")
    compiler.Compiler().compile(create_pipeline(components), output)
    return output


def main(args: argparse.Namespace) -> None:
    print(f"wrote {compile_pipeline(args.output)}")
