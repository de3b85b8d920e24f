"""`compile`: the KFP v2 pipeline spec (IR YAML) of a deployment, ready to upload to a Kubeflow cluster.

`--pipeline training` (default): preprocess → train → evaluate → push; the config's parameters become
the spec's parameter defaults (a run may override each). `--pipeline batch-predict`: hanet-batch-predict
(pipeline/batch_pipeline.py), whose parameters are BatchPredictParams (`--param model_dir=...`); it
takes the config's images, task settings (those of evaluate), pipeline root and caching switch.
Images, task resources, node placement, retries, caching and the pipeline root are fixed in the spec.
"""
from __future__ import annotations

import argparse

from pipeline import cli, config

TRAINING = "training"
BATCH_PREDICT = "batch-predict"
PIPELINES = (TRAINING, BATCH_PREDICT)
DEFAULT_OUTPUTS = {TRAINING: "hanet_pipeline.yaml", BATCH_PREDICT: "hanet_batch_predict.yaml"}


def add_pipeline_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=TRAINING,
        help="the training pipeline (default) or hanet-batch-predict (pipeline/batch_pipeline.py)",
    )


def register(commands) -> None:
    parser = commands.add_parser("compile", help="write the KFP v2 pipeline spec (IR YAML)")
    add_pipeline_flag(parser)
    cli.add_cluster_flags(parser)
    parser.add_argument("--output", help=f"default: {DEFAULT_OUTPUTS[TRAINING]}, or {DEFAULT_OUTPUTS[BATCH_PREDICT]}")
    parser.set_defaults(func=main)


def load(args: argparse.Namespace):
    """(the deployment config, the chosen pipeline's parameters) of a compile or submit command line:
    --param sets the training pipeline's PipelineParams or the batch pipeline's BatchPredictParams."""
    if getattr(args, "pipeline", TRAINING) == TRAINING:
        cfg = cli.load_config(args)
        return cfg, cfg.params
    from pipeline.batch_pipeline import BatchPredictParams

    cfg = cli.load_config(argparse.Namespace(**{**vars(args), "params": []}))
    try:
        params = config.with_overrides(BatchPredictParams(), args.params)
    except config.ConfigError as e:
        raise cli.UserError(f"--param: {e}") from None
    return cfg, params


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


def compile_batch_pipeline(cfg: config.Config, params, output: str) -> str:
    """The spec of hanet-batch-predict, `params` (BatchPredictParams) as its parameter defaults."""
    from kfp import compiler

    from components import kfp_components
    from pipeline.batch_pipeline import create_batch_pipeline

    components = kfp_components.containerized(cfg.images.component_image, cfg.images.trainer_image)
    try:
        pipeline = create_batch_pipeline(components, cfg.task_settings(), cfg.pipeline_root)
    except config.ConfigError as e:
        raise cli.UserError(str(e)) from None
    compiler.Compiler().compile(pipeline, output, pipeline_parameters=params.as_arguments())
    return output


def compile_chosen(pipeline: str, cfg: config.Config, params, output: str) -> str:
    if pipeline == BATCH_PREDICT:
        return compile_batch_pipeline(cfg, params, output)
    return compile_pipeline(cfg, output)


def main(args: argparse.Namespace) -> None:
    cfg, params = load(args)
    output = compile_chosen(args.pipeline, cfg, params, args.output or DEFAULT_OUTPUTS[args.pipeline])
    images = cfg.images.component_image if args.pipeline == BATCH_PREDICT else (
        f"{cfg.images.component_image}, {cfg.images.trainer_image}"
    )
    print(f"wrote {output} (images {images})")
