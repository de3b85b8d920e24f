"""The compiled pipeline spec (KFP v2 IR) of `python -m pipeline compile`, as a cluster reads it."""
import dataclasses

import pytest
import yaml

from common.params import PipelineParams
from pipeline import config
from pipeline.__main__ import main

STAGES = ("preprocess", "train", "evaluate", "push")


def compile_spec(tmp_path, *flags) -> tuple[dict, dict]:
    """(pipeline spec, Kubernetes platform spec) of `compile FLAGS`."""
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--output", str(output), *flags]) == 0
    docs = list(yaml.safe_load_all(output.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return docs[0], platform


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The spec of the shipped config/pipeline.yaml, with an image tag."""
    return compile_spec(tmp_path_factory.mktemp("shipped"), "--image-tag", "0a1b2c3")


@pytest.fixture(scope="module")
def shipped_config() -> config.Config:
    return config.load(config.DEFAULT_CONFIG)


def container(spec: dict, stage: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]


def task(spec: dict, stage: str) -> dict:
    tasks = spec["root"]["dag"]["tasks"]
    return tasks[stage] if stage in tasks else spec["components"]["comp-condition-1"]["dag"]["tasks"][stage]


def test_task_graph_with_push_only_when_evaluate_blesses_the_model(shipped):
    spec, _ = shipped
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"preprocess", "train", "evaluate", "condition-1"}
    assert "dependentTasks" not in tasks["preprocess"]
    assert tasks["train"]["dependentTasks"] == ["preprocess"]
    assert set(tasks["evaluate"]["dependentTasks"]) == {"preprocess", "train"}
    # push exists only inside the dsl.If, whose condition is evaluate's boolean verdict.
    assert set(spec["components"]["comp-condition-1"]["dag"]["tasks"]) == {"push"}
    assert tasks["condition-1"]["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    )
    assert tasks["condition-1"]["inputs"]["parameters"]["pipelinechannel--evaluate-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "evaluate",
    }


def test_containerized_components_in_their_images(shipped):
    spec, _ = shipped
    for stage in STAGES:
        c = container(spec, stage)
        # The containerized-component command: the function is found through the image's kfp_config.ini.
        assert c["command"] == ["python3", "-m", "kfp.dsl.executor_main"]
        assert c["args"][c["args"].index("--function_to_execute") + 1] == stage
        expected = "hanet-trainer:0a1b2c3" if stage == "train" else "hanet-components:0a1b2c3"
        assert c["image"] == expected


def test_only_train_asks_for_a_gpu_and_goes_to_the_gpu_pool(shipped):
    spec, platform = shipped
    accelerator = container(spec, "train")["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert platform["exec-train"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert platform["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for stage in ("preprocess", "evaluate", "push"):
        assert "accelerator" not in container(spec, stage)["resources"]
        assert f"exec-{stage}" not in platform


def test_every_task_has_the_configs_cpu_and_memory(shipped, shipped_config):
    spec, _ = shipped
    for stage in STAGES:
        resources = container(spec, stage)["resources"]
        settings = getattr(shipped_config.tasks, stage)
        assert resources["resourceCpuRequest"] == settings.cpu_request and settings.cpu_request
        assert resources["resourceCpuLimit"] == settings.cpu_limit
        assert resources["resourceMemoryRequest"] == settings.memory_request and settings.memory_request
        assert resources["resourceMemoryLimit"] == settings.memory_limit


def test_caching_on_except_push_and_retries_with_backoff_on_the_remote_readers(shipped):
    spec, _ = shipped
    assert {stage: task(spec, stage)["cachingOptions"].get("enableCache", False) for stage in STAGES} == {
        "preprocess": True,
        "train": True,
        "evaluate": True,
        "push": False,
    }
    assert task(spec, "preprocess")["retryPolicy"] == {
        "maxRetryCount": 3,
        "backoffDuration": "60s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "3600s",
    }
    assert task(spec, "train")["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in task(spec, "evaluate") and "retryPolicy" not in task(spec, "push")


def test_every_component_output_is_a_typed_artifact_for_lineage(shipped):
    spec, _ = shipped
    expected = {
        "preprocess": {"examples": "system.Dataset", "transform_graph": "system.Artifact", "report": "system.Artifact",
                       "quarantine": "system.Dataset", "label_vocabulary": "system.Artifact", "metrics": "system.Metrics"},
        "train": {"model": "system.Model", "text_model": "system.Model", "image_model": "system.Model",
                  "training_state": "system.Artifact", "poe_features": "system.Dataset"},
        "evaluate": {"metrics": "system.Metrics", "blessing": "system.Artifact"},
        "push": {"pushed_model": "system.Model"},
    }
    for stage, artifacts in expected.items():
        outputs = spec["components"][f"comp-{stage}"]["outputDefinitions"]
        typed = {name: a["artifactType"]["schemaTitle"] for name, a in outputs["artifacts"].items()}
        assert typed.items() >= artifacts.items(), stage
        assert all(title.startswith("system.") for title in typed.values()), typed
        # Besides artifacts, only a component's single return value: the gate's verdict, push's version.
        assert set(outputs.get("parameters", {})) <= {"Output"}, stage
    # push consumes train's model artifact itself (not a path string): the UI draws model → pushed model.
    assert task(spec, "push")["inputs"]["artifacts"]["model"] == {"componentInputArtifact": "pipelinechannel--train-model"}
    # evaluate is sent the bounded poe features, not the work directory (checkpoints, the feature cache), which a
    # cluster's launcher would copy into its pod whole.
    evaluated = task(spec, "evaluate")["inputs"]["artifacts"]
    assert evaluated["poe_features"] == {"taskOutputArtifact": {"producerTask": "train", "outputArtifactKey": "poe_features"}}
    assert "training_state" not in evaluated


def test_the_parameters_are_exactly_pipeline_params_with_the_configs_defaults(shipped, shipped_config):
    spec, _ = shipped
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert set(parameters) == {f.name for f in dataclasses.fields(PipelineParams)}
    for name, value in dataclasses.asdict(shipped_config.params).items():
        assert parameters[name]["defaultValue"] == value, name
    assert parameters["label_column"]["defaultValue"] == "articleType"  # set by the shipped config


def test_the_compiled_gate_refuses_a_model_below_the_baseline_and_run_local_only_reports_it(shipped):
    from common.params import local_params

    parameters = shipped[0]["root"]["inputDefinitions"]["parameters"]
    assert parameters["baseline_tolerance"]["defaultValue"] == 0.0
    assert local_params().baseline_tolerance == 1.0


def test_flags_override_the_config_per_compile(tmp_path):
    spec, platform = compile_spec(
        tmp_path,
        "--param", "epochs=3",
        "--param", "catalog=gs://shop/catalog.jsonl",
        "--pipeline-root", "gs://shop/pipeline_root",
        "--no-cache",
        "--set", "tasks.train.accelerator_count=2",
        "--set", "tasks.train.node_selector={cloud.google.com/gke-accelerator: nvidia-l4}",
        "--set", "tasks.push.pvc_mounts={hanet-model-store-rw: /mnt/serving}",
    )
    assert spec["defaultPipelineRoot"] == "gs://shop/pipeline_root"
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["epochs"]["defaultValue"] == 3 and parameters["catalog"]["defaultValue"] == "gs://shop/catalog.jsonl"
    assert all(not task(spec, stage)["cachingOptions"].get("enableCache", False) for stage in STAGES)
    assert container(spec, "train")["resources"]["accelerator"]["resourceCount"] == "2"
    assert platform["exec-train"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert platform["exec-push"]["pvcMount"][0]["mountPath"] == "/mnt/serving"
    assert platform["exec-push"]["pvcMount"][0]["constant"] == "hanet-model-store-rw"


def test_a_bad_resource_fails_compile_in_one_line_naming_the_task(tmp_path, capsys):
    code = main(["compile", "--output", str(tmp_path / "p.yaml"), "--set", "tasks.train.memory_limit=lots"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: tasks.train:") and "memory" in err
    assert not (tmp_path / "p.yaml").exists()
