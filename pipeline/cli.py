"""What every command of `python -m pipeline` shares: one-line user errors and the pipeline flags."""
from __future__ import annotations

import argparse
import dataclasses

from pipeline import config


class UserError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


def add_param_flags(parser: argparse.ArgumentParser, defaults: config.PipelineParams) -> None:
    """One flag per pipeline parameter (`--epochs`, `--fusion`, ...), defaulting to `defaults`."""
    parser.add_argument("--catalog", required=True, help="CSV or JSON Lines catalog (path or tf.io.gfile URI)")
    parser.add_argument("--label-column", required=True, help="the catalog column holding the category")
    for field in dataclasses.fields(defaults):
        if field.name in ("catalog", "label_column", "serving_base", "beam_args"):
            continue
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], help="a Beam pipeline option")


def params_from_args(args: argparse.Namespace, defaults: config.PipelineParams) -> config.PipelineParams:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(defaults) if hasattr(args, f.name)}
    return dataclasses.replace(defaults, **values)
