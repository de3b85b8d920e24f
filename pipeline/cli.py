"""What every command of `python -m pipeline` shares: one-line user errors, the config file and its
overrides, and the pipeline flags."""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os

from pipeline import config


class UserError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


def check_local_inputs(catalog: str = "", bert_handle: str = "", image_weights: str | None = "") -> None:
    """Local paths given to a command exist (URIs and "imagenet" are left to the loaders; an empty
    argument is not checked)."""
    for name, path in (("--bert-handle", bert_handle), ("--image-weights", image_weights)):
        if path and "://" not in path and path != "imagenet" and not os.path.exists(path):
            raise UserError(f"{name} {path} does not exist: run scripts/setup_encoders.sh (see README)")
    if catalog and "://" not in catalog and not glob.glob(catalog):
        raise UserError(f"catalog {catalog} does not exist")


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
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pipeline parameter, e.g. catalog=gs://b/catalog.jsonl or epochs=20 (repeatable)",
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


def add_param_flags(parser: argparse.ArgumentParser, defaults: config.PipelineParams) -> None:
    """One flag per pipeline parameter (`--epochs`, `--fusion`, ...); a flag not given leaves the
    config's value (or `defaults`, shown in the help) in place."""
    parser.add_argument("--catalog", default=argparse.SUPPRESS, help="CSV or JSON Lines catalog (path or tf.io.gfile URI)")
    parser.add_argument("--label-column", default=argparse.SUPPRESS, help="the catalog column holding the category")
    for field in dataclasses.fields(defaults):
        if field.name in ("catalog", "label_column", "serving_base", "beam_args"):
            continue
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):  # --frozen-encoders / --no-frozen-encoders
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"default: {default!r}")
            continue
        parser.add_argument(flag, type=type(default), default=argparse.SUPPRESS, help=f"default: {default!r}")
    parser.add_argument(
        "--beam-arg", dest="beam_args", action="append", default=argparse.SUPPRESS, help="a Beam pipeline option"
    )


def params_from_args(args: argparse.Namespace, defaults: config.PipelineParams) -> config.PipelineParams:
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
