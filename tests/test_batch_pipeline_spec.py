"""The compiled spec (KFP v2 IR) of `python -m pipeline compile --pipeline batch-predict`, as a cluster
reads it, and `submit --pipeline batch-predict [--schedule CRON]` against a fake of the API server."""
import configparser
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

from common.params import BatchPredictParams
from pipeline import batch_pipeline, config
from pipeline.__main__ import main
from tests.test_pipeline_spec import compile_spec
from tests.test_submit import API, FakePipelinesAPI

REPO = pathlib.Path(__file__).resolve().parents[1]
OUTPUT_ARTIFACTS = {
    "predictions": "system.Dataset",
    "quarantine": "system.Dataset",
    "report": "system.Artifact",
    "metrics": "system.Metrics",
    "summary": "system.HTML",
}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The batch spec of the shipped config/pipeline.yaml, with an image tag."""
    return compile_spec(tmp_path_factory.mktemp("batch"), "--pipeline", "batch-predict", "--image-tag", "0a1b2c3")


def executor(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]["exec-batch-predict"]["container"]


def test_one_task_in_the_component_image_running_the_batch_predict_shell(shipped):
    spec, platform = shipped
    assert spec["pipelineInfo"]["name"] == batch_pipeline.PIPELINE_NAME == "hanet-batch-predict"
    assert set(spec["root"]["dag"]["tasks"]) == {"batch-predict"}
    container = executor(spec)
    assert container["image"] == "hanet-components:0a1b2c3"
    assert container["command"] == ["python3", "-m", "kfp.dsl.executor_main"]
    assert container["args"][container["args"].index("--function_to_execute") + 1] == "batch_predict"
    assert "accelerator" not in container["resources"] and not platform


def test_the_task_has_its_own_settings_and_is_never_cached(shipped):
    spec, _ = shipped
    settings = config.load(config.DEFAULT_CONFIG).tasks.batch_predict
    resources = executor(spec)["resources"]
    assert resources["resourceCpuRequest"] == settings.cpu_request and settings.cpu_request
    assert resources["resourceCpuLimit"] == settings.cpu_limit
    assert resources["resourceMemoryRequest"] == settings.memory_request
    assert resources["resourceMemoryLimit"] == settings.memory_limit
    # A recurring run reads the same catalog URI with new contents: a cache hit would be stale.
    assert not settings.caching and not config.Tasks().batch_predict.caching
    assert not spec["root"]["dag"]["tasks"]["batch-predict"]["cachingOptions"].get("enableCache", False)


def test_the_batch_tasks_settings_are_not_the_evaluate_tasks(tmp_path):
    spec, _ = compile_spec(tmp_path, "--pipeline", "batch-predict", "--set", "tasks.evaluate.memory_limit=64Gi",
                           "--set", "tasks.batch_predict.caching=true")
    assert executor(spec)["resources"]["resourceMemoryLimit"] != "64Gi"
    assert spec["root"]["dag"]["tasks"]["batch-predict"]["cachingOptions"]["enableCache"] is True


def test_outputs_are_typed_artifacts_and_the_ui_gets_metrics_and_the_summary(shipped):
    spec, _ = shipped
    outputs = spec["components"]["comp-batch-predict"]["outputDefinitions"]
    assert {n: a["artifactType"]["schemaTitle"] for n, a in outputs["artifacts"].items()} == OUTPUT_ARTIFACTS
    assert "parameters" not in outputs
    pipeline_outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert {n: a["artifactType"]["schemaTitle"] for n, a in pipeline_outputs.items()} == {
        n: t for n, t in OUTPUT_ARTIFACTS.items() if n != "quarantine"
    }


def test_the_parameters_are_exactly_batch_predict_params_wired_to_the_task(shipped):
    spec, _ = shipped
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    fields = {f.name for f in dataclasses.fields(BatchPredictParams)}
    assert set(parameters) == fields
    for name, value in dataclasses.asdict(BatchPredictParams()).items():
        assert parameters[name]["defaultValue"] == value, name
    wiring = spec["root"]["dag"]["tasks"]["batch-predict"]["inputs"]["parameters"]
    assert wiring == {name: {"componentInputParameter": name} for name in fields}
    # The training pipeline's config parameters (e.g. its Beam options) do not leak into this one.
    assert parameters["beam_args"]["defaultValue"] == []


def test_params_and_settings_per_compile(tmp_path):
    spec, _ = compile_spec(
        tmp_path, "--pipeline", "batch-predict",
        "--param", "model_dir=gs://shop/serving/hanet", "--param", "top_k=3", "--param", "output_format=parquet",
        "--param", "beam_args=[--runner=DataflowRunner, --region=europe-west4]",
        "--set", "tasks.batch_predict.memory_limit=32Gi", "--pipeline-root", "gs://shop/root",
    )
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["model_dir"]["defaultValue"] == "gs://shop/serving/hanet"
    assert parameters["top_k"]["defaultValue"] == 3 and parameters["output_format"]["defaultValue"] == "parquet"
    assert parameters["beam_args"]["defaultValue"] == ["--runner=DataflowRunner", "--region=europe-west4"]
    assert executor(spec)["resources"]["resourceMemoryLimit"] == "32Gi"
    assert spec["defaultPipelineRoot"] == "gs://shop/root"


def test_an_unknown_param_fails_compile_in_one_line(tmp_path, capsys):
    output = tmp_path / "p.yaml"
    code = main(["compile", "--pipeline", "batch-predict", "--output", str(output), "--param", "epochs=3"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: --param: unknown key epochs")
    assert not output.exists()


def test_the_default_output_names_the_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "--pipeline", "batch-predict"]) == 0
    assert (tmp_path / "hanet_batch_predict.yaml").exists()
    assert "wrote hanet_batch_predict.yaml (images hanet-components:latest)" in capsys.readouterr().out


def _kfp_config_components() -> dict:
    ini = configparser.ConfigParser()
    ini.optionxform = str
    ini.read(REPO / "images" / "kfp_config.ini")
    return dict(ini["Components"])


def test_the_compiled_command_runs_the_shell_with_the_specs_parameters(shipped, fashion_catalog, tmp_path):
    """The container's command, in a working directory laid out like the image's, finds the shell
    through the image's kfp_config.ini and calls it with the spec's parameters: it gets as far as
    the job's own check of the model (here absent), past the catalog and its label column."""
    spec, _ = shipped
    root = tmp_path / "workdir"
    root.mkdir()
    shutil.copy(REPO / "images" / "kfp_config.ini", root / "kfp_config.ini")
    for package in ("common", "components", "pipeline", "trainer"):
        (root / package).symlink_to(REPO / package)
    parameters = {name: definition["defaultValue"]
                  for name, definition in spec["root"]["inputDefinitions"]["parameters"].items()}
    kinds = spec["components"]["comp-batch-predict"]["inputDefinitions"]["parameters"]
    # The spec holds numbers as floats; the backend's JSON writes an integral one as an integer.
    parameters = {name: int(value) if kinds[name]["parameterType"] == "NUMBER_INTEGER" else value
                  for name, value in parameters.items()}
    absent = tmp_path / "no-model"
    parameters.update(model_dir=str(absent), catalog=str(fashion_catalog), label_column="articleType")
    outputs = tmp_path / "outputs"
    executor_input = {
        "inputs": {"parameterValues": parameters},
        "outputs": {
            "artifacts": {name: {"artifacts": [{"name": name, "type": {"schemaTitle": kind},
                                                "uri": str(outputs / name)}]}
                          for name, kind in OUTPUT_ARTIFACTS.items()},
            "outputFile": str(outputs / "executor_output.json"),
        },
    }
    container = executor(spec)
    command = [sys.executable, *container["command"][1:]] + [
        json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode != 0
    assert "kfp_config.ini" in result.stdout + result.stderr  # found through the config, as in the image
    assert f"{absent} does not exist" in result.stderr, result.stderr[-3000:]


def test_the_images_kfp_config_names_the_shell(shipped):
    spec, _ = shipped
    args = executor(spec)["args"]
    assert _kfp_config_components()[args[args.index("--function_to_execute") + 1]] == "pipeline/kfp_components.py"


# ---- submit ---------------------------------------------------------------------------------------


class FakePipelinesAPIWithSchedules(FakePipelinesAPI):
    """Adds the recurring-run route kfp.Client.create_recurring_run uses."""

    def __init__(self):
        super().__init__()
        self.recurring_runs: list[dict] = []

    def handle(self, method, path, query, body, content_type):
        if method == "POST" and path == f"{API}/recurringruns":
            recurring = {**json.loads(body), "recurring_run_id": f"rr{len(self.recurring_runs) + 1}"}
            self.recurring_runs.append(recurring)
            return 200, recurring
        return super().handle(method, path, query, body, content_type)


@pytest.fixture
def api():
    import threading

    server = FakePipelinesAPIWithSchedules()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_auth_environment(monkeypatch):
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIES",
                 "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


def test_submit_schedules_a_nightly_run_of_the_batch_pipeline(api, capsys):
    args = ["submit", "--host", api.url, "--pipeline", "batch-predict", "--run-name", "nightly",
            "--experiment", "catalog", "--schedule", "0 0 2 * * *", "--image-tag", "f00d",
            "--param", "model_dir=gs://shop/serving/hanet", "--param", "catalog=gs://shop/new/*.csv",
            "--param", "top_k=3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert not api.runs
    (recurring,) = api.recurring_runs
    assert f"recurring run nightly (0 0 2 * * *): {api.url}/#/recurringrun/details/rr1" in out
    assert recurring["display_name"] == "nightly" and recurring["experiment_id"] == "e1"
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True and recurring["mode"] == "ENABLE"
    assert recurring["pipeline_version_reference"] == {"pipeline_id": "p1", "pipeline_version_id": "v1"}
    assert recurring["runtime_config"]["parameters"] == {
        "model_dir": "gs://shop/serving/hanet", "catalog": "gs://shop/new/*.csv", "top_k": 3,
    }
    assert [p["display_name"] for p in api.pipelines] == ["hanet-batch-predict"]
    spec = next(yaml.safe_load_all(api.uploaded[0]))
    assert spec["pipelineInfo"]["name"] == "hanet-batch-predict"
    assert executor(spec)["image"] == "hanet-components:f00d"


def test_submit_runs_the_batch_pipeline_once_without_a_schedule(api, capsys):
    assert main(["submit", "--host", api.url, "--pipeline", "batch-predict", "--param", "model_dir=m",
                 "--param", "catalog=c.csv"]) == 0
    (run,) = api.runs.values()
    assert run["display_name"].startswith("hanet-batch-")
    assert run["runtime_config"]["parameters"] == {"model_dir": "m", "catalog": "c.csv"}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--schedule", "0 2 * * *"], "--schedule '0 2 * * *' has 5 fields; KFP's cron has 6, seconds first: "
                                      "add the seconds first, '0 0 2 * * *'"),
        (["--schedule", "0 0 2 * * *", "--wait"], "--wait follows one run"),
        (["--param", "catalog=c.csv"], "the run has no model_dir: pass --param model_dir=..."),
    ],
)
def test_submit_errors_are_one_line_before_contacting_the_cluster(api, flags, message, capsys):
    code = main(["submit", "--host", api.url, "--pipeline", "batch-predict", *flags] + (
        ["--param", "model_dir=m", "--param", "catalog=c.csv"] if "--param" not in flags else []
    ))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not api.requests
