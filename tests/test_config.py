"""The deployment config: YAML over the defaults, generic over the dataclasses, errors naming the key."""
import dataclasses
import textwrap

import pytest

from common.params import PipelineParams
from pipeline import config
from pipeline.__main__ import main


def write(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_sets_only_the_keys_it_names(tmp_path):
    cfg = config.load(write(tmp_path, """
        params:
          learning_rate: 1e-4          # PyYAML reads this as a string
          beam_args: [--runner=DirectRunner]
        tasks:
          train:
            accelerator_type: nvidia.com/gpu
            accelerator_count: 4
            cpu_request: 12           # an integer is a fine quantity string
            tolerations:
              - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
        """))
    defaults = config.Config()
    assert cfg.params.learning_rate == 1e-4 and cfg.params.beam_args == ["--runner=DirectRunner"]
    assert cfg.params.epochs == defaults.params.epochs
    assert cfg.tasks.train.accelerator_count == 4 and cfg.tasks.train.cpu_request == "12"
    assert cfg.tasks.train.tolerations == [config.Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule")]
    assert cfg.tasks.train.retries == 0 and cfg.tasks.preprocess == defaults.tasks.preprocess
    assert cfg.images == defaults.images


@pytest.mark.parametrize(
    "text, message",
    [
        ("params:\n  epoch: 3\n", "unknown key params.epoch"),
        ("tasks:\n  trian: {}\n", "unknown key tasks.trian"),
        ("params:\n  epochs: three\n", "params.epochs: expected int, got 'three'"),
        ("images:\n  tag: 1.10\n", "images.tag: expected a string, got 1.1 (quote it)"),
        ("caching: maybe\n", "caching: expected bool"),
        ("tasks:\n  train:\n    node_selector: [a]\n", "tasks.train.node_selector: expected a mapping"),
        ("tasks:\n  train:\n    tolerations: [{key: k, effect: NoSchedul}]\n", "tasks.train.tolerations[0].effect"),
        ("tasks:\n  train:\n    accelerator_count: 1\n", "tasks.train.accelerator_type and accelerator_count"),
        ("params: [1, 2]\n", "params: expected a mapping"),
        ("params:\n  epochs: [\n", "is not valid YAML (line 3)"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as error:
        config.load(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_every_pipeline_parameter_is_settable_without_listing_it(tmp_path):
    """Parameters added to PipelineParams need no change to the loading."""
    samples = {str: "x", int: 7, float: 0.25, bool: True, list: ["--a=b"]}
    values = {
        f.name: samples[type(getattr(PipelineParams(), f.name))] for f in dataclasses.fields(PipelineParams)
    }
    lines = "".join(f"  {name}: {value!r}\n".replace("'", '"') for name, value in values.items())
    assert dataclasses.asdict(config.load(write(tmp_path, "params:\n" + lines)).params) == values


def test_overrides_apply_together_typed_by_their_key():
    cfg = config.with_overrides(
        config.Config(),
        [
            "tasks.train.accelerator_type=nvidia.com/gpu",  # either order: checked once, together
            "tasks.train.accelerator_count=2",
            "images.tag=1.10",  # a string key keeps the text as given
            "params.beam_args=[--runner=DataflowRunner, --region=europe-west4]",
            "tasks.evaluate.node_selector={cloud.google.com/gke-nodepool: highmem}",
            "caching=false",
        ],
    )
    assert (cfg.tasks.train.accelerator_type, cfg.tasks.train.accelerator_count) == ("nvidia.com/gpu", 2)
    assert cfg.images.trainer_image == "hanet-trainer:1.10"
    assert cfg.params.beam_args == ["--runner=DataflowRunner", "--region=europe-west4"]
    assert cfg.tasks.evaluate.node_selector == {"cloud.google.com/gke-nodepool": "highmem"}
    assert not any(getattr(cfg.task_settings(), f.name).caching for f in dataclasses.fields(config.Tasks))
    with pytest.raises(config.ConfigError, match="expected KEY=VALUE"):
        config.with_overrides(config.Config(), ["epochs"])


def test_the_shipped_config_loads_and_needs_a_catalog_and_serving_base_per_run():
    cfg = config.load(config.DEFAULT_CONFIG)
    assert cfg.missing_params() == ["catalog", "serving_base"]
    assert cfg.tasks.train.accelerator_count == 1 and not cfg.tasks.preprocess.accelerator_count


def test_run_local_reads_a_config_and_its_flags_win(tmp_path, capsys):
    path = write(tmp_path, f"params:\n  catalog: {tmp_path / 'from-config.csv'}\n  label_column: articleType\n")
    assert main(["run-local", "--config", str(path), "--work-dir", str(tmp_path)]) == 1
    assert "from-config.csv does not exist" in capsys.readouterr().err
    flags = ["run-local", "--config", str(path), "--catalog", str(tmp_path / "from-flag.csv"), "--work-dir", str(tmp_path)]
    assert main(flags) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "from-flag.csv does not exist" in err


def test_config_errors_are_one_line(tmp_path, capsys):
    path = write(tmp_path, "tasks:\n  train:\n    gpus: 1\n")
    assert main(["compile", "--config", str(path), "--output", str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key tasks.train.gpus" in err
    assert main(["run-local", "--work-dir", str(tmp_path)]) == 1
    assert "run-local needs --catalog" in capsys.readouterr().err
