"""`submit`: run the pipeline on a Kubeflow Pipelines cluster.

Compiles the deployment (or takes `--package FILE`), uploads it as a new version of the pipeline
`hanet-product-classifier` (or, with `--pipeline batch-predict`, `hanet-batch-predict`), starts a run of
that version in an experiment and prints the run's page in the pipelines UI; with `--wait`, follows the
run and its tasks to the end. With `--schedule CRON`, it creates a recurring run of that version instead
(kfp.Client().create_recurring_run), e.g. the nightly batch prediction.

Authentication is kfp.Client's, from the environment:
  KF_PIPELINES_ENDPOINT              the API, when --host is not given (kfp.Client reads it)
  KF_PIPELINES_UI_ENDPOINT           the UI of the printed links, when it is not the API's host (kfp.Client reads it)
  KF_PIPELINES_TOKEN                 a bearer token, e.g. `gcloud auth print-access-token` (kfp.Client's existing_token)
  KF_PIPELINES_COOKIES               a Cookie header, e.g. `authservice_session=...` behind Kubeflow's auth proxy
  KF_PIPELINES_SA_TOKEN_PATH         a projected service-account token file, from inside the cluster
  KF_PIPELINES_IAP_OAUTH2_CLIENT_ID, KF_PIPELINES_APP_OAUTH2_CLIENT_ID, KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET
                                     Identity-Aware Proxy in front of the API (kfp.Client reads them)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import tempfile
import time
import warnings

import yaml

from common import params as declared
from pipeline import cli, config

TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIES_ENV = "KF_PIPELINES_COOKIES"
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
FINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
# KFP's cron (robfig/cron): six fields, seconds first.
CRON_FIELDS = 6


def register(commands) -> None:
    from pipeline.compile_pipeline import add_pipeline_flag

    parser = commands.add_parser("submit", help="run the pipeline on a Kubeflow Pipelines cluster")
    add_pipeline_flag(parser)
    parser.add_argument("--host", help=f"the pipelines API, e.g. https://kubeflow.example.com/pipeline (default: ${ENDPOINT_ENV})")
    parser.add_argument("--namespace", help="the Kubeflow profile namespace (multi-user clusters)")
    parser.add_argument("--experiment", default="hanet", help="the experiment the run is filed under")
    parser.add_argument("--run-name", help="default: hanet[-batch]-<UTC time>; also names the pipeline version")
    parser.add_argument("--package", metavar="FILE", help="a compiled pipeline spec to run instead of compiling")
    parser.add_argument("--wait", action="store_true", help="follow the run to its end; fail if it does not succeed")
    parser.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    parser.add_argument("--poll-seconds", type=float, default=15.0, help="with --wait: time between status checks")
    parser.add_argument(
        "--schedule", metavar="CRON",
        help="create a recurring run instead of a run, on KFP's 6-field cron (seconds first), e.g. "
             "'0 0 2 * * *' for every night at 02:00 (the scheduler's time zone, usually UTC)",
    )
    cli.add_cluster_flags(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    from pipeline import compile_pipeline

    compiled_in = [o for o in args.overrides if o.split(".", 1)[0] in ("images", "tasks")]
    if args.package and (args.image_tag or compiled_in):
        flag = "--image-tag" if args.image_tag else f"--set {compiled_in[0]}"
        raise cli.UserError(f"{flag} changes the compiled spec, so it cannot apply to --package: compile again")
    if args.schedule:
        check_cron(args.schedule)
        if args.wait:
            raise cli.UserError("--wait follows one run; a --schedule starts runs later: leave one of them out")
    batch = args.pipeline == compile_pipeline.BATCH_PREDICT
    cfg, params = compile_pipeline.load(args)
    host = args.host or os.environ.get(ENDPOINT_ENV)
    if not host:
        raise cli.UserError(f"submit needs --host (or ${ENDPOINT_ENV}): the Kubeflow Pipelines API")
    prefix = "hanet-batch-" if batch else "hanet-"
    run_name = args.run_name or prefix + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    # --param values go to the run as arguments, typed by the pipeline's parameters (PipelineParams or
    # BatchPredictParams).
    arguments = {name: getattr(params, name) for name in (p.partition("=")[0] for p in args.params)}
    if batch:
        from pipeline.batch_pipeline import PIPELINE_NAME
    else:
        from pipeline.training_pipeline import PIPELINE_NAME
    with tempfile.TemporaryDirectory() as tmp:
        if args.package:
            package = args.package
        else:
            output = os.path.join(tmp, compile_pipeline.DEFAULT_OUTPUTS[args.pipeline])
            package = compile_pipeline.compile_spec(args.pipeline, cfg, params, output)
        # The batch pipeline's parameters are not in the config file: --param only.
        _check_required_params(package, arguments, declared.required(type(params)), config_hint=not batch)
        submitted = submit(
            host,
            package,
            run_name=run_name,
            experiment=args.experiment,
            namespace=args.namespace,
            arguments=arguments,
            pipeline_root=cfg.pipeline_root,
            enable_caching=None if cfg.caching else False,
            service_account=cfg.service_account,
            pipeline_name=PIPELINE_NAME,
            schedule=args.schedule,
        )
    ui = submitted["ui"]
    print(f"pipeline version: {ui}/#/pipelines/details/{submitted['pipeline_id']}/version/{submitted['version_id']}")
    print(f"experiment {args.experiment}: {ui}/#/experiments/details/{submitted['experiment_id']}")
    if args.schedule:
        print(f"recurring run {run_name} ({args.schedule}): {ui}/#/recurringrun/details/{submitted['recurring_run_id']}")
        return
    print(f"run {run_name}: {ui}/#/runs/details/{submitted['run_id']}")
    if args.wait:
        state = follow(submitted["client"], host, submitted["run_id"], args.poll_seconds, args.timeout)
        if state != "SUCCEEDED":
            raise cli.UserError(f"run {run_name} ended {state}: see {ui}/#/runs/details/{submitted['run_id']}")


def check_cron(schedule: str) -> None:
    fields = schedule.split()
    if len(fields) != CRON_FIELDS:
        hint = f": add the seconds first, '0 {schedule}'" if len(fields) == CRON_FIELDS - 1 else ""
        raise cli.UserError(
            f"--schedule {schedule!r} has {len(fields)} fields; KFP's cron has {CRON_FIELDS}, seconds first{hint}"
        )


def _check_required_params(
    package: str, arguments: dict, required: tuple[str, ...] = config.REQUIRED_PARAMS, config_hint: bool = True
) -> None:
    """Fails before anything reaches the cluster if the run would start without a catalog, etc."""
    try:
        with open(package) as f:
            spec = next(yaml.safe_load_all(f))  # then, with node selectors etc., the platform spec
        defaults = spec["root"]["inputDefinitions"]["parameters"]
    except OSError as e:
        raise cli.UserError(f"cannot read the package {package}: {e.strerror}") from None
    except (yaml.YAMLError, KeyError, TypeError, StopIteration):
        return  # not a spec this command understands: let the API server judge it
    for name in required:
        if not arguments.get(name, defaults.get(name, {}).get("defaultValue")):
            hint = f" or set params.{name} in the config" if config_hint else ""
            raise cli.UserError(f"the run has no {name}: pass --param {name}=...{hint}")


def submit(
    host: str,
    package: str,
    *,
    run_name: str,
    experiment: str,
    namespace: str | None = None,
    arguments: dict | None = None,
    pipeline_root: str = "",
    enable_caching: bool | None = None,
    service_account: str = "",
    pipeline_name: str | None = None,
    schedule: str | None = None,
) -> dict:
    """Uploads `package` as a version of the pipeline `pipeline_name` (default: the training pipeline's)
    and starts a run of it, or with `schedule` (a KFP cron) creates a recurring run; returns the ids."""
    if pipeline_name is None:
        from pipeline.training_pipeline import PIPELINE_NAME as pipeline_name

    with _api_errors(host, "connecting"):
        client = _client(host, namespace)
    # kfp.Client prints its own "... details: URL" lines; this command prints one summary instead.
    with contextlib.redirect_stdout(io.StringIO()):
        with _api_errors(host, "creating the experiment"):
            experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
        with _api_errors(host, f"uploading the package {package}"):
            pipeline_id, version_id = _upload(client, package, pipeline_name, run_name, namespace)
        ids = {
            "client": client,
            "ui": (os.environ.get(UI_ENDPOINT_ENV) or host).rstrip("/"),
            "experiment_id": experiment_id,
            "pipeline_id": pipeline_id,
            "version_id": version_id,
        }
        run_settings = dict(
            experiment_id=experiment_id,
            job_name=run_name,
            params=arguments or {},
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=pipeline_root or None,
            enable_caching=enable_caching,
            service_account=service_account or None,
        )
        if schedule:
            with _api_errors(host, "creating the recurring run"):
                recurring = client.create_recurring_run(
                    cron_expression=schedule,
                    # One run at a time, and no backfill of the nights the schedule was paused: each
                    # run reads the catalog as it is when it starts.
                    max_concurrency=1,
                    no_catchup=True,
                    **run_settings,
                )
            return {**ids, "recurring_run_id": recurring.recurring_run_id}
        with _api_errors(host, "creating the run"):
            run = client.run_pipeline(**run_settings)
    return {**ids, "run_id": run.run_id}


def _client(host: str, namespace: str | None):
    import kfp
    from kfp.client import set_volume_credentials

    credentials = None
    if os.environ.get(SA_TOKEN_PATH_ENV) and not os.environ.get(TOKEN_ENV):
        credentials = set_volume_credentials.ServiceAccountTokenVolumeCredentials()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        return kfp.Client(
            host=host,
            namespace=namespace or "kubeflow",  # kfp.Client's own default: no namespace chosen
            existing_token=os.environ.get(TOKEN_ENV) or None,
            cookies=os.environ.get(COOKIES_ENV) or None,
            credentials=credentials,
        )


def _upload(client, package: str, pipeline_name: str, version_name: str, namespace: str | None) -> tuple[str, str]:
    """The new version's (pipeline id, version id); the pipeline is created on its first upload."""
    by_name = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": pipeline_name}]})
    existing = client.list_pipelines(filter=by_name, namespace=namespace).pipelines or []
    if existing:
        pipeline_id = existing[0].pipeline_id
        version = client.upload_pipeline_version(package, version_name, pipeline_id=pipeline_id)
        return pipeline_id, version.pipeline_version_id
    pipeline_id = client.upload_pipeline(package, pipeline_name, namespace=namespace).pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
    if not versions:
        raise cli.UserError(f"the API uploaded the pipeline {pipeline_id} but lists no version of it")
    return pipeline_id, versions[0].pipeline_version_id


def follow(client, host: str, run_id: str, poll_seconds: float, timeout: float | None) -> str:
    """Prints the run's state and its tasks' states as they change; returns the final state."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        with _api_errors(host, f"reading the run {run_id}"):
            run = client.get_run(run_id)
        for task in (run.run_details.task_details if run.run_details else None) or []:
            name, state = task.display_name, task.state
            if name and state and seen.get(task.task_id) != state and not name.endswith("-driver") and name != "root":
                seen[task.task_id] = state
                print(f"  {name}: {state}", flush=True)
        state = run.state or "PENDING"
        if seen.get("run") != state:
            seen["run"] = state
            print(f"run: {state}", flush=True)
        if state in FINAL_STATES:
            if run.error and run.error.message:
                print(f"run error: {run.error.message}", flush=True)
            return state
        if timeout is not None and time.monotonic() - started > timeout:
            raise cli.UserError(f"the run {run_id} is still {state} after {timeout:g} s (it keeps running)")
        time.sleep(poll_seconds)


@contextlib.contextmanager
def _api_errors(host: str, doing: str):
    """Turns the client's network and API errors into one-line user errors."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except urllib3.exceptions.HTTPError as e:
        reason = str(getattr(e, "reason", None) or e)
        if reason.startswith("<") and ">: " in reason:  # "<HTTPConnection object at 0x...>: Failed to ..."
            reason = reason.split(">: ", 1)[1]
        raise cli.UserError(f"cannot reach the Kubeflow Pipelines API at {host} ({doing}): {reason}") from None
    except kfp_server_api.ApiException as e:
        raise cli.UserError(
            f"the Kubeflow Pipelines API at {host} refused {doing}: HTTP {e.status} {e.reason}: {_message(e.body)}"
        ) from None
    except (ValueError, TimeoutError) as e:
        raise cli.UserError(f"{doing} at {host} failed: {e}") from None


def _message(body) -> str:
    """The server's error message: grpc-gateway answers {"error": ..., "message": ..., "code": ...}."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
        text = data.get("message") or data.get("error") or body
    except (TypeError, ValueError, AttributeError):
        text = body or "(no message)"
    return " ".join(str(text).split())[:500]
