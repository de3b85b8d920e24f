"""`compile`: the KFP v2 pipeline spec (IR YAML) of a deployment, ready to upload to a Kubeflow cluster.

`--pipeline training` (default): preprocess → train → evaluate → push; the config's parameters become
the spec's parameter defaults (a run may override each). `--pipeline batch-predict`: hanet-batch-predict
(pipeline/batch_pipeline.py), whose parameters are BatchPredictParams (`--param model_dir=...`); it
takes the config's images, task settings (tasks.batch_predict), pipeline root and caching switch.
Images, task resources, node placement, retries, caching and the pipeline root are fixed in the spec.
"""
from __future__ import annotations

import argparse

from common import params as declared
from common.params import BatchPredictParams
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
    cfg = cli.load_config(argparse.Namespace(**{**vars(args), "params": []}))
    try:
        params = config.with_overrides(BatchPredictParams(), args.params)
    except config.ConfigError as e:
        raise cli.UserError(f"--param: {e}") from None
    return cfg, params


def create(pipeline: str, cfg: config.Config):
    """The chosen pipeline of containerized components, with the deployment's task settings and root."""
    from pipeline import kfp_components

    if pipeline == BATCH_PREDICT:
        from pipeline.batch_pipeline import create_batch_pipeline as create_chosen
    else:
        from pipeline.training_pipeline import create_training_pipeline as create_chosen
    components = kfp_components.containerized(cfg.images.component_image, cfg.images.trainer_image)
    try:
        return create_chosen(components, cfg.task_settings(), cfg.pipeline_root)
    except config.ConfigError as e:
        raise cli.UserError(str(e)) from None


def compile_spec(pipeline: str, cfg: config.Config, params: declared.Params, output: str) -> str:
    """Writes the spec of the chosen pipeline to `output`, `params` as its parameters' defaults."""
    from kfp import compiler

    compiler.Compiler().compile(create(pipeline, cfg), output, pipeline_parameters=params.as_arguments())
    return output


def main(args: argparse.Namespace) -> None:
    cfg, params = load(args)
    output = compile_spec(args.pipeline, cfg, params, args.output or DEFAULT_OUTPUTS[args.pipeline])
    images = cfg.images.component_image if args.pipeline == BATCH_PREDICT else (
        f"{cfg.images.component_image}, {cfg.images.trainer_image}"
    )
    print(f"wrote {output} (images {images})")
