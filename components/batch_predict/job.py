"""The batch prediction job: a catalog → a model's top classes for every product, one Beam pipeline.

    catalog files → rows → text checks → one row per id → images read and checked     (preprocess's reading
                                                                                        and row checks)
                  → RunInference(KeyedModelHandler(ServingModelHandler)): `serving_default` on
                    BatchElements batches, the model loaded once per worker process, shared by its threads
                  → PREDICTIONS_DIR/part-*.jsonl or .parquet, one record per product
    every rejected row → quarantine.jsonl, with preprocess's reasons (never reaching the model)
    counts (rows in, predicted, quarantined per reason, predicted classes, label × prediction)
                  → metrics.json, with top-1/top-5/macro-F1 by common.metrics.ClassCounts when labelled

Nothing holds a list of products: what the runner shuffles is the text of each row (grouping by id, to
find duplicates as preprocess does); photos are read after the grouping, by the worker that predicts
them. The counts are data written by the pipeline (not runner metrics, whose exactness varies by
runner) and bounded by the number of classes, not of products.

The pipeline is built and run inside `predict_catalog()`: a Beam pipeline built at import time crashes
the interpreter at exit (protobuf's C extension).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from common import beam as beam_job
from common import features
from common.metrics import TOP_K, ClassCounts
from common.features import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_TEXT_SEPARATOR,
    DEFAULT_TITLE_COLUMN,
    JSONL,
    MODEL_FIELD,
    MODEL_VERSION_FIELD,
    PARQUET,
    PREDICTION_FORMATS,
)
from components.batch_predict import METRICS_FILE, PREDICTIONS_DIR, QUARANTINE_FILE
from components.batch_predict.model import ServingModel, ServingModelHandler, resolve
from components.preprocess import row_checks
from components.preprocess.catalog import CatalogColumns, CatalogRow, check_catalog
from components.preprocess.catalog_rows import QUARANTINE_TAG, UniqueRows

_SUFFIXES = {JSONL: ".jsonl", PARQUET: ".parquet"}
SHARD_PREFIX = "part"
# Where the name → class id map of the metrics comes from (metrics.json says which).
FROM_MODEL_VOCABULARY = "model_vocabulary"
FROM_LABELS_SEEN = "labels_seen"
_COUNTS_PREFIX = "counts"


class BatchPredictError(ValueError):
    """The job cannot run as asked (outputs, options): the user's to fix before anything runs."""


@dataclasses.dataclass(frozen=True)
class BatchPredictResult:
    metrics: dict
    model: ServingModel
    predictions_dir: str
    quarantine_file: str
    metrics_file: str


def catalog_columns(
    label_column: str | None,
    id_column: str = DEFAULT_ID_COLUMN,
    title_column: str = DEFAULT_TITLE_COLUMN,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    extra_text_columns: Sequence[str] = (),
    text_separator: str = DEFAULT_TEXT_SEPARATOR,
) -> CatalogColumns:
    """The columns preprocess's checks read. Without a label column, the id column stands in as the
    label: row_checks requires a label, and a row whose id passed its check always has one, so the
    label check then rejects nothing and every other check stays exactly preprocess's."""
    return CatalogColumns(
        label=label_column or id_column,
        id=id_column,
        title=title_column,
        image=image_column,
        extra_text=tuple(extra_text_columns),
        text_separator=text_separator,
    )


def beam_options(beam_args: Sequence[str]):
    """The job's pipeline options; on the DirectRunner one process running a worker thread per core.
    Threads, not preprocess's worker processes: TensorFlow releases the GIL while the model runs, so
    the threads overlap image checks with inference, and the model is loaded once (a process per core
    would load it once per process, and each copy's op threads would compete for the same cores)."""
    return beam_job.beam_options(beam_args, beam_job.MULTI_THREADING)


runs_on_this_machine = beam_job.runs_on_this_machine


def prediction_pattern(predictions_dir: str) -> str:
    return FileSystems.join(predictions_dir, f"{SHARD_PREFIX}-*")


def check_outputs(predictions_dir: str, output_format: str, *other_dirs: str) -> None:
    """Raises BatchPredictError unless the format is known and the output directories can be written
    and hold no earlier predictions."""
    if output_format not in PREDICTION_FORMATS:
        raise BatchPredictError(f"output format {output_format!r}: expected one of {', '.join(PREDICTION_FORMATS)}")
    beam_job.check_outputs(predictions_dir, {"predictions": prediction_pattern(predictions_dir)}, other_dirs,
                           BatchPredictError)


# ---- The pipeline's steps ----------------------------------------------------------------------


class _ToModelInput(beam.DoFn):
    """Reads and checks the photo as preprocess does (row_checks.to_product); a product that passes
    becomes ((id, label), (title, image bytes)), the keyed example of RunInference."""

    def __init__(self, columns: CatalogColumns, max_image_pixels: int, labelled: bool):
        self._columns = columns
        self._max_image_pixels = max_image_pixels
        self._labelled = labelled

    def process(self, row: CatalogRow):
        result = row_checks.to_product(row, self._columns, self._max_image_pixels)
        if isinstance(result, row_checks.Quarantined):
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, result)
            return
        key = (result.id, result.label if self._labelled else None)
        yield key, (result.title.encode("utf-8"), result.image_bytes)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _ToRecord(beam.DoFn):
    """(key, PredictionResult) → the product's prediction record (the top `top_k` classes and scores,
    the other per-product outputs, the model), plus what the counts need: its top-1 class and, when
    labelled, whether the label is among the model's top TOP_K classes."""

    def __init__(self, model: ServingModel, top_k: int, labelled: bool):
        self._outputs = model.outputs
        self._version = model.version
        self._path = model.path
        self._top_k = top_k
        self._labelled = labelled

    def process(self, keyed):
        (product_id, label), result = keyed
        answer = result.inference
        classes = [_text(c) for c in answer[features.OUTPUT_CLASSES_KEY]]
        record = {features.ID_KEY: product_id}
        if self._labelled:
            record[features.LABEL_KEY] = label
        record[features.OUTPUT_CLASSES_KEY] = classes[: self._top_k]
        record[features.OUTPUT_SCORES_KEY] = [float(s) for s in answer[features.OUTPUT_SCORES_KEY][: self._top_k]]
        for name in self._outputs:
            if name not in record:
                value = answer[name]
                record[name] = bool(value) if value.dtype == np.bool_ else float(value)
        record[MODEL_VERSION_FIELD] = self._version
        record[MODEL_FIELD] = self._path
        counted = [("predicted", classes[0])]
        if record.get(features.OUTPUT_NEEDS_REVIEW_KEY):
            counted.append(("needs_review",))
        if self._labelled:
            counted.append(("labelled", label, classes[0], label in classes[:TOP_K]))
        yield record
        for key in counted:
            yield beam.pvalue.TaggedOutput("counted", key)


def parquet_schema(model: ServingModel, labelled: bool):
    """The Parquet columns of a prediction record: fixed by the model's signature, known before the run."""
    import pyarrow as pa

    types = {
        features.OUTPUT_CLASSES_KEY: pa.list_(pa.string()),
        features.OUTPUT_SCORES_KEY: pa.list_(pa.float32()),
        features.OUTPUT_NEEDS_REVIEW_KEY: pa.bool_(),
        features.OUTPUT_TEXT_WEIGHT_KEY: pa.float32(),
        features.OUTPUT_IMAGE_WEIGHT_KEY: pa.float32(),
    }
    fields = [pa.field(features.ID_KEY, pa.string(), nullable=False)]
    if labelled:
        fields.append(pa.field(features.LABEL_KEY, pa.string()))
    fields += [pa.field(name, types[name]) for name in model.outputs]
    fields += [pa.field(MODEL_VERSION_FIELD, pa.int64()), pa.field(MODEL_FIELD, pa.string())]
    return pa.schema(fields)


# ---- The job -------------------------------------------------------------------------------------


def predict_catalog(
    *,
    catalog: str,
    model_dir: str,
    predictions_dir: str,
    quarantine_file: str,
    metrics_file: str,
    label_column: str | None = None,
    id_column: str = DEFAULT_ID_COLUMN,
    title_column: str = DEFAULT_TITLE_COLUMN,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    extra_text_columns: Sequence[str] = (),
    text_separator: str = DEFAULT_TEXT_SEPARATOR,
    top_k: int = features.DEFAULT_TOP_K,
    output_format: str = JSONL,
    batch_size: int = DEFAULT_BATCH_SIZE,
    large_model: bool = False,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    beam_args: Sequence[str] = (),
    temp_dir: str | None = None,
) -> BatchPredictResult:
    """Predicts every product of `catalog` with the model `model_dir` names (see model.resolve); returns
    the counts (rows in, predicted, quarantined per reason, predicted classes, and with a label column
    the evaluation figures), also written to `metrics_file`.

    `large_model`: one copy of the model per machine, shared by its worker processes (Beam's
    share_model_across_processes), instead of one per process. `temp_dir` holds the counts until they
    are summed; by default under the pipeline's --temp_location (remote runners) or the local temp dir.
    """
    if top_k < 1:
        raise BatchPredictError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise BatchPredictError(f"batch_size must be at least 1, got {batch_size}")
    labelled = bool(label_column)
    columns = catalog_columns(label_column, id_column, title_column, image_column, extra_text_columns, text_separator)
    check_catalog(catalog, columns)
    model = resolve(model_dir)
    check_outputs(
        predictions_dir, output_format, os.path.dirname(quarantine_file) or ".", os.path.dirname(metrics_file) or "."
    )
    if model.classes_per_product is not None and top_k > model.classes_per_product:
        logging.warning("the model returns its top %d classes: --top-k %d gives those", model.classes_per_product, top_k)
    pipeline_options = beam_options(beam_args)
    temp_dir = beam_job.scratch_dir(pipeline_options, temp_dir, "batch-predict")

    handler = ServingModelHandler(model, batch_size=batch_size, large_model=large_model)
    with beam.Pipeline(options=pipeline_options) as pipeline:
        rows, first_rows, rejected = pipeline | "UniqueRows" >> UniqueRows(catalog, columns)
        # No Reshuffle before the photos are read (preprocess has one): the grouping already spread the
        # rows over the workers by id, and on the DirectRunner a Reshuffle is one more copy in memory.
        inputs = first_rows | "ReadImages" >> beam.ParDo(
            _ToModelInput(columns, max_image_pixels, labelled)
        ).with_outputs(QUARANTINE_TAG, main="product")
        predicted = (
            inputs.product
            | "Predict" >> RunInference(KeyedModelHandler(handler))
            | "Records" >> beam.ParDo(_ToRecord(model, top_k, labelled)).with_outputs("counted", main="record")
        )
        _write_predictions(predicted.record, predictions_dir, output_format, model, labelled)
        quarantined = (rejected, inputs[QUARANTINE_TAG]) | "AllQuarantined" >> beam.Flatten()
        _ = (
            quarantined
            | "QuarantineJson" >> beam.Map(row_checks.Quarantined.to_json)
            | "WriteQuarantine" >> beam.io.WriteToText(quarantine_file, shard_name_template="")
        )
        counted = (
            rows | "KeyRowsIn" >> beam.Map(lambda _: ("rows_in",)),
            quarantined | "KeyReasons" >> beam.Map(lambda q: ("quarantined", q.reason)),
            predicted.counted,
        ) | "AllKeys" >> beam.Flatten()
        _ = (
            counted
            | "Count" >> beam.combiners.Count.PerElement()
            | "CountsJson" >> beam.MapTuple(lambda key, n: json.dumps([*key, n]))
            | "WriteCounts" >> beam.io.WriteToText(FileSystems.join(temp_dir, _COUNTS_PREFIX), file_name_suffix=".jsonl")
        )

    metrics = _metrics(temp_dir, model, top_k, output_format, label_column)
    beam_job.write_json(metrics_file, metrics)
    beam_job.delete_dir(temp_dir)
    return BatchPredictResult(metrics, model, predictions_dir, quarantine_file, metrics_file)


def _write_predictions(records, predictions_dir: str, output_format: str, model: ServingModel, labelled: bool) -> None:
    prefix = FileSystems.join(predictions_dir, SHARD_PREFIX)
    if output_format == PARQUET:
        _ = records | "WriteParquet" >> beam.io.WriteToParquet(
            prefix,
            parquet_schema(model, labelled),
            codec="snappy",
            # list<element> as the Parquet spec names it, which BigQuery's list inference reads.
            use_compliant_nested_type=True,
            file_name_suffix=_SUFFIXES[PARQUET],
        )
    else:
        _ = (
            records
            | "Json" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=False))
            | "WriteJsonl" >> beam.io.WriteToText(prefix, file_name_suffix=_SUFFIXES[JSONL])
        )


# ---- Counts and metrics --------------------------------------------------------------------------


def _read_counts(temp_dir: str) -> Iterable[tuple[str, list, int]]:
    import tensorflow as tf

    for path in tf.io.gfile.glob(FileSystems.join(temp_dir, f"{_COUNTS_PREFIX}*")):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                what, *key, n = json.loads(line)
                yield what, key, n


def _metrics(temp_dir: str, model: ServingModel, top_k: int, output_format: str, label_column: str | None) -> dict:
    rows_in, quarantined, predicted, needs_review = 0, collections.Counter(), collections.Counter(), 0
    labelled: collections.Counter = collections.Counter()  # (label, top-1 class, in top TOP_K) → products
    for what, key, n in _read_counts(temp_dir):
        if what == "rows_in":
            rows_in += n
        elif what == "quarantined":
            quarantined[key[0]] += n
        elif what == "predicted":
            predicted[key[0]] += n
        elif what == "needs_review":
            needs_review += n
        else:
            labelled[tuple(key)] += n
    metrics = {
        "rows_in": rows_in,
        "predicted": sum(predicted.values()),
        "quarantined": dict(sorted(quarantined.items())),
        "model": model.path,
        "model_version": model.version,
        "top_k": min(top_k, model.classes_per_product or top_k),
        "output_format": output_format,
        # The predictions' top-1 classes, most frequent first.
        "predicted_classes": dict(sorted(predicted.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
    if features.OUTPUT_NEEDS_REVIEW_KEY in model.outputs:
        metrics["needs_review"] = needs_review
    if label_column:
        metrics["evaluation"] = evaluate_counts(labelled, model.label_vocabulary, label_column)
    accounted = metrics["predicted"] + sum(quarantined.values())
    if accounted != rows_in:
        # Every row must end in exactly one place; a mismatch is a bug in this job, never in the data.
        raise RuntimeError(f"batch prediction lost rows: {rows_in} in, {accounted} predicted or quarantined")
    logging.info("batch prediction metrics: %s", metrics)
    return metrics


def evaluate_counts(
    labelled: collections.Counter, label_vocabulary: Sequence[str] | None, label_column: str
) -> dict:
    """Top-1/top-5 accuracy and macro-F1 by the evaluate stage's ClassCounts, from (label, top-1 class,
    label in the top TOP_K) → products: all ClassCounts reads of a product's classes (the first, and
    whether the label is among the first TOP_K), so the figures are those of feeding it every product.

    Classes are matched by name. The ids are the model's label vocabulary when the model carries it,
    else the labels and classes seen (metrics say which); a label the model does not know gets an id of
    its own, which no prediction has: its products count as wrong (in every figure), never dropped.
    """
    names = list(label_vocabulary) if label_vocabulary else []
    known = set(names)
    seen_labels = collections.Counter()
    for (label, top1, _), n in labelled.items():
        seen_labels[label] += n
    extra = sorted(({label for label, _, _ in labelled} | {top1 for _, top1, _ in labelled}) - known)
    names += extra
    ids = {name: i for i, name in enumerate(names)}
    counts = ClassCounts(len(names))
    for (label, top1, in_top), n in sorted(labelled.items()):
        true_id, predicted_id = ids[label], ids[top1]
        # A row of top classes that ClassCounts reads as this product's: the top-1 class, then the
        # label when it was among the model's top TOP_K.
        row = [predicted_id, true_id] if in_top and true_id != predicted_id else [predicted_id]
        for start in range(0, n, 65536):
            size = min(65536, n - start)
            counts.add(np.full(size, true_id, np.int64), np.tile(np.array(row, np.int64), (size, 1)))
    result = {"label_column": label_column, "label_ids_from": FROM_MODEL_VOCABULARY if label_vocabulary else FROM_LABELS_SEEN}
    result.update(counts.metrics() if counts.examples else {"examples": 0})
    if label_vocabulary:
        result["labels_unknown_to_model"] = {label: n for label, n in sorted(seen_labels.items()) if label not in known}
    result["per_class"] = counts.per_class(names)
    result["confused_pairs"] = counts.confused_pairs(names)
    return result


def format_counts(metrics: dict) -> str:
    """The counts of a run as a few lines for a terminal or a component log."""
    version = metrics["model_version"]
    model = f"model: {metrics['model']}" + (f" (version {version})" if version is not None else "")
    lines = []
    if "needs_review" in metrics:
        lines.append(f"needs review: {metrics['needs_review']}")
    evaluation = metrics.get("evaluation")
    if evaluation and evaluation["examples"]:
        lines.append(
            f"against {evaluation['label_column']}: top-1 {evaluation['top1_accuracy']:.4f}, "
            f"top-5 {evaluation['top5_accuracy']:.4f}, macro-F1 {evaluation['macro_f1']:.4f} "
            f"({evaluation['examples']} products; classes by {evaluation['label_ids_from'].replace('_', ' ')})"
        )
    return beam_job.format_counts(metrics, f"predicted: {metrics['predicted']}", first=[model], then=lines)


def predict_catalog_to_dir(*, output_dir: str, **kwargs) -> BatchPredictResult:
    """`predict_catalog` with every output in one directory: OUTPUT_DIR/predictions/part-*,
    quarantine.jsonl and metrics.json (the command's layout)."""
    join = FileSystems.join
    return predict_catalog(
        predictions_dir=join(output_dir, PREDICTIONS_DIR),
        quarantine_file=join(output_dir, QUARANTINE_FILE),
        metrics_file=join(output_dir, METRICS_FILE),
        **kwargs,
    )
