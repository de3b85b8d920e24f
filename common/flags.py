"""Command-line flags derived from a dataclass: each field declared once, with its default, becomes
`--prefix-field-name` (booleans as --x/--no-x), and the parsed flags become the dataclass again."""
from __future__ import annotations

import argparse
import dataclasses


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "", skip=()) -> None:
    defaults = cls()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = getattr(defaults, field.name)
        flag = "--" + (prefix + field.name).replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=f"default: {default!r}")


def dataclass_from_args(cls, args: argparse.Namespace | dict, prefix: str = "", **overrides):
    values = vars(args) if isinstance(args, argparse.Namespace) else args
    fields = {f.name: values[prefix + f.name] for f in dataclasses.fields(cls) if prefix + f.name in values}
    return cls(**{**fields, **overrides})
