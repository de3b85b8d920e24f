"""`run-local`: the Kubeflow pipeline itself, run on this machine through kfp.local (no cluster).

The terminal shows each task starting and finishing (with its duration), the stages' progress lines
and a short block a person reads (`final_block`); the rest (kfp.local's listing of every artifact, the executors' logging,
TensorFlow, Beam and tf.Transform chatter) goes to WORK_DIR/logs/run-local.log (common/console.py).
--verbose shows all of it. A failed task is one line naming its exception and the log.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time

from common import baselines, console, poe
from common.params import local_params
from pipeline import cli, config

REPORT_FILE = "evaluation_report.html"
# Every figure of the evaluate stage and the gate's verdict, where the final block says.
METRICS_FILE = "metrics.json"
LOG_FILE = os.path.join("logs", "run-local.log")


def register(commands) -> None:
    parser = commands.add_parser("run-local", help="run the whole pipeline on this machine through kfp.local")
    cli.add_param_flags(parser, local_params())
    cli.add_config_flags(parser, None)
    parser.add_argument("--work-dir", required=True, help="where the run's artifacts go")
    parser.add_argument("--verbose", action="store_true", help="print every library's output too, not only progress")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    # The local defaults, then the config file (if given) and --set, then the parameter flags.
    cfg = cli.load_config(args, config.Config(params=local_params()))
    params = cli.params_from_args(args, cfg.params)
    for name in ("catalog", "label_column"):
        if not getattr(params, name):
            raise cli.UserError(f"run-local needs {cli.flag(name)} (or params.{name} in a --config file)")
    # Before the log exists: a mistake in the command line is not something to look up in a log.
    cli.check_local_inputs(params.catalog, params.bert_handle, params.image_weights)
    with console.quiet(os.path.join(args.work_dir, LOG_FILE), args.verbose) as screen:
        result = run_local(params, args.work_dir, cfg.task_settings(), screen)
    print(final_block(result))


def _figure(value) -> str:
    return "–" if value is None else f"{value:.4f}"


def final_block(result: dict) -> str:
    """The candidate's figures beside the baselines', the gate's verdict, its calibration, and where
    the pushed model, the report and every figure (METRICS_FILE) are."""
    m = result["metrics"]
    rows = [(f"candidate ({result['fusion']})", m.get("top1_accuracy"), m.get("top5_accuracy"), m.get("macro_f1"))]
    if "baseline_top1_accuracy" in m:
        rows.append(("tfidf_svm baseline", m["baseline_top1_accuracy"], m.get("baseline_top5_accuracy"),
                     m.get("baseline_macro_f1")))
    if f"{poe.TFIDF_IMAGE_POE}_top1_accuracy" in m:
        rows.append((f"{poe.TFIDF_IMAGE_POE} baseline", *(m.get(f"{poe.TFIDF_IMAGE_POE}_{name}")
                                                          for name in ("top1_accuracy", "top5_accuracy", "macro_f1"))))
    if "served_top1_accuracy" in m:
        rows.append((f"served version {m['served_version']:g}", m["served_top1_accuracy"], None, None))
    width = max(len(row[0]) for row in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{h:>8}" for h in ("top-1", "top-5", "macro-F1"))
             + f"   ({m.get('examples', 0):g} eval products)"]
    lines += [f"{name:{width}}  " + "  ".join(f"{_figure(v):>8}" for v in values) for name, *values in rows]
    lines.append(f"gate: {'blessed' if result['blessed'] else 'not blessed'}: {result['reason']}")
    if "error" in (result.get("poe_baseline") or {}):
        lines.append(result["poe_baseline"]["error"])
    if below := baselines.below_baseline(m):
        lines.append(f"warning: {below}")
    lines.append(_calibration_line(m))
    lines.append(f"pushed model: {result['pushed_model']}" if result["pushed_model"] else "nothing pushed")
    lines.append(f"evaluation report: {result['report']}")
    lines.append(f"all figures: {result['metrics_file']}")
    return "\n".join(lines)


def _calibration_line(m: dict) -> str:
    if "ece" not in m:
        return "calibration: not measured"
    line = f"calibration: ECE {m['ece']:.4f}"
    if m.get("review_threshold") is not None and m.get("review_share") is not None:
        line += (f"; above the review threshold {m['review_threshold']:.3f}: {100 * (1 - m['review_share']):.1f}% "
                 f"of products" + (f", precision {m['auto_precision']:.4f}" if m.get("auto_precision") is not None
                                   else ""))
    return line


def run_local(
    params, work_dir: str, tasks: config.Tasks | None = None, screen: console.Console | None = None
) -> dict:
    """Runs the pipeline (common.params.PipelineParams) through kfp.local: each task in a subprocess,
    artifacts under WORK_DIR."""
    cli.check_local_inputs(params.catalog, params.bert_handle, params.image_weights)
    from kfp import local

    from components.push import served_versions
    from pipeline import kfp_components
    from pipeline.training_pipeline import create_training_pipeline

    try:
        pipeline = create_training_pipeline(kfp_components.lightweight(), tasks)
    except config.ConfigError as e:
        raise cli.UserError(str(e)) from None
    work_dir = os.path.abspath(work_dir)
    if "://" not in params.catalog:
        params.catalog = os.path.abspath(params.catalog)
    params.serving_base = params.serving_base or os.path.join(work_dir, "serving")
    # Component subprocesses import this project's modules, as the component images do; unbuffered, so
    # their progress lines arrive as they are printed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONUNBUFFERED"] = "1"
    before = served_versions(params.serving_base, params.model_name)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=os.path.join(work_dir, "pipeline_root"),
        raise_on_error=True,
    )
    tasks_seen = _TaskProgress(screen or console.Console(None, None))
    root = logging.getLogger()
    root.addFilter(tasks_seen)
    try:
        run = pipeline(**params.as_arguments())
    except RuntimeError as e:
        raise cli.UserError(tasks_seen.failure(e)) from None
    finally:
        root.removeFilter(tasks_seen)
    pushed = [v for v in served_versions(params.serving_base, params.model_name) if v not in before]
    blessing = run.outputs["blessing"].metadata
    # The evaluate stage's HTML report, where a browser opens it (the artifact's file has no extension).
    report = os.path.join(work_dir, REPORT_FILE)
    shutil.copyfile(run.outputs["report"].path, report)
    metrics_file = os.path.join(work_dir, METRICS_FILE)
    with open(run.outputs["blessing"].path) as f:
        figures = json.load(f)  # the verdict and every figure of the evaluate stage
    with open(metrics_file, "w") as f:
        json.dump({"scalars": run.outputs["metrics"].metadata, **figures}, f, indent=2)
    return {
        "fusion": params.fusion,
        "metrics": run.outputs["metrics"].metadata,
        "blessed": blessing["blessed"],
        "reason": blessing["reason"],
        "pushed_model": os.path.join(params.serving_base, params.model_name, str(pushed[-1])) if pushed else None,
        "report": report,
        "metrics_file": metrics_file,
        "poe_baseline": figures.get("poe_baseline"),
    }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's log records of a task's start and end (kfp/local/task_dispatcher.py). Read, not relied on:
# if a kfp release words them otherwise, the task lines are missing and the run is otherwise the same.
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


class _TaskProgress(logging.Filter):
    """Watches kfp.local's records (on the root logger, whose handler it replaces per task) for a task
    starting and finishing, and says so on the terminal, with the duration; lets every record through."""

    def __init__(self, screen: console.Console):
        super().__init__()
        self._screen, self._started, self.current = screen, {}, None

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", record.getMessage())
        if started := _STARTED.search(text):
            self.current = started.group(1)
            self._started[self.current] = time.monotonic()
            self._screen.mark()
            self._screen.say(f"{self.current}: started")
        elif (finished := _FINISHED.search(text)) and finished.group(2) == "SUCCESS":
            name = finished.group(1)
            self._screen.say(f"{name}: finished in {_duration(time.monotonic() - self._started.get(name, 0.0))}")
        return True

    def failure(self, error: Exception) -> str:
        """One line: the failed task and the exception its output ended with."""
        cause = console.last_error(self._screen.recent()) or console.last_error([str(error)]) or str(error)
        task = f"task {self.current}" if self.current else "the local pipeline run"
        return f"{task} failed: {_ANSI.sub('', cause)} ({self._screen.where()})"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
