"""`python -m trainer`: the training stage as a command, for a TFJob/multi-worker pod or a shell.

Every field of ModelConfig, of each stage's Recipe (--text-*, --image-*, --fusion-*) and of
TrainConfig is a flag, defaulting to the paper's settings. Run it again with the same arguments
after an interruption and it continues (see trainer/train.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from common import features  # noqa: E402
from common.flags import add_dataclass_flags, dataclass_from_args  # noqa: E402
from trainer.fusion import HeadConfig  # noqa: E402
from trainer.model import ModelConfig  # noqa: E402
from trainer.recipe import Recipe  # noqa: E402
from trainer.train import TrainConfig  # noqa: E402

_STAGE_RECIPES = ("text", "image", "fusion", "head")


def _add_flag(parser: argparse.ArgumentParser, name: str, default) -> None:
    flag = "--" + name.replace("_", "-")
    if isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
    else:
        # None defaults (image_weights, backup_every_steps) take "" or 0 on the command line.
        kind = type(default) if default is not None else (int if name.endswith("steps") else str)
        parser.add_argument(flag, type=kind, default=default, help=f"default: {default!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    p.add_argument("--examples", required=True, help="the transform stage's examples directory")
    p.add_argument("--transform-graph", required=True, help="the transform stage's transform graph")
    p.add_argument("--export-dir", required=True, help="where the serving SavedModel goes")
    p.add_argument("--work-dir", required=True, help="checkpoints, backups, logs, feature cache")
    p.add_argument("--text-export-dir", default="", help="also export the text model here")
    p.add_argument("--image-export-dir", default="", help="also export the image model here")
    for field in dataclasses.fields(ModelConfig):
        if field.name != "head":
            _add_flag(p, field.name, getattr(ModelConfig(), field.name))
    add_dataclass_flags(p, HeadConfig, "head_")
    defaults = TrainConfig()
    for stage in _STAGE_RECIPES:
        for field in dataclasses.fields(Recipe):
            _add_flag(p, f"{stage}_{field.name}", getattr(getattr(defaults, f"{stage}_recipe"), field.name))
    for field in dataclasses.fields(TrainConfig):
        if not field.name.endswith("_recipe"):
            _add_flag(p, field.name, getattr(defaults, field.name))
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    model_config = ModelConfig(
        **{f.name: args[f.name] for f in dataclasses.fields(ModelConfig) if f.name != "head"} | {
            "image_weights": args["image_weights"] or None, "head": dataclass_from_args(HeadConfig, args, "head_")}
    )
    recipes = {
        f"{stage}_recipe": Recipe(**{f.name: args[f"{stage}_{f.name}"] for f in dataclasses.fields(Recipe)})
        for stage in _STAGE_RECIPES
    }
    rest = {f.name: args[f.name] for f in dataclasses.fields(TrainConfig) if not f.name.endswith("_recipe")}
    rest["backup_every_steps"] = rest["backup_every_steps"] or None
    from trainer.train import train

    train(
        examples_dir=args["examples"],
        transform_graph_dir=args["transform_graph"],
        export_dir=args["export_dir"],
        work_dir=args["work_dir"],
        model_config=model_config,
        train_config=TrainConfig(**recipes, **rest),
        unimodal_export_dirs={features.TEXT_ONLY: args["text_export_dir"], features.IMAGE_ONLY: args["image_export_dir"]},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
