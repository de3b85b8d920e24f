"""The pipeline's parameters, with production defaults and the small local defaults of run-local;
and the deployment around them (images, per-task resources and node pools, caching, pipeline root),
read from one YAML file (config/pipeline.yaml) and overridden by flags.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import typing

import yaml

from components.preprocess.catalog import (
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_TEXT_SEPARATOR,
    DEFAULT_TITLE_COLUMN,
)
from common import features

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PRETRAINED_DIR = pathlib.Path(os.environ.get("HANET_PRETRAINED_DIR", REPO_ROOT / "pretrained"))


@dataclasses.dataclass
class PipelineParams:
    """Exactly the parameters of `hanet_pipeline`; production defaults (the paper's settings)."""

    catalog: str = ""
    label_column: str = ""
    serving_base: str = ""
    bert_handle: str = features.PAPER_BERT_HANDLE
    image_weights: str = "imagenet"
    image_variant: str = "b0"
    fusion: str = "hanet"
    # The text model and the fusion: AdamW, 10% warm-up (trainer/recipe.py).
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 2e-5
    # f_t: BERT's "pooled" output (the paper's), or the "mean" of its token outputs (trainer/model.py).
    text_pooling: str = "pooled"
    # The image model: SGD, lr divided by 10 every image_lr_decay_epochs.
    image_epochs: int = 90
    image_batch_size: int = 512
    image_learning_rate: float = 0.1
    image_lr_decay_epochs: int = 30
    # What of the encoders trains: "full" (end to end, the paper's), "top" (their last blocks, on cached
    # lower layers), "frozen" (heads only, on cached features); see README, Training.
    tune: str = "full"
    text_top_blocks: int = 1
    image_top_blocks: int = 1
    # tune "top": the first phase of every stage, its head alone on fixed features (AdamW).
    head_epochs: int = 30
    head_learning_rate: float = 1e-2
    # Carved out of the train split by a hash of the id: early stopping and calibration.
    validation_fraction: float = 0.125
    patience: int = 0  # early stopping after this many epochs without validation progress (0: off)
    init_from_unimodal: bool = True
    mixed_precision: bool = True  # on GPUs only
    backup_every_steps: int = 0  # 0: back up the training state at every epoch's end
    image_size: int = 224
    max_seq_length: int = 64
    eval_fraction: float = 0.2
    # The catalog's columns (the label's is label_column); extra_text_columns: comma-separated, each
    # appended to the title after text_separator.
    id_column: str = DEFAULT_ID_COLUMN
    title_column: str = DEFAULT_TITLE_COLUMN
    image_column: str = DEFAULT_IMAGE_COLUMN
    extra_text_columns: str = ""
    text_separator: str = DEFAULT_TEXT_SEPARATOR
    # Labels seen fewer times in train share the out-of-vocabulary bucket.
    label_min_count: int = 1
    accuracy_threshold: float = 0.5
    # The gate also refuses a candidate whose top-1 is more than this below the served model's.
    accuracy_tolerance: float = 0.01
    # Versions kept under SERVING_BASE/MODEL_NAME after a push (0: all); older ones are removed.
    keep_versions: int = 5
    beam_args: list = dataclasses.field(default_factory=list)
    model_name: str = features.MODEL_NAME

    def as_arguments(self) -> dict:
        return dataclasses.asdict(self)


def local_params() -> PipelineParams:
    """Defaults of run-local: a few hundred products train in minutes on 2 CPU cores.

    The encoders are the local stand-ins built by scripts/setup_encoders.sh from registry packages
    (no hub is reachable): MiniLM-L6 converted to the TF-Hub BERT format, EfficientNet-Lite0 ImageNet.
    """
    return PipelineParams(
        bert_handle=str(PRETRAINED_DIR / "bert_minilm_l6"),
        image_weights=str(PRETRAINED_DIR / "efficientnet_lite0_imagenet.h5"),
        image_variant="lite0",
        # Frozen encoders: one forward pass per product, then heads train in seconds on a CPU; heads
        # start from scratch, so they take a larger learning rate than fine-tuning's 2e-5.
        tune="frozen",
        patience=5,
        epochs=20,
        batch_size=32,
        learning_rate=2e-2,
        # MiniLM was trained with mean pooling and ships no pooler (its pooled output is random).
        text_pooling="mean",
        image_epochs=20,
        image_batch_size=32,
        image_learning_rate=0.05,
        image_lr_decay_epochs=15,
        image_size=96,
        max_seq_length=32,
        accuracy_threshold=0.0,
    )


# ---- The deployment: config/pipeline.yaml ----------------------------------------------------

DEFAULT_CONFIG = REPO_ROOT / "config" / "pipeline.yaml"
# Parameters without a usable default: a run needs them from the config or from --param.
REQUIRED_PARAMS = ("catalog", "label_column", "serving_base")
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class ConfigError(ValueError):
    """A config file or override the user can fix; the message names the key."""


@dataclasses.dataclass
class Images:
    """The two container images built from images/: repositories (with the registry, no tag) and one tag."""

    component: str = "hanet-components"  # CPU: preprocess, evaluate, push
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


@dataclasses.dataclass
class Config:
    """One deployment of the pipeline: the parameters' defaults, images and task settings."""

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
