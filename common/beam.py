"""What the two Beam jobs (preprocess, batch prediction) share: their pipeline options, the checks of
their outputs before anything runs, their scratch directory, and the counts a run prints.

Beam is imported inside the functions: common/ is imported by serving and the trainer, which need no Beam.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
import uuid
from typing import Iterable, Sequence

DIRECT_RUNNERS = ("DirectRunner", "direct")
# How the DirectRunner runs a job's workers: processes (CPU-bound Python) or threads (TensorFlow releases the GIL).
MULTI_PROCESSING, MULTI_THREADING = "multi_processing", "multi_threading"
_PROJECT_ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def beam_options(beam_args: Sequence[str], direct_running_mode: str):
    """Pipeline options from command-line style arguments, passed through unchanged, plus defaults:
    the DirectRunner, and on it `direct_running_mode` with one worker per core."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(beam_args)
    if PipelineOptions(args).view_as(StandardOptions).runner is None:
        # Beam's own default is now Prism, which downloads a binary at run time.
        args.append("--runner=DirectRunner")
    runner = PipelineOptions(args).view_as(StandardOptions).runner
    if runner in DIRECT_RUNNERS and not any(a.startswith("--direct_running_mode") for a in args):
        args.append(f"--direct_running_mode={direct_running_mode}")
        if not any(a.startswith("--direct_num_workers") for a in args):
            # Not Beam's 0 (os.cpu_count()): in a Kubernetes pod that is the node's cores, not the
            # pod's CPU limit, and 64 workers in a 4-CPU pod run out of memory. joblib reads the limit.
            import joblib

            args.append(f"--direct_num_workers={joblib.cpu_count()}")
    return PipelineOptions(args)


def runs_on_this_machine(beam_args: Sequence[str]) -> bool:
    """Whether the runner's workers share this machine's files: only then may outputs be local paths
    (remote workers need URIs such as gs:// or s3://)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    return runner is None or runner in DIRECT_RUNNERS  # no runner: beam_options picks the DirectRunner


def check_outputs(output_dir: str, earlier: dict[str, str], other_dirs: Iterable[str], error: type[Exception]) -> None:
    """Raises `error` if a file under `output_dir` matches a pattern of `earlier` ({what: glob}: files of an
    earlier run, which would be read as part of this one), or if a directory cannot be written."""
    from apache_beam.io.filesystems import FileSystems

    for what, pattern in earlier.items():
        if FileSystems.match([pattern])[0].metadata_list:
            raise error(f"{output_dir} already holds {what}: write to a new directory")
    for directory in dict.fromkeys((output_dir, *other_dirs)):
        check_writable(directory, error)


def check_writable(directory: str, error: type[Exception]) -> None:
    """Raises `error` unless a file can be written in `directory` (made if missing)."""
    from apache_beam.io.filesystems import FileSystems

    # Written to rather than asked about: permissions, a read-only mount or a bucket's IAM only show on
    # writing, and otherwise the job would fail at its end, its work lost.
    probe = FileSystems.join(directory, f".hanet-write-check-{uuid.uuid4().hex}")
    try:
        if not FileSystems.exists(directory):
            FileSystems.mkdirs(directory)
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
    except Exception as e:  # BeamIOError, OSError, or a cloud client's own error
        raise error(f"output directory {directory} cannot be written: {e}") from None


def scratch_dir(pipeline_options, temp_dir: str | None, job: str) -> str:
    """The job's scratch directory: `temp_dir`, else a new one under the pipeline's --temp_location
    (remote runners need one) or the local temp dir. Also lets the DirectRunner's worker processes
    import this project."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions

    if pipeline_options.view_as(DirectOptions).direct_running_mode == MULTI_PROCESSING:
        # The worker processes unpickle this project's DoFns, so they must be able to import it.
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if _PROJECT_ROOT not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, *paths]))
    if temp_dir is not None:
        return temp_dir
    temp_location = pipeline_options.view_as(GoogleCloudOptions).temp_location
    if temp_location:
        return FileSystems.join(temp_location, f"hanet-{job}-{uuid.uuid4().hex}")
    return tempfile.mkdtemp(prefix=f"hanet-{job}-")


def format_counts(metrics: dict, outcome: str, *, first: Sequence[str] = (), then: Sequence[str] = ()) -> str:
    """A job's counts as a few lines for a terminal or a component log: `first`, the rows in, what
    became of them (`outcome`), the rows quarantined per reason, then `then`."""
    quarantined = ", ".join(f"{reason} {n}" for reason, n in metrics["quarantined"].items()) or "none"
    return "\n".join([*first, f"rows in: {metrics['rows_in']}", outcome, f"quarantined: {quarantined}", *then])


def write_json(path: str, payload: dict, *, sort_keys: bool = False) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=sort_keys, ensure_ascii=False)


def delete_dir(path: str) -> None:
    import tensorflow as tf

    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
