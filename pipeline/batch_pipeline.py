"""The batch prediction pipeline, hanet-batch-predict: one task, every product of a catalog through a
trained model (components/batch_predict), with its Metrics and an HTML summary in the pipelines UI.

A pipeline of its own rather than a branch of the training pipeline: it runs on another schedule
(nightly, on the day's new products; after each push, on the whole catalog) against a model that
already exists. Its parameters are `BatchPredictParams`; its task runs in the CPU component image with
the deployment config's `tasks.evaluate` settings (the same kind of work: the serving model on CPU
over many products), never cached: a recurring run reads a catalog URI whose contents change.

No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.
"""
import dataclasses
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Metrics

from common import features
from components import kfp_components
from components.batch_predict import DEFAULT_BATCH_SIZE, JSONL
from components.preprocess import row_checks
from components.preprocess.catalog import (
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_TEXT_SEPARATOR,
    DEFAULT_TITLE_COLUMN,
)
from pipeline import config

PIPELINE_NAME = "hanet-batch-predict"
TASK_NAME = "batch-predict"
# Parameters without a usable default: a run needs them from --param.
REQUIRED_PARAMS = ("model_dir", "catalog")


@dataclasses.dataclass
class BatchPredictParams:
    """Exactly the parameters of `hanet_batch_predict`, with their defaults."""

    # A pushed version SERVING_BASE/hanet/<n>, the model base SERVING_BASE/hanet (its newest complete
    # version at run time: what TF Serving serves) or a model artifact's URI.
    model_dir: str = ""
    catalog: str = ""
    label_column: str = ""  # empty: no figures, only predictions
    top_k: int = features.DEFAULT_TOP_K
    output_format: str = JSONL  # or parquet
    batch_size: int = DEFAULT_BATCH_SIZE
    id_column: str = DEFAULT_ID_COLUMN
    title_column: str = DEFAULT_TITLE_COLUMN
    image_column: str = DEFAULT_IMAGE_COLUMN
    extra_text_columns: str = ""
    text_separator: str = DEFAULT_TEXT_SEPARATOR
    max_image_pixels: int = row_checks.DEFAULT_MAX_IMAGE_PIXELS
    # The job's Beam runner; empty: the DirectRunner in the task's pod, a worker thread per CPU.
    beam_args: list = dataclasses.field(default_factory=list)

    def as_arguments(self) -> dict:
        return dataclasses.asdict(self)

    def missing(self) -> list[str]:
        return [name for name in REQUIRED_PARAMS if not getattr(self, name)]


def batch_task_settings(tasks: config.Tasks) -> config.TaskSettings:
    """The batch task's resources, placement and retries: the deployment's evaluate task's, uncached."""
    return dataclasses.replace(tasks.evaluate, caching=False)


def create_batch_pipeline(ops: kfp_components.Components, tasks: config.Tasks | None = None, pipeline_root: str = ""):
    """The batch prediction pipeline, whose task runs `ops.batch_predict` with `batch_task_settings(tasks)`."""
    from pipeline.pipeline import _configure

    settings = batch_task_settings(tasks or config.Tasks())

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="HANet batch prediction: a catalog's products (title + photo) → their top classes.",
        pipeline_root=pipeline_root or None,
    )
    def hanet_batch_predict(
        model_dir: str,
        catalog: str,
        label_column: str = "",
        top_k: int = features.DEFAULT_TOP_K,
        output_format: str = JSONL,
        batch_size: int = DEFAULT_BATCH_SIZE,
        id_column: str = DEFAULT_ID_COLUMN,
        title_column: str = DEFAULT_TITLE_COLUMN,
        image_column: str = DEFAULT_IMAGE_COLUMN,
        extra_text_columns: str = "",
        text_separator: str = DEFAULT_TEXT_SEPARATOR,
        max_image_pixels: int = row_checks.DEFAULT_MAX_IMAGE_PIXELS,
        beam_args: list = [],
    ) -> NamedTuple("Outputs", predictions=Dataset, metrics=Metrics, summary=HTML, report=Artifact):
        predicted = ops.batch_predict(
            model_dir=model_dir,
            catalog=catalog,
            label_column=label_column,
            top_k=top_k,
            output_format=output_format,
            batch_size=batch_size,
            id_column=id_column,
            title_column=title_column,
            image_column=image_column,
            extra_text_columns=extra_text_columns,
            text_separator=text_separator,
            max_image_pixels=max_image_pixels,
            beam_args=beam_args,
        ).set_display_name(TASK_NAME)
        _configure(predicted, settings, "evaluate")
        return NamedTuple("Outputs", predictions=Dataset, metrics=Metrics, summary=HTML, report=Artifact)(
            predictions=predicted.outputs["predictions"],
            metrics=predicted.outputs["metrics"],
            summary=predicted.outputs["summary"],
            report=predicted.outputs["report"],
        )

    return hanet_batch_predict
