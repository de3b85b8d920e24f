"""What every command of `python -m pipeline` shares: one-line user errors (common/cli.py), the config
file and its overrides, and the pipeline parameters' flags."""
from __future__ import annotations

import argparse
import dataclasses

from common import params as declared
from common.cli import UserError, check_local_inputs  # noqa: F401 (the commands' names for them)
from pipeline import config


def add_config_flags(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    """`--config FILE` and `--set KEY=VALUE`: the deployment file and any key of it."""
    parser.add_argument(
        "--config",
        default=default_config,
        metavar="FILE",
        help=f"the YAML config (default: {default_config or 'none, the defaults of this command'})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. tasks.train.accelerator_count=2 or images.tag=v3 (repeatable)",
    )


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that target a cluster (compile, submit)."""
    add_config_flags(parser, str(config.DEFAULT_CONFIG))
    names = ", ".join(f.name for f in dataclasses.fields(declared.PipelineParams))
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline parameter, e.g. catalog=gs://b/catalog.jsonl or epochs=20 (repeatable); the training "
        f"pipeline's: {names}; the batch pipeline's: see common/params.py",
    )
    parser.add_argument("--image-tag", help="the tag of both images (overrides images.tag)")
    parser.add_argument("--pipeline-root", help="where the run's artifacts go, e.g. gs://BUCKET/pipeline_root")
    parser.add_argument("--no-cache", action="store_true", help="run every task, reusing no cached result")


def load_config(args: argparse.Namespace, base: config.Config | None = None) -> config.Config:
    """The config file (if any) over `base`, then --set, --param and the dedicated flags."""
    overrides = list(args.overrides) + [f"params.{p}" for p in getattr(args, "params", [])]
    try:
        cfg = config.with_overrides(config.load(args.config, base), overrides)
    except config.ConfigError as e:
        raise UserError(str(e)) from None
    if getattr(args, "image_tag", None):
        cfg.images.tag = args.image_tag
    if getattr(args, "pipeline_root", None):
        cfg.pipeline_root = args.pipeline_root
    if getattr(args, "no_cache", False):
        cfg.caching = False
    return cfg


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_param_flags(parser: argparse.ArgumentParser, defaults: declared.PipelineParams, skip=()) -> None:
    """One flag per pipeline parameter (`--epochs`, `--fusion`, `--beam-arg` for beam_args, ...), with
    its declared help; a flag not given leaves the config's value (or `defaults`, shown in the help) in
    place."""
    for field in dataclasses.fields(defaults):
        if field.name in skip:
            continue
        default = getattr(defaults, field.name)
        help = field.metadata["help"].replace("%", "%%")  # argparse %-formats help texts
        if isinstance(default, list):  # repeatable: --beam-arg=--runner=DataflowRunner --beam-arg=...
            parser.add_argument(flag(field.name.removesuffix("s")), dest=field.name, action="append",
                                default=argparse.SUPPRESS, help=f"{help} (repeatable)")
        elif isinstance(default, bool):  # --frozen-encoders / --no-frozen-encoders
            parser.add_argument(flag(field.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{help} (default: {default!r})")
        elif field.metadata["required"] and not default:
            parser.add_argument(flag(field.name), type=type(default), default=argparse.SUPPRESS, help=help)
        else:
            parser.add_argument(flag(field.name), type=type(default), default=argparse.SUPPRESS,
                                help=f"{help} (default: {default!r})")


def params_from_args(args: argparse.Namespace, defaults: declared.PipelineParams) -> declared.PipelineParams:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(defaults) if hasattr(args, f.name)}
    return dataclasses.replace(defaults, **values)


HEAD_FLAG_PREFIX = "head_"


def add_head_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of the fusion heads' HeadConfig (--head-width, --head-stream-norm, ...)."""
    from common.flags import add_dataclass_flags
    from trainer.fusion import HeadConfig

    add_dataclass_flags(parser, HeadConfig, HEAD_FLAG_PREFIX)


def head_config_from_args(args: argparse.Namespace):
    from common.flags import dataclass_from_args
    from trainer.fusion import HeadConfig

    return dataclass_from_args(HeadConfig, args, HEAD_FLAG_PREFIX)
