"""The container images of images/, without a Docker engine: lint, what they copy, what they build on,
and the compiled pipeline's command run in a replica of the component image's layout."""
import ast
import configparser
import fnmatch
import importlib.metadata
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline import kfp_components
from pipeline.__main__ import main

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"component": IMAGES / "component.Dockerfile", "trainer": IMAGES / "trainer.Dockerfile"}


def instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    result, pending = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def final_stage(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def copies(dockerfile: pathlib.Path) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not from another stage)."""
    result = []
    for keyword, arguments in final_stage(dockerfile):
        words = shlex.split(arguments)
        if keyword == "COPY" and not any(w.startswith("--from") for w in words):
            result.append((words[:-1], words[-1]))
    return result


def pins(path: pathlib.Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.lower().split("==") for line in lines if line)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(image):
    hadolint = pathlib.Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(DOCKERFILES[image])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_everything_copied_exists_in_the_build_context(image):
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]

    def is_ignored(relative: str) -> bool:
        parts = pathlib.PurePosixPath(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
            for pattern in ignored
            for prefix in prefixes
        )

    sources = [source for sources, _ in copies(DOCKERFILES[image]) for source in sources]
    assert {"requirements.txt", "images/kfp_config.ini", "common/", "components/", "trainer/", "pipeline/"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not is_ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"
    for big in (".venv", "pretrained", ".git"):
        assert is_ignored(big)


def test_images_build_on_the_python_and_beam_of_the_lock():
    lock = pins(REPO / "requirements.txt")
    for image, dockerfile in DOCKERFILES.items():
        base = final_stage(dockerfile)[0][1]
        assert base == kfp_components.BASE_IMAGE, image
        assert base.startswith("python:3.11-"), f"{image}: the lock is for Python 3.11, the image has {base}"
        run = " ".join(arguments for keyword, arguments in final_stage(dockerfile) if keyword == "RUN")
        assert "--no-deps -r requirements.txt" in run and "sys.version_info[:2] == (3, 11)" in run
    beam_stage = instructions(DOCKERFILES["component"])[0][1]
    assert beam_stage == f"apache/beam_python3.11_sdk:{lock['apache-beam']} AS beam"
    assert ("ENTRYPOINT", '["/opt/apache/beam/boot"]') in final_stage(DOCKERFILES["component"])


def test_cuda_wheels_are_tensorflows_and_cuda_extra_pinned():
    cuda = pins(IMAGES / "requirements-cuda.txt")
    extra = [
        Requirement(r) for r in importlib.metadata.requires("tensorflow") if 'extra == "and-cuda"' in r.replace("'", '"')
    ]
    assert pins(REPO / "requirements.txt")["tensorflow"] == importlib.metadata.version("tensorflow")
    assert {r.name.lower() for r in extra} == set(cuda)
    for requirement in extra:
        assert requirement.specifier.contains(cuda[requirement.name.lower()]), requirement


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    assert main(["compile", "--output", str(output), "--image-tag", "t"]) == 0
    return next(yaml.safe_load_all(output.read_text()))


def test_kfp_config_of_the_images_names_a_module_that_defines_every_compiled_function(compiled):
    ini = configparser.ConfigParser()
    ini.optionxform = str  # as kfp.dsl.kfp_config reads it: names are case-sensitive
    ini.read(IMAGES / "kfp_config.ini")
    components = dict(ini["Components"])
    for executor in compiled["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        function = args[args.index("--function_to_execute") + 1]
        module = REPO / components[function]
        for dockerfile in DOCKERFILES.values():
            assert any(components[function].startswith(d) for sources, _ in copies(dockerfile) for d in sources)
        defined = {node.name for node in ast.parse(module.read_text()).body if isinstance(node, ast.FunctionDef)}
        assert function in defined


def test_compiled_push_command_runs_in_a_replica_of_the_component_image(compiled, tmp_path):
    """The cluster runs exactly this command in the image's WORKDIR: it must find and run the function."""
    steps = final_stage(DOCKERFILES["component"])
    workdir = [arguments for keyword, arguments in steps if keyword == "WORKDIR"][-1]
    root = tmp_path / "image" / workdir.lstrip("/")
    root.mkdir(parents=True)
    for sources, destination in copies(DOCKERFILES["component"]):
        for source in sources:
            target = root / destination / (pathlib.Path(source).name if destination.endswith("/") else "")
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, root / destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target)
    env = {"PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path)}
    for keyword, arguments in steps:
        if keyword == "ENV":
            for assignment in shlex.split(arguments):
                name, _, value = assignment.partition("=")
                env[name] = value.replace(workdir, str(root))

    model = tmp_path / "artifacts" / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"a graph")
    (model / "variables" / "variables.index").write_bytes(b"an index")
    serving = tmp_path / "serving"
    outputs = tmp_path / "outputs"
    # push's parameters as the pipeline passes them: its defaults, with this test's serving base. The
    # spec holds numbers as floats; the backend's JSON writes an integral one as an integer.
    wiring = compiled["components"]["comp-condition-1"]["dag"]["tasks"]["push"]["inputs"]["parameters"]
    kinds = compiled["components"]["comp-push"]["inputDefinitions"]["parameters"]
    defaults = compiled["root"]["inputDefinitions"]["parameters"]
    parameters = {}
    for name, source in wiring.items():
        value = defaults[source["componentInputParameter"].removeprefix("pipelinechannel--")]["defaultValue"]
        parameters[name] = int(value) if kinds[name]["parameterType"] == "NUMBER_INTEGER" else value
    parameters["serving_base"] = str(serving)
    executor_input = {
        "inputs": {
            "parameterValues": parameters,
            "artifacts": {
                "model": {"artifacts": [{"name": "model", "type": {"schemaTitle": "system.Model"}, "uri": str(model)}]}
            },
        },
        "outputs": {
            "parameters": {"Output": {"outputFile": str(outputs / "Output")}},
            "artifacts": {
                "pushed_model": {
                    "artifacts": [
                        {"name": "pushed_model", "type": {"schemaTitle": "system.Model"}, "uri": str(outputs / "pm")}
                    ]
                }
            },
            "outputFile": str(outputs / "executor_output.json"),
        },
    }
    container = compiled["deploymentSpec"]["executors"]["exec-push"]["container"]
    command = container["command"] + [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "kfp_config.ini" in result.stdout  # found through the config, as in the image
    assert (serving / "hanet" / "1" / "saved_model.pb").read_bytes() == b"a graph"
    executor_output = json.loads((outputs / "executor_output.json").read_text())
    assert executor_output["artifacts"]["pushed_model"]["artifacts"][0]["uri"] == str(serving / "hanet" / "1")


def test_no_module_beside_the_shells_hides_a_package_the_executor_imports():
    """The executor loads pipeline/kfp_components.py with pipeline/ first on sys.path (kfp.dsl.utils.load_module),
    so a module of pipeline/ named like a package it imports (the project's, or an installed one) would
    be imported in its place, in the pod only."""
    import importlib.util

    shells = REPO / "pipeline" / "kfp_components.py"
    beside = {path.stem for path in shells.parent.glob("*.py")} - {"__init__", "__main__"}
    imported = {
        name.split(".")[0]
        for node in ast.walk(ast.parse(shells.read_text()))
        for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
    }
    assert {"common", "components", "kfp", "trainer"} <= imported
    assert beside & (imported | {"pipeline"}) == set()
    # Nor any installed top-level module, which a library could import (the repository's own directories,
    # such as config/, are not in the images).
    def installed_outside_the_repository(name: str) -> bool:
        spec = importlib.util.find_spec(name)
        places = [spec.origin] if spec and spec.origin else list(spec.submodule_search_locations or []) if spec else []
        return any(not pathlib.Path(place).resolve().is_relative_to(REPO) for place in places)

    installed = {name for name in beside if installed_outside_the_repository(name)}
    assert installed == set(), installed
