"""The deployment of the pipelines: their parameters' defaults (common/params.py declares them), images,
per-task resources and node pools, caching and the pipeline root, read from one YAML file
(config/pipeline.yaml) and overridden by flags.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import typing

import yaml

from common import params as declared
from common.params import REPO_ROOT, PipelineParams

DEFAULT_CONFIG = REPO_ROOT / "config" / "pipeline.yaml"
REQUIRED_PARAMS = declared.required(PipelineParams)
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class ConfigError(ValueError):
    """A config file or override the user can fix; the message names the key."""


@dataclasses.dataclass
class Images:
    """The two container images built from images/: repositories (with the registry, no tag) and one tag."""

    component: str = "hanet-components"  # CPU: preprocess, evaluate, push, batch_predict
    trainer: str = "hanet-trainer"  # CUDA: train
    tag: str = "latest"

    @property
    def component_image(self) -> str:
        return f"{self.component}:{self.tag}"

    @property
    def trainer_image(self) -> str:
        return f"{self.trainer}:{self.tag}"


@dataclasses.dataclass
class Toleration:
    """A Kubernetes toleration (core/v1 Toleration) of a node taint."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def __post_init__(self):
        if self.operator not in TOLERATION_OPERATORS:
            raise ConfigError(f"operator: expected one of {', '.join(TOLERATION_OPERATORS)}, got {self.operator!r}")
        if self.effect and self.effect not in TAINT_EFFECTS:
            raise ConfigError(f"effect: expected one of {', '.join(TAINT_EFFECTS)}, got {self.effect!r}")


@dataclasses.dataclass
class TaskSettings:
    """What one task's pod asks Kubernetes for, where it may run, how it is retried and cached."""

    cpu_request: str = ""  # Kubernetes quantities: "4", "500m"; "16Gi"
    cpu_limit: str = ""
    memory_request: str = ""
    memory_limit: str = ""
    accelerator_type: str = ""  # the device plugin's resource name, e.g. nvidia.com/gpu
    accelerator_count: int = 0
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    tolerations: list[Toleration] = dataclasses.field(default_factory=list)
    pvc_mounts: dict[str, str] = dataclasses.field(default_factory=dict)  # claim name -> mount path
    retries: int = 0
    retry_backoff: str = "60s"  # the first wait; each next one retry_backoff_factor times longer
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "3600s"  # no retry starts after this long
    caching: bool = True

    def __post_init__(self):
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            raise ConfigError("accelerator_type and accelerator_count (> 0) go together")


@dataclasses.dataclass
class Tasks:
    """Per-task settings. The defaults ask for nothing; config/pipeline.yaml holds the cluster's."""

    preprocess: TaskSettings = dataclasses.field(default_factory=TaskSettings)
    train: TaskSettings = dataclasses.field(default_factory=TaskSettings)
    evaluate: TaskSettings = dataclasses.field(default_factory=TaskSettings)
    # Never cached by default: a cache hit would report a push without writing to the serving base.
    push: TaskSettings = dataclasses.field(default_factory=lambda: TaskSettings(caching=False))
    # The batch prediction pipeline's one task; never cached by default: a recurring run reads the same
    # catalog URI with new contents.
    batch_predict: TaskSettings = dataclasses.field(default_factory=lambda: TaskSettings(caching=False))


@dataclasses.dataclass
class Config:
    """One deployment of the pipelines: the training pipeline's parameter defaults (the batch pipeline's
    come from --param only: one deployment serves many catalogs and models), images and task settings."""

    params: PipelineParams = dataclasses.field(default_factory=PipelineParams)
    images: Images = dataclasses.field(default_factory=Images)
    tasks: Tasks = dataclasses.field(default_factory=Tasks)
    pipeline_root: str = ""  # empty: the cluster's default artifact store
    caching: bool = True  # False turns caching off for every task
    service_account: str = ""  # the Kubernetes service account of the run's pods (submit)

    def task_settings(self) -> Tasks:
        """The tasks' settings with the global caching switch applied."""
        if self.caching:
            return self.tasks
        return Tasks(
            **{
                f.name: dataclasses.replace(getattr(self.tasks, f.name), caching=False)
                for f in dataclasses.fields(self.tasks)
            }
        )

    def missing_params(self) -> list[str]:
        return [name for name in REQUIRED_PARAMS if not getattr(self.params, name)]


def load(path: str | os.PathLike | None, base: Config | None = None) -> Config:
    """`base` (default: the production defaults) with the YAML file at `path` laid over it.

    A file sets only the keys it names; a mapping merges into the defaults key by key, a list or a
    dict-valued field (node_selector, tolerations, beam_args) replaces the default whole.
    """
    config = base if base is not None else Config()
    if path is None:
        return config
    try:
        text = pathlib.Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return config
    try:
        return _merged(config, data, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def with_overrides(config: Config, assignments: typing.Iterable[str]) -> Config:
    """`config` with `KEY.PATH=VALUE` assignments (as given to --set) applied together; VALUE is read
    as YAML (`true`, `2`, `[a, b]`, `{k: v}`) unless the key holds a string."""
    tree: dict = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {assignment!r}")
        names = key.split(".")
        if _leaf_hint(type(config), names) is str:
            value: typing.Any = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{key}: {raw!r} is not a YAML value") from None
        node = tree
        for name in names[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: conflicts with another assignment")
        node[names[-1]] = value
    return _merged(config, tree, "") if tree else config


def _leaf_hint(cls: type, names: list[str]):
    hint: typing.Any = cls
    for name in names:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(name)
    return hint


def _merged(instance, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(instance))
    names = [f.name for f in dataclasses.fields(instance)]
    changes = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key {path} (known here: {', '.join(names)})")
        changes[key] = _value(getattr(instance, key), hints[key], value, path)
    try:
        return dataclasses.replace(instance, **changes)
    except ConfigError as e:
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None


def _value(current, hint, value, path: str):
    if dataclasses.is_dataclass(hint):
        return _merged(current, value, path)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else None
        if item is not None and dataclasses.is_dataclass(item):
            return [_merged(item(), v, f"{path}[{i}]") for i, v in enumerate(value)]
        return [_scalar(item, v, f"{path}[{i}]") if item else v for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        value_type = args[1] if args else None
        return {str(k): _scalar(value_type, v, f"{path}.{k}") if value_type else v for k, v in value.items()}
    return _scalar(hint, value, path)


def _scalar(kind: type, value, path: str):
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        # An integer is a fine string ("cpu_request: 4"); a float is not: `tag: 1.10` would become "1.1".
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r} (quote it)")
    else:
        return value
    raise ConfigError(f"{path}: expected {kind.__name__}, got {value!r}")
