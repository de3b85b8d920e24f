"""The batch prediction pipeline, hanet-batch-predict: one task, every product of a catalog through a
trained model (components/batch_predict), with its Metrics and an HTML summary in the pipelines UI.

A pipeline of its own rather than a branch of the training pipeline: it runs on another schedule
(nightly, on the day's new products; after each push, on the whole catalog) against a model that
already exists. Its parameters are common.params.BatchPredictParams; its task runs in the CPU component
image with the deployment config's `tasks.batch_predict` settings (by default never cached: a
recurring run reads a catalog URI whose contents change).

No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics

from common.params import BatchPredictParams
from pipeline import config
from pipeline.kfp_components import Components
from pipeline.wiring import arguments_for, configure_task, pipeline_function

PIPELINE_NAME = "hanet-batch-predict"
DESCRIPTION = "HANet batch prediction: a catalog's products (title + photo) → their top classes."
TASK_NAME = "batch-predict"
Outputs = NamedTuple("Outputs", predictions=Dataset, metrics=Metrics, summary=HTML, report=Artifact)


def create_batch_pipeline(ops: Components, tasks: config.Tasks | None = None, pipeline_root: str = ""):
    """The batch prediction pipeline, whose task runs `ops.batch_predict` with `tasks.batch_predict`."""
    settings = (tasks or config.Tasks()).batch_predict

    def graph(params: dict) -> Outputs:
        predicted = ops.batch_predict(**arguments_for(ops.batch_predict, params)).set_display_name(TASK_NAME)
        configure_task(predicted, settings, "batch_predict")
        return Outputs(**{name: predicted.outputs[name] for name in Outputs._fields})

    function = pipeline_function(BatchPredictParams, graph, Outputs, "hanet_batch_predict", DESCRIPTION)
    return dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_root=pipeline_root or None)(function)
