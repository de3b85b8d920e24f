"""`compile`: the KFP v2 pipeline spec (IR YAML), ready to upload to a Kubeflow cluster."""
from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser("compile", help="write the KFP v2 pipeline spec (IR YAML)")
    parser.add_argument("--output", default="hanet_pipeline.yaml")
    parser.set_defaults(func=main)


def compile_pipeline(output: str) -> str:
    from kfp import compiler

    from pipeline.pipeline import hanet_pipeline

    compiler.Compiler().compile(hanet_pipeline, output)
    return output


def main(args: argparse.Namespace) -> None:
    print(f"wrote {compile_pipeline(args.output)}")
