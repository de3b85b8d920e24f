"""The HANet training pipeline: preprocess → train → evaluate (gate) → push. Wiring and task settings.

`create_training_pipeline` builds the same graph from either form of the components (containerized for
a cluster, lightweight for kfp.local; see pipeline/kfp_components.py). Its parameters are
common.params.PipelineParams, each task is passed those its shell takes (pipeline/wiring.py). kfp.local
ignores the task settings (resources, placement, retries, caching); a cluster applies them.

No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics

from common.params import PipelineParams
from pipeline import config
from pipeline.kfp_components import Components
from pipeline.wiring import arguments_for, configure_task, pipeline_function

PIPELINE_NAME = "hanet-product-classifier"
DESCRIPTION = "Two-stream hybrid attention network (title + photo) for product classification."
Outputs = NamedTuple("Outputs", metrics=Metrics, blessing=Artifact, report=HTML)


def create_training_pipeline(ops: Components, tasks: config.Tasks | None = None, pipeline_root: str = ""):
    """The pipeline (a KFP graph component) whose tasks run `ops` with `tasks`' settings; artifacts
    go under `pipeline_root` (empty: the cluster's default)."""
    tasks = tasks or config.Tasks()

    def graph(params: dict) -> Outputs:
        def task(component, name: str, **artifacts) -> dsl.PipelineTask:
            created = component(**arguments_for(component, params), **artifacts).set_display_name(name)
            return configure_task(created, getattr(tasks, name), name)

        prep = task(ops.preprocess, "preprocess")
        data = {"examples": prep.outputs["examples"], "transform_graph": prep.outputs["transform_graph"]}
        trained = task(ops.train, "train", **data)
        models = {name: trained.outputs[name] for name in ("model", "text_model", "image_model")}
        evaluated = task(ops.evaluate, "evaluate", **models, **data, poe_features=trained.outputs["poe_features"])
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
            task(ops.push, "push", model=trained.outputs["model"])
        return Outputs(**{name: evaluated.outputs[name] for name in Outputs._fields})

    function = pipeline_function(PipelineParams, graph, Outputs, "hanet_pipeline", DESCRIPTION)
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_root=pipeline_root or None)(function)
