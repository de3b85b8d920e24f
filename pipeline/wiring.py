"""What both pipelines (training_pipeline.py, batch_pipeline.py) build from the parameter declarations
of common/params.py: the KFP pipeline function with its signature, each task's arguments picked by
name, and a task's deployment settings (config.TaskSettings) applied to it.

The signature is generated (inspect.Signature, set as the function's __signature__, which KFP reads
through inspect.signature) rather than written out and compared by a test: written out, it would be
the second place every parameter is added, with defaults that compile and run-local always overwrite.
"""
import dataclasses
import inspect
from typing import Callable

from kfp import dsl, kubernetes

from common import params as declared
from pipeline import config


def pipeline_function(params_cls: type, body: Callable[[dict], object], outputs, name: str, doc: str) -> Callable:
    """A function KFP's @dsl.pipeline reads as `def name(<every field of params_cls>) -> outputs`; its
    body calls `body` with the parameters (KFP's channels) by name.

    Parameters without a usable default (declared required) come first and have no default, so the
    compiled spec marks them as needed; KFP passes the arguments by position, in signature order. The
    docstring's Args: section gives each parameter its help, which the compiled spec keeps as the
    parameter's description (the pipelines UI shows it).
    """
    fields = sorted(dataclasses.fields(params_cls), key=lambda f: not f.metadata["required"])
    types = declared.types(params_cls)
    defaults = params_cls()
    signature = inspect.Signature(
        [
            inspect.Parameter(
                f.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=types[f.name],
                default=inspect.Parameter.empty if f.metadata["required"] else getattr(defaults, f.name),
            )
            for f in fields
        ],
        return_annotation=outputs,
    )

    def function(*args, **kwargs):
        return body(signature.bind(*args, **kwargs).arguments)

    function.__signature__ = signature
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc + "\n\nArgs:\n" + "".join(f"    {f.name}: {f.metadata['help']}\n" for f in fields)
    return function


def arguments_for(component, values: dict) -> dict:
    """The pipeline parameters among `values` that `component` takes, by name: a task is passed every
    parameter its shell declares, and its artifacts by the caller."""
    return {name: values[name] for name in component.component_spec.inputs or {} if name in values}


def configure_task(task: dsl.PipelineTask, settings: config.TaskSettings, name: str) -> dsl.PipelineTask:
    """Resources, node placement, volumes, retries and caching of one task (`name`: its key under
    `tasks:` in the config, for errors)."""
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
    return task
