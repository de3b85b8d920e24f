"""The KFP component shells around the stage functions: typed artifacts in and out, a few lines of glue.

Pipeline glue, not stage logic, so here in pipeline/ and not in components/: the train shell calls the
trainer, evaluate's calls the evaluate stage and push's the push stage, which a stage package does not
do. Each body imports the real stage from this project (copied into the container images of images/,
on the PYTHONPATH under kfp.local), so the logic lives and is tested in plain Python modules.

Their arguments are common/params.py's parameters, spelled out because KFP inlines a lightweight
component's source and the executor reads the function's own signature; tests/test_pipeline_params.py
fails on an argument that is not declared there with the same type. Their summaries are progress lines
(`[preprocess] rows in: ...`, common/console.py), which run-local shows and the pod log keeps.

The shells are plain functions; `containerized()` and `lightweight()` at the end make the KFP
components of them. A cluster runs containerized components: `python3 -m kfp.dsl.executor_main` in
this project's image, which finds the function through the image's kfp_config.ini and loads this file
as the top-level module `kfp_components` with pipeline/ first on sys.path (so no module of pipeline/
may be named after a package the shells import: components, trainer, common, kfp). kfp.local's
SubprocessRunner refuses those, so run-local uses lightweight ones (the function's source inlined in
the command). Both forms run the same function. No `from __future__ import annotations` here: the
executor reads the annotations as types.
"""
import dataclasses
from typing import Callable

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def preprocess(
    catalog: str,
    label_column: str,
    bert_handle: str,
    image_size: int,
    max_seq_length: int,
    eval_fraction: float,
    id_column: str,
    title_column: str,
    image_column: str,
    extra_text_columns: str,
    text_separator: str,
    label_min_count: int,
    beam_args: list,
    examples: Output[Dataset],
    transform_graph: Output[Artifact],
    quarantine: Output[Dataset],
    label_vocabulary: Output[Artifact],
    report: Output[Artifact],
    metrics: Output[Metrics],
):
    """`quarantine`: the rejected rows (JSON Lines, with reasons); `report`: metrics.json, the counts
    and the labels only in eval or below the min count; `metrics`: the counts, for the UI."""
    import tensorflow as tf

    from common.console import progress
    from components.preprocess import job
    from components.preprocess.catalog import CatalogColumns, split_column_list
    from components.preprocess.transform import TransformOptions

    # Remote workers (Dataflow, a Flink or Spark cluster) write to the artifacts' URIs, not to this pod.
    local = job.runs_on_this_machine(beam_args)
    location = (lambda artifact: artifact.path) if local else (lambda artifact: artifact.uri)
    result = job.preprocess(
        catalog=catalog,
        columns=CatalogColumns(
            label=label_column,
            id=id_column,
            title=title_column,
            image=image_column,
            extra_text=split_column_list(extra_text_columns),
            text_separator=text_separator,
        ),
        options=TransformOptions.for_text_encoder(
            bert_handle,
            max_seq_length=max_seq_length,
            image_size=image_size,
            label_min_count=label_min_count,
        ),
        examples_dir=location(examples),
        transform_graph_dir=location(transform_graph),
        quarantine_file=location(quarantine),
        metrics_file=location(report),
        eval_fraction=eval_fraction,
        beam_args=beam_args,
    )
    tf.io.gfile.copy(result.label_vocabulary_file, location(label_vocabulary), overwrite=True)
    label_vocabulary.metadata["size"] = result.metrics["label_vocabulary_size"]
    quarantine.metadata["rows"] = sum(result.metrics["quarantined"].values())
    progress("preprocess", job.format_counts(result.metrics))
    metrics.log_metric("rows_in", result.metrics["rows_in"])
    for split, n in result.metrics["kept"].items():
        metrics.log_metric(f"kept_{split}", n)
    for reason, n in result.metrics["quarantined"].items():
        metrics.log_metric(f"quarantined_{reason}", n)
    metrics.log_metric("label_vocabulary_size", result.metrics["label_vocabulary_size"])
    metrics.log_metric("labels_only_in_eval", len(result.metrics["labels_only_in_eval"]))
    for split, n in result.metrics["out_of_vocabulary_rows"].items():
        metrics.log_metric(f"out_of_vocabulary_rows_{split}", n)


def train(
    examples: Input[Dataset],
    transform_graph: Input[Artifact],
    fusion: str,
    bert_handle: str,
    image_weights: str,
    image_variant: str,
    image_size: int,
    max_seq_length: int,
    text_pooling: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    image_epochs: int,
    image_batch_size: int,
    image_learning_rate: float,
    image_lr_decay_epochs: int,
    tune: str,
    text_top_blocks: int,
    image_top_blocks: int,
    head_epochs: int,
    head_learning_rate: float,
    validation_fraction: float,
    patience: int,
    init_from_unimodal: bool,
    mixed_precision: bool,
    backup_every_steps: int,
    feature_cache_beam_args: list,
    model: Output[Model],
    text_model: Output[Model],
    image_model: Output[Model],
    training_state: Output[Artifact],
    poe_features: Output[Dataset],
):
    """`model` is the fusion's serving model. `text_model` and `image_model` are the unimodal models
    of the pretraining stages, with the same signatures, when the fusion trains them (metadata
    "trained"); epochs/batch_size/learning_rate are the AdamW stages' (text and fusion).
    `training_state` is the work directory (checkpoints, backups, the feature cache), for resuming;
    `poe_features` the frozen image features evaluate fits tfidf_image_poe on, or why there are none
    (trainer/features_cache.py, write_poe_features): evaluate is sent that, not the work directory."""
    import dataclasses
    import os
    import shlex

    from common import features
    from trainer import recipe
    from trainer import train as training
    from trainer.features_cache import write_poe_features
    from trainer.model import ModelConfig

    adamw = dataclasses.replace(recipe.PAPER_FUSION, learning_rate=learning_rate, epochs=epochs, batch_size=batch_size)
    sgd = dataclasses.replace(
        recipe.PAPER_IMAGE,
        learning_rate=image_learning_rate,
        epochs=image_epochs,
        batch_size=image_batch_size,
        decay_epochs=image_lr_decay_epochs,
    )
    head = dataclasses.replace(recipe.HEAD, learning_rate=head_learning_rate, epochs=head_epochs, batch_size=batch_size)
    logs = training.train(
        examples_dir=examples.path,
        transform_graph_dir=transform_graph.path,
        export_dir=model.path,
        work_dir=training_state.path,
        model_config=ModelConfig(
            fusion=fusion,
            bert_handle=bert_handle,
            image_weights=image_weights or None,
            image_variant=image_variant,
            image_size=image_size,
            max_seq_length=max_seq_length,
            text_pooling=text_pooling,
            text_top_blocks=text_top_blocks,
            image_top_blocks=image_top_blocks,
        ),
        train_config=training.TrainConfig(
            text_recipe=adamw,
            image_recipe=sgd,
            fusion_recipe=adamw,
            tune=tune,
            head_recipe=head,
            validation_fraction=validation_fraction,
            patience=patience,
            init_from_unimodal=init_from_unimodal,
            mixed_precision=mixed_precision,
            backup_every_steps=backup_every_steps or None,
            feature_cache_beam_args=shlex.join(feature_cache_beam_args),
        ),
        unimodal_export_dirs={features.TEXT_ONLY: text_model.path, features.IMAGE_ONLY: image_model.path},
    )
    for artifact, stage in ((model, fusion), (text_model, features.TEXT_ONLY), (image_model, features.IMAGE_ONLY)):
        artifact.metadata["fusion"] = stage
        artifact.metadata["trained"] = stage in logs
        for name, value in logs.get(stage, {}).items():
            if isinstance(value, (int, float)):
                artifact.metadata[f"train_{name}"] = value
    written = write_poe_features(os.path.join(training_state.path, training.FEATURE_CACHE_DIR), transform_graph.path,
                                 poe_features.path)
    poe_features.metadata.update({"refused": written["refused"]} if "refused" in written else written["split_sizes"])


def evaluate(
    model: Input[Model],
    text_model: Input[Model],
    image_model: Input[Model],
    examples: Input[Dataset],
    transform_graph: Input[Artifact],
    poe_features: Input[Dataset],
    accuracy_threshold: float,
    accuracy_tolerance: float,
    baseline_max_train_products: int,
    baseline_tolerance: float,
    serving_base: str,
    model_name: str,
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[HTML],
    blessing: Output[Artifact],
) -> bool:
    """Figures of `model` on the eval split, against the newest version served under
    SERVING_BASE/MODEL_NAME; Table 1 when the trainer exported both unimodal models. `report` is the
    HTML report; `blessing` the verdict (metadata) and every figure (JSON). `poe_features` are the
    frozen image features tfidf_image_poe is fitted on (or why the train stage wrote none): the
    launcher copies every input artifact into the pod, and these are bounded by the fit's cap where
    the trainer's work directory grows with the catalog. Returns whether the model is blessed: the
    single return value (not a NamedTuple field) keeps the `dsl.If` condition resolvable by kfp.local
    as well as by the cluster's backend."""
    import json
    import os

    from common.console import progress
    from components.evaluate import evaluate_model, gate
    from components.evaluation_report import render_html
    from components.push import newest_served_model
    from trainer.features_cache import fit_poe

    unimodal = [m.path for m in (text_model, image_model) if os.path.exists(os.path.join(m.path, "saved_model.pb"))]
    served = newest_served_model(serving_base, model_name)
    evaluation = evaluate_model(
        model.path,
        examples.path,
        transform_graph.path,
        text_model_dir=unimodal[0] if len(unimodal) == 2 else None,
        image_model_dir=unimodal[1] if len(unimodal) == 2 else None,
        served_model=served,
        baseline_max_train_products=baseline_max_train_products,
        poe_fit=lambda classes: fit_poe(poe_features.path, examples.path, transform_graph.path, classes),
    )
    for name, value in evaluation.scalars().items():
        metrics.log_metric(name, value)
    confusion_matrix.log_confusion_matrix(*evaluation.confusion_matrix)
    verdict = gate(evaluation.metrics, accuracy_threshold, evaluation.served, accuracy_tolerance,
                   evaluation.baseline, baseline_tolerance)
    with open(report.path, "w") as f:
        f.write(render_html(evaluation, verdict, model.uri))
    blessing.metadata.update({"blessed": verdict.blessed, "reason": verdict.reason})
    if served:
        blessing.metadata["served_version"] = served[0]
    with open(blessing.path, "w") as f:
        json.dump({"blessed": verdict.blessed, "reason": verdict.reason, **evaluation.summary()}, f, indent=2)
    figures = evaluation.metrics  # every figure is in `metrics` and the blessing's JSON
    progress("evaluate", f"top-1 {figures['top1_accuracy']:.4f}, top-5 {figures['top5_accuracy']:.4f}, "
             f"macro-F1 {figures['macro_f1']:.4f} on {figures['examples']} eval products")
    progress("evaluate", f"gate: {'blessed' if verdict.blessed else 'not blessed'}: {verdict.reason}")
    return verdict.blessed


def push(
    model: Input[Model], serving_base: str, model_name: str, keep_versions: int, pushed_model: Output[Model]
) -> str:
    """Copies the blessed model to SERVING_BASE/MODEL_NAME/<next version>/; keeps the newest
    `keep_versions` versions (0: all)."""
    from common.console import progress
    from components.push import push as run

    version_dir = run(model.path, serving_base, model_name, keep_versions=keep_versions)
    pushed_model.uri = version_dir
    pushed_model.metadata["version"] = int(version_dir.rstrip("/").rsplit("/", 1)[-1])
    progress("push", f"pushed {model.path} to {version_dir}")
    return version_dir


def batch_predict(
    model_dir: str,
    catalog: str,
    label_column: str,
    top_k: int,
    output_format: str,
    batch_size: int,
    id_column: str,
    title_column: str,
    image_column: str,
    extra_text_columns: str,
    text_separator: str,
    max_image_pixels: int,
    beam_args: list,
    predictions: Output[Dataset],
    quarantine: Output[Dataset],
    report: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[HTML],
):
    """Every product of `catalog` through the model `model_dir` names (a pushed version, a model base
    whose newest version is taken, or a model artifact's URI). `predictions`: the sharded records;
    `quarantine`: the rejected rows; `report`: metrics.json; `metrics` and `summary` (HTML): the
    counts, the predicted classes and, with `label_column`, the figures, for the UI."""
    from common.console import progress
    from components.batch_predict import job
    from components.batch_predict.summary import render_html
    from components.preprocess.catalog import split_column_list

    # Remote workers (Dataflow, a Flink or Spark cluster) write to the artifacts' URIs, not to this pod.
    local = job.runs_on_this_machine(beam_args)
    location = (lambda artifact: artifact.path) if local else (lambda artifact: artifact.uri)
    result = job.predict_catalog(
        catalog=catalog,
        model_dir=model_dir,
        predictions_dir=location(predictions),
        quarantine_file=location(quarantine),
        metrics_file=location(report),
        label_column=label_column or None,
        id_column=id_column,
        title_column=title_column,
        image_column=image_column,
        extra_text_columns=split_column_list(extra_text_columns),
        text_separator=text_separator,
        top_k=top_k,
        output_format=output_format,
        batch_size=batch_size,
        max_image_pixels=max_image_pixels,
        beam_args=beam_args,
    )
    counts = result.metrics
    predictions.metadata.update({
        "format": output_format,
        "products": counts["predicted"],
        "model": result.model.path,
        "model_version": result.model.version if result.model.version is not None else "",
    })
    quarantine.metadata["rows"] = sum(counts["quarantined"].values())
    with open(summary.path, "w") as f:
        f.write(render_html(counts))
    progress("batch_predict", job.format_counts(counts))
    metrics.log_metric("rows_in", counts["rows_in"])
    metrics.log_metric("predicted", counts["predicted"])
    for reason, n in counts["quarantined"].items():
        metrics.log_metric(f"quarantined_{reason}", n)
    if "needs_review" in counts:
        metrics.log_metric("needs_review", counts["needs_review"])
    if result.model.version is not None:
        metrics.log_metric("model_version", result.model.version)
    evaluation = counts.get("evaluation")
    if evaluation and evaluation["examples"]:
        for name in ("examples", "top1_accuracy", "top5_accuracy", "macro_f1"):
            metrics.log_metric(name, evaluation[name])


# The FROM of both images (images/*.Dockerfile): what `target_image` builds on.
BASE_IMAGE = "python:3.11-slim-bookworm"


@dataclasses.dataclass(frozen=True)
class Components:
    """The four stages, and batch prediction (a pipeline of its own), as KFP components, all of one form."""

    preprocess: Callable[..., dsl.PipelineTask]
    train: Callable[..., dsl.PipelineTask]
    evaluate: Callable[..., dsl.PipelineTask]
    push: Callable[..., dsl.PipelineTask]
    batch_predict: Callable[..., dsl.PipelineTask]


def containerized(component_image: str, trainer_image: str) -> Components:
    """For a cluster: train runs in the CUDA image, the other stages (and batch prediction, whose
    Beam job may also run its workers in that image) in the CPU image."""
    return Components(
        preprocess=dsl.component(preprocess, base_image=BASE_IMAGE, target_image=component_image),
        train=dsl.component(train, base_image=BASE_IMAGE, target_image=trainer_image),
        evaluate=dsl.component(evaluate, base_image=BASE_IMAGE, target_image=component_image),
        push=dsl.component(push, base_image=BASE_IMAGE, target_image=component_image),
        batch_predict=dsl.component(batch_predict, base_image=BASE_IMAGE, target_image=component_image),
    )


def lightweight() -> Components:
    """For kfp.local: each task runs the function's inlined source with this machine's Python, which
    imports the project from the PYTHONPATH (set by run-local) rather than from an image."""
    return Components(
        *(dsl.component(func, base_image=BASE_IMAGE, install_kfp_package=False)
          for func in (preprocess, train, evaluate, push, batch_predict))
    )
