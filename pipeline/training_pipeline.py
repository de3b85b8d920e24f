"""The HANet Kubeflow pipeline: preprocess → train → evaluate (gate) → push. Wiring and task settings.

`create_pipeline` builds the same graph from either form of the components (containerized for a
cluster, lightweight for kfp.local; see components/kfp_components.py). kfp.local ignores the task
settings (resources, placement, retries, caching); a cluster applies them.
"""
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Metrics

from components import kfp_components
from components.preprocess.catalog import (
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_TEXT_SEPARATOR,
    DEFAULT_TITLE_COLUMN,
)
from pipeline import config
from common import features

PIPELINE_NAME = "hanet-product-classifier"


def create_pipeline(ops: kfp_components.Components, tasks: config.Tasks | None = None, pipeline_root: str = ""):
    """The pipeline (a KFP graph component) whose tasks run `ops` with `tasks`' settings; artifacts
    go under `pipeline_root` (empty: the cluster's default)."""
    tasks = tasks or config.Tasks()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Two-stream hybrid attention network (title + photo) for product classification.",
        pipeline_root=pipeline_root or None,
    )
    def hanet_pipeline(
        catalog: str,
        label_column: str,
        serving_base: str,
        bert_handle: str,
        image_weights: str = "imagenet",
        image_variant: str = "b0",
        fusion: str = "hanet",
        epochs: int = 10,
        batch_size: int = 32,
        learning_rate: float = 2e-5,
        text_pooling: str = "pooled",
        image_epochs: int = 90,
        image_batch_size: int = 512,
        image_learning_rate: float = 0.1,
        image_lr_decay_epochs: int = 30,
        tune: str = "full",
        text_top_blocks: int = 1,
        image_top_blocks: int = 1,
        head_epochs: int = 30,
        head_learning_rate: float = 1e-2,
        validation_fraction: float = 0.125,
        patience: int = 0,
        init_from_unimodal: bool = True,
        mixed_precision: bool = True,
        backup_every_steps: int = 0,
        image_size: int = 224,
        max_seq_length: int = 64,
        eval_fraction: float = 0.2,
        id_column: str = DEFAULT_ID_COLUMN,
        title_column: str = DEFAULT_TITLE_COLUMN,
        image_column: str = DEFAULT_IMAGE_COLUMN,
        extra_text_columns: str = "",
        text_separator: str = DEFAULT_TEXT_SEPARATOR,
        label_min_count: int = 1,
        accuracy_threshold: float = 0.5,
        accuracy_tolerance: float = 0.01,
        keep_versions: int = 5,
        beam_args: list = [],
        model_name: str = features.MODEL_NAME,
    ) -> NamedTuple("Outputs", metrics=Metrics, blessing=Artifact, report=HTML):
        prep = ops.preprocess(
            catalog=catalog,
            label_column=label_column,
            bert_handle=bert_handle,
            image_size=image_size,
            max_seq_length=max_seq_length,
            eval_fraction=eval_fraction,
            id_column=id_column,
            title_column=title_column,
            image_column=image_column,
            extra_text_columns=extra_text_columns,
            text_separator=text_separator,
            label_min_count=label_min_count,
            beam_args=beam_args,
        ).set_display_name("preprocess")
        _configure(prep, tasks.preprocess, "preprocess")
        trained = ops.train(
            examples=prep.outputs["examples"],
            transform_graph=prep.outputs["transform_graph"],
            fusion=fusion,
            bert_handle=bert_handle,
            image_weights=image_weights,
            image_variant=image_variant,
            image_size=image_size,
            max_seq_length=max_seq_length,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            text_pooling=text_pooling,
            image_epochs=image_epochs,
            image_batch_size=image_batch_size,
            image_learning_rate=image_learning_rate,
            image_lr_decay_epochs=image_lr_decay_epochs,
            tune=tune,
            text_top_blocks=text_top_blocks,
            image_top_blocks=image_top_blocks,
            head_epochs=head_epochs,
            head_learning_rate=head_learning_rate,
            validation_fraction=validation_fraction,
            patience=patience,
            init_from_unimodal=init_from_unimodal,
            mixed_precision=mixed_precision,
            backup_every_steps=backup_every_steps,
        ).set_display_name("train")
        _configure(trained, tasks.train, "train")
        evaluated = ops.evaluate(
            model=trained.outputs["model"],
            text_model=trained.outputs["text_model"],
            image_model=trained.outputs["image_model"],
            examples=prep.outputs["examples"],
            transform_graph=prep.outputs["transform_graph"],
            accuracy_threshold=accuracy_threshold,
            accuracy_tolerance=accuracy_tolerance,
            serving_base=serving_base,
            model_name=model_name,
        ).set_display_name("evaluate")
        _configure(evaluated, tasks.evaluate, "evaluate")
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
            pushed = ops.push(
                model=trained.outputs["model"],
                serving_base=serving_base,
                model_name=model_name,
                keep_versions=keep_versions,
            ).set_display_name("push")
            _configure(pushed, tasks.push, "push")
        return NamedTuple("Outputs", metrics=Metrics, blessing=Artifact, report=HTML)(
            metrics=evaluated.outputs["metrics"],
            blessing=evaluated.outputs["blessing"],
            report=evaluated.outputs["report"],
        )

    return hanet_pipeline


def _configure(task: dsl.PipelineTask, settings: config.TaskSettings, name: str) -> None:
    """Resources, node placement, volumes, retries and caching of one task."""
    try:
        if settings.cpu_request:
            task.set_cpu_request(settings.cpu_request)
        if settings.cpu_limit:
            task.set_cpu_limit(settings.cpu_limit)
        if settings.memory_request:
            task.set_memory_request(settings.memory_request)
        if settings.memory_limit:
            task.set_memory_limit(settings.memory_limit)
    except ValueError as e:  # KFP checks the quantities' syntax
        raise config.ConfigError(f"tasks.{name}: {e}") from None
    if settings.accelerator_count:
        task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.accelerator_count)
    for label, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in settings.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.key or None,
            operator=toleration.operator,
            value=toleration.value or None,
            effect=toleration.effect or None,
        )
    for claim, mount_path in settings.pvc_mounts.items():
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=mount_path)
    if settings.retries:
        task.set_retry(
            settings.retries,
            backoff_duration=settings.retry_backoff,
            backoff_factor=settings.retry_backoff_factor,
            backoff_max_duration=settings.retry_backoff_max,
        )
    task.set_caching_options(settings.caching)
