"""The command line: `python -m pipeline {compile,run-local} ...`."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pipeline import config

# Must precede the first `import tensorflow`, here and in every component subprocess (which inherits it).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class UserError(Exception):
    """An error the user can fix; printed as one line, without a traceback."""


def _add_param_flags(parser: argparse.ArgumentParser, defaults: config.PipelineParams) -> None:
    parser.add_argument("--catalog", required=True, help="CSV or JSON Lines catalog (path or tf.io.gfile URI)")
    parser.add_argument("--label-column", required=True, help="the catalog column holding the category")
    for field in dataclasses.fields(defaults):
        if field.name in ("catalog", "label_column", "serving_base", "beam_args"):
            continue
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], help="a Beam pipeline option")


def _params(args: argparse.Namespace, defaults: config.PipelineParams) -> config.PipelineParams:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(defaults) if hasattr(args, f.name)}
    return dataclasses.replace(defaults, **values)


def compile_pipeline(output: str) -> str:
    from kfp import compiler

    from pipeline.pipeline import hanet_pipeline

    compiler.Compiler().compile(hanet_pipeline, output)
    return output


def run_local(params: config.PipelineParams, work_dir: str) -> dict:
    """Runs the Kubeflow pipeline itself through kfp.local: each task in a subprocess, no cluster."""
    from kfp import local

    from components.push import served_versions
    from pipeline.pipeline import hanet_pipeline

    for name, path in (("--bert-handle", params.bert_handle), ("--image-weights", params.image_weights)):
        if path and "://" not in path and path != "imagenet" and not os.path.exists(path):
            raise UserError(f"{name} {path} does not exist: run scripts/setup_encoders.sh (see README)")
    if "://" not in params.catalog and not os.path.exists(params.catalog):
        raise UserError(f"catalog {params.catalog} does not exist")
    work_dir = os.path.abspath(work_dir)
    params.catalog = os.path.abspath(params.catalog) if "://" not in params.catalog else params.catalog
    params.serving_base = params.serving_base or os.path.join(work_dir, "serving")
    # Component subprocesses import this project's modules, as the component images do.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    before = served_versions(params.serving_base, params.model_name)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=os.path.join(work_dir, "pipeline_root"),
        raise_on_error=True,
    )
    try:
        run = hanet_pipeline(**params.as_arguments())
    except RuntimeError as e:
        raise UserError(f"the local pipeline run failed: {e} (the failing task's log is above)") from None
    pushed = [v for v in served_versions(params.serving_base, params.model_name) if v not in before]
    blessing = run.outputs["blessing"].metadata
    return {
        "metrics": run.outputs["metrics"].metadata,
        "blessed": blessing["blessed"],
        "reason": blessing["reason"],
        "pushed_model": os.path.join(params.serving_base, params.model_name, str(pushed[-1])) if pushed else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    compile_cmd = commands.add_parser("compile", help="write the KFP v2 pipeline spec (IR YAML)")
    compile_cmd.add_argument("--output", default="hanet_pipeline.yaml")

    local_cmd = commands.add_parser("run-local", help="run the whole pipeline on this machine through kfp.local")
    _add_param_flags(local_cmd, config.local_params())
    local_cmd.add_argument("--work-dir", required=True, help="where the run's artifacts go")
    local_cmd.add_argument("--serving-base", default="", help="where blessed models are pushed (default WORK_DIR/serving)")

    args = parser.parse_args(argv)
    try:
        if args.command == "compile":
            print(f"wrote {compile_pipeline(args.output)}")
        elif args.command == "run-local":
            result = run_local(_params(args, config.local_params()), args.work_dir)
            print_local_result(result)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def print_local_result(result: dict) -> None:
    print("evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(result["metrics"].items())))
    print(f"gate: {'blessed' if result['blessed'] else 'not blessed'}: {result['reason']}")
    print(f"pushed model: {result['pushed_model']}" if result["pushed_model"] else "nothing pushed")


if __name__ == "__main__":
    sys.exit(main())
