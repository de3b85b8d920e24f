"""`compile`: the KFP v2 pipeline spec (IR YAML) of a deployment, ready to upload to a Kubeflow cluster.

The config's parameters become the spec's parameter defaults (a run may override each); images,
task resources, node placement, retries, caching and the pipeline root are fixed in the spec.
"""
from __future__ import annotations

import argparse

from pipeline import cli, config


def register(commands) -> None:
    parser = commands.add_parser("compile", help="write the KFP v2 pipeline spec (IR YAML)")
    cli.add_cluster_flags(parser)
    parser.add_argument("--output", default="hanet_pipeline.yaml")
    parser.set_defaults(func=main)


def compile_pipeline(cfg: config.Config, output: str) -> str:
    from kfp import compiler

    from components import kfp_components
    from pipeline.pipeline import create_pipeline

    components = kfp_components.containerized(cfg.images.component_image, cfg.images.trainer_image)
    try:
        pipeline = create_pipeline(components, cfg.task_settings(), cfg.pipeline_root)
    except config.ConfigError as e:
        raise cli.UserError(str(e)) from None
    compiler.Compiler().compile(pipeline, output, pipeline_parameters=cfg.params.as_arguments())
    return output


def main(args: argparse.Namespace) -> None:
    cfg = cli.load_config(args)
    print(f"wrote {compile_pipeline(cfg, args.output)} (images {cfg.images.component_image}, {cfg.images.trainer_image})")
