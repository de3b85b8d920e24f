"""`run-local`: the Kubeflow pipeline itself, run on this machine through kfp.local (no cluster)."""
from __future__ import annotations

import argparse
import os
import shutil

from pipeline import cli, config

REPORT_FILE = "evaluation_report.html"


def register(commands) -> None:
    parser = commands.add_parser("run-local", help="run the whole pipeline on this machine through kfp.local")
    cli.add_param_flags(parser, config.local_params())
    cli.add_config_flags(parser, None)
    parser.add_argument("--work-dir", required=True, help="where the run's artifacts go")
    parser.add_argument(
        "--serving-base", default=argparse.SUPPRESS, help="where blessed models are pushed (default WORK_DIR/serving)"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    # The local defaults, then the config file (if given) and --set, then the parameter flags.
    cfg = cli.load_config(args, config.Config(params=config.local_params()))
    params = cli.params_from_args(args, cfg.params)
    for name in ("catalog", "label_column"):
        if not getattr(params, name):
            raise cli.UserError(f"run-local needs --{name.replace('_', '-')} (or params.{name} in a --config file)")
    result = run_local(params, args.work_dir, cfg.task_settings())
    print("evaluation: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(result["metrics"].items())))
    print(f"gate: {'blessed' if result['blessed'] else 'not blessed'}: {result['reason']}")
    print(f"pushed model: {result['pushed_model']}" if result["pushed_model"] else "nothing pushed")
    print(f"evaluation report: {result['report']}")


def run_local(params: config.PipelineParams, work_dir: str, tasks: config.Tasks | None = None) -> dict:
    """Runs the pipeline through kfp.local: each task in a subprocess, artifacts under WORK_DIR."""
    from kfp import local

    from components import kfp_components
    from components.push import served_versions
    from pipeline.pipeline import create_pipeline

    cli.check_local_inputs(params.catalog, params.bert_handle, params.image_weights)
    try:
        pipeline = create_pipeline(kfp_components.lightweight(), tasks)
    except config.ConfigError as e:
        raise cli.UserError(str(e)) from None
    work_dir = os.path.abspath(work_dir)
    if "://" not in params.catalog:
        params.catalog = os.path.abspath(params.catalog)
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
        run = pipeline(**params.as_arguments())
    except RuntimeError as e:
        raise cli.UserError(f"the local pipeline run failed: {e} (the failing task's log is above)") from None
    pushed = [v for v in served_versions(params.serving_base, params.model_name) if v not in before]
    blessing = run.outputs["blessing"].metadata
    # The evaluate stage's HTML report, where a browser opens it (the artifact's file has no extension).
    report = os.path.join(work_dir, REPORT_FILE)
    shutil.copyfile(run.outputs["report"].path, report)
    return {
        "metrics": run.outputs["metrics"].metadata,
        "blessed": blessing["blessed"],
        "reason": blessing["reason"],
        "pushed_model": os.path.join(params.serving_base, params.model_name, str(pushed[-1])) if pushed else None,
        "report": report,
    }
