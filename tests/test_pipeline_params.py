"""Each pipeline parameter is declared once (common/params.py); everything that names parameters is derived
from that declaration or checked against it here: the KFP signatures, the task wiring, the component
shells, run-local's flags, the spec's descriptions and the stages' own defaults."""
import argparse
import dataclasses
import inspect

import pytest
from kfp import dsl

from common import params as declared
from common.params import BatchPredictParams, PipelineParams, local_params
from pipeline import batch_pipeline, cli, kfp_components, training_pipeline
from pipeline.wiring import pipeline_function
from tests.test_pipeline_spec import compile_spec

# The shells each pipeline runs, and the parameters they may take.
SHELLS = {
    PipelineParams: (kfp_components.preprocess, kfp_components.train, kfp_components.evaluate, kfp_components.push),
    BatchPredictParams: (kfp_components.batch_predict,),
}
PARAMETER_TYPES = (str, int, float, bool, list, dict)


def shell_parameters(shell) -> dict[str, type]:
    """A shell's parameters (not its Input[...]/Output[...] artifacts) with their annotations."""
    return {
        name: p.annotation for name, p in inspect.signature(shell).parameters.items() if p.annotation in PARAMETER_TYPES
    }


def disagreements(shell, params_cls) -> list[str]:
    types = declared.types(params_cls)
    found = []
    for name, annotation in shell_parameters(shell).items():
        if name not in types:
            found.append(f"{shell.__name__}({name}) is not declared in {params_cls.__name__}")
        elif annotation is not types[name]:
            found.append(f"{shell.__name__}({name}: {annotation.__name__}) is declared {types[name].__name__}")
    return found


@pytest.mark.parametrize("params_cls", SHELLS, ids=lambda cls: cls.__name__)
def test_every_shell_parameter_is_declared_with_its_type_and_every_declared_one_is_used(params_cls):
    shells = SHELLS[params_cls]
    assert [d for shell in shells for d in disagreements(shell, params_cls)] == []
    used = {name for shell in shells for name in shell_parameters(shell)}
    assert used == {f.name for f in dataclasses.fields(params_cls)}


def test_a_shell_that_disagrees_with_the_declaration_is_caught():
    def train(examples: dsl.Input[dsl.Dataset], epochs: float, label_smoothing: float, model: dsl.Output[dsl.Model]):
        pass

    assert disagreements(train, PipelineParams) == [
        "train(epochs: float) is declared int",
        "train(label_smoothing) is not declared in PipelineParams",
    ]


@pytest.mark.parametrize("params_cls", SHELLS, ids=lambda cls: cls.__name__)
def test_the_generated_signature_is_the_declaration(params_cls):
    function = pipeline_function(params_cls, lambda values: values, None, "f", "A pipeline.")
    signature = inspect.signature(function)
    defaults = params_cls()
    assert set(signature.parameters) == {f.name for f in dataclasses.fields(params_cls)}
    for name, parameter in signature.parameters.items():
        assert parameter.annotation is declared.types(params_cls)[name], name
        if name in declared.required(params_cls):
            assert parameter.default is inspect.Parameter.empty, name
        else:
            assert parameter.default == getattr(defaults, name), name
    # KFP passes the parameters by position: the body gets them by name.
    values = [f"v-{name}" for name in signature.parameters]
    assert function(*values) == {name: f"v-{name}" for name in signature.parameters}


@pytest.mark.parametrize(
    "pipeline, params_cls, task_components",
    [
        ("training", PipelineParams, ("preprocess", "train", "evaluate", "push")),
        ("batch-predict", BatchPredictParams, ("batch-predict",)),
    ],
)
def test_the_spec_wires_each_task_to_the_parameters_of_its_shell_and_describes_them(
    tmp_path, pipeline, params_cls, task_components
):
    spec, _ = compile_spec(tmp_path, "--pipeline", pipeline)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    for f in dataclasses.fields(params_cls):
        assert parameters[f.name]["description"] == f.metadata["help"], f.name
        assert parameters[f.name].get("isOptional", False) != f.metadata["required"], f.name
    tasks = {**spec["root"]["dag"]["tasks"], **spec["components"].get("comp-condition-1", {}).get("dag", {}).get("tasks", {})}
    shells = {s.__name__.replace("_", "-"): s for s in SHELLS[params_cls]}
    for name in task_components:
        wiring = tasks[name]["inputs"]["parameters"]
        expected = {p: p for p in shell_parameters(shells[name])}
        # Inside the dsl.If, KFP renames the parameters it passes down.
        assert {k: v["componentInputParameter"].removeprefix("pipelinechannel--") for k, v in wiring.items()} == expected


def test_the_pipeline_modules_name_their_parameters_nowhere_else():
    """No parameter name is spelled in the pipeline definitions: a new one needs no edit there."""
    for module in (training_pipeline, batch_pipeline):
        source = inspect.getsource(module)
        spelled = [f.name for cls in SHELLS for f in dataclasses.fields(cls)
                   if f'"{f.name}"' in source or f"{f.name}=" in source]
        assert spelled == [], module.__name__


def test_run_local_has_a_flag_per_parameter_with_its_declared_help_and_local_default():
    parser = argparse.ArgumentParser()
    cli.add_param_flags(parser, local_params())
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(actions) == {f.name for f in dataclasses.fields(PipelineParams)}
    for f in dataclasses.fields(PipelineParams):
        assert actions[f.name].help.startswith(f.metadata["help"].replace("%", "%%")), f.name
    args = parser.parse_args(
        ["--epochs", "3", "--no-mixed-precision", "--beam-arg=--runner=DirectRunner", "--beam-arg=--x=1"]
    )
    params = cli.params_from_args(args, local_params())
    assert (params.epochs, params.mixed_precision, params.beam_args) == (3, False, ["--runner=DirectRunner", "--x=1"])
    assert params.image_size == 96 and params.tune == "top"  # the local defaults stay where no flag is given


def test_local_params_differ_from_production_only_where_declared():
    production, local = dataclasses.asdict(PipelineParams()), dataclasses.asdict(local_params())
    declared_local = {f.name for f in dataclasses.fields(PipelineParams) if f.metadata["local"] is not declared._SAME}
    assert {name for name in production if production[name] != local[name]} == declared_local
    assert local["bert_handle"] == str(declared.PRETRAINED_DIR / "bert_minilm_l6")


def test_the_stages_own_defaults_agree_with_the_declaration():
    """The stages' functions and commands take defaults of their own: they must be the pipeline's. The
    catalog's names and limits are common/features.py's in both, so only the recipes and the model's
    settings, which the trainer owns, are compared."""
    from trainer import recipe
    from trainer.model import ModelConfig

    p = PipelineParams()
    # The production defaults are the paper's recipes (trainer/recipe.py), which the train shell overrides.
    fusion, image, head = recipe.PAPER_FUSION, recipe.PAPER_IMAGE, recipe.HEAD
    assert (p.learning_rate, p.epochs, p.batch_size) == (fusion.learning_rate, fusion.epochs, fusion.batch_size)
    assert (p.image_learning_rate, p.image_epochs, p.image_batch_size, p.image_lr_decay_epochs) == (
        image.learning_rate, image.epochs, image.batch_size, image.decay_epochs)
    assert (p.head_learning_rate, p.head_epochs) == (head.learning_rate, head.epochs)
    model = ModelConfig()
    assert (p.image_variant, p.text_pooling, p.text_top_blocks, p.image_top_blocks) == (
        model.image_variant, model.text_pooling, model.text_top_blocks, model.image_top_blocks)
