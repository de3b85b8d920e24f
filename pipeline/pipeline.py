"""The HANet Kubeflow pipeline: preprocess → train → evaluate (gate) → push. Wiring only.

`create_pipeline` builds the same graph from either form of the components (containerized for a
cluster, lightweight for kfp.local; see components/kfp_components.py).
"""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Metrics

from components import kfp_components
from trainer import features


def create_pipeline(ops: kfp_components.Components):
    """The pipeline (a KFP graph component) whose tasks run `ops`."""

    @dsl.pipeline(
        name="hanet-product-classifier",
        description="Two-stream hybrid attention network (title + photo) for product classification.",
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
        image_size: int = 224,
        max_seq_length: int = 64,
        eval_fraction: float = 0.2,
        accuracy_threshold: float = 0.5,
        beam_args: list = [],
        model_name: str = features.MODEL_NAME,
    ) -> NamedTuple("Outputs", metrics=Metrics, blessing=Artifact):
        prep = ops.preprocess(
            catalog=catalog,
            label_column=label_column,
            bert_handle=bert_handle,
            image_size=image_size,
            max_seq_length=max_seq_length,
            eval_fraction=eval_fraction,
            beam_args=beam_args,
        ).set_display_name("preprocess")
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
        ).set_display_name("train")
        evaluated = ops.evaluate(
            model=trained.outputs["model"],
            examples=prep.outputs["examples"],
            transform_graph=prep.outputs["transform_graph"],
            accuracy_threshold=accuracy_threshold,
        ).set_display_name("evaluate")
        with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition)
            ops.push(model=trained.outputs["model"], serving_base=serving_base, model_name=model_name).set_display_name(
                "push"
            )
        return NamedTuple("Outputs", metrics=Metrics, blessing=Artifact)(
            metrics=evaluated.outputs["metrics"], blessing=evaluated.outputs["blessing"]
        )

    return hanet_pipeline
