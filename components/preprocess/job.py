"""The preprocess stage: Beam pipelines from a raw catalog to transformed TFRecords and a transform graph.

Two Beam pipelines, one after the other, as TFX's ExampleGen and Transform are:

    validate:  catalog files → rows → text checks → one row per id → images read and checked
               → split by hash of id → raw tf.Examples: train as temporary TFRecords, eval kept in
               the examples artifact (RAW_EXAMPLES_DIR/eval/, GZIP TFRecords)
               and every rejected row → quarantine.jsonl, with its reason
    transform: raw train → tensorflow-transform analysis (label vocabulary on train only) → transform graph
               raw train, raw eval → transform → GZIP TFRecords of model features

The eval split's raw examples are kept for the evaluate stage: it compares the served model with the
candidate on the original photos and titles, as a client sends them, and a served model of another
image size or vocabulary cannot read the candidate's transformed records. They are written once and
are what the transformed eval split is made from, so both hold the same products. Train's raw examples
are not kept: nothing reads them after this stage, and they would double its storage.

Why two: the analysis must finish before any row is transformed, so in one pipeline every raw example,
photo included, would wait in the runner for the analysis; the DirectRunner waits in memory (measured:
peak memory grew with the catalog). Read back from files, the transform streams: each split is read
once for analysis (train) and once for the transform, the way TFT's own AnalyzeAndTransformDataset
re-reads its input rather than holding it. What the runner still shuffles is the text of each row
(grouping by id), never an image.

The pipelines are built and run inside `preprocess()`: a Beam/TFT pipeline built at import time crashes
the interpreter at exit (protobuf's C extension).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from components.preprocess import row_checks
from components.preprocess.catalog import CatalogColumns, CatalogRow, check_catalog
from components.preprocess.catalog_rows import QUARANTINE_TAG, UniqueRows
from common import beam as beam_job
from common import features, splits
from common.features import DEFAULT_EVAL_FRACTION

if TYPE_CHECKING:
    from components.preprocess.transform import TransformOptions

QUARANTINE_FILE = "quarantine.jsonl"
EXAMPLES_DIR = "examples"
TRANSFORM_GRAPH_DIR = "transform_graph"
METRICS_FILE = "metrics.json"
RECORD_SUFFIX = ".tfrecord.gz"
SPLITS = (features.TRAIN_SPLIT, features.EVAL_SPLIT)
_RAW_SUFFIX = ".tfrecord"  # temporary raw train examples: JPEG bytes do not compress, gzip would only cost CPU
_COUNTS_PREFIX = "counts"


class PreprocessError(ValueError):
    """The outputs cannot be written as asked: the user's to fix before anything runs."""


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    metrics: dict
    examples_dir: str
    transform_graph_dir: str
    quarantine_file: str
    metrics_file: str
    label_vocabulary_file: str


def split_of(product_id: str, eval_fraction: float) -> str:
    """The split of a product, from a hash of its id: the same on every run and every runner."""
    digest = hashlib.sha256(product_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return features.EVAL_SPLIT if position < eval_fraction else features.TRAIN_SPLIT


def split_file_pattern(examples_dir: str, split: str) -> str:
    return os.path.join(examples_dir, split, f"part-*{RECORD_SUFFIX}")


def _raw_shards(split: str, raw_dir: str, examples_dir: str) -> tuple[str, str]:
    """(prefix, suffix) of a split's raw example shards, written by pipeline 1 and read by pipeline 2:
    eval's in the examples artifact, GZIP as every kept record (the suffix picks the compression);
    train's in the temporary directory, uncompressed."""
    if split == features.EVAL_SPLIT:
        return os.path.join(splits.raw_examples_dir(examples_dir), "part"), RECORD_SUFFIX
    return FileSystems.join(raw_dir, split, "part"), _RAW_SUFFIX


class _ToProduct(beam.DoFn):
    def __init__(self, columns: CatalogColumns, max_image_pixels: int):
        self._columns = columns
        self._max_image_pixels = max_image_pixels

    def process(self, row: CatalogRow):
        result = row_checks.to_product(row, self._columns, self._max_image_pixels)
        if isinstance(result, row_checks.Quarantined):
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, result)
        else:
            yield result


def beam_options(beam_args: Sequence[str]):
    """The job's pipeline options; on the DirectRunner a worker process per core (the row checks and
    the transform are CPU-bound Python)."""
    return beam_job.beam_options(beam_args, beam_job.MULTI_PROCESSING)


runs_on_this_machine = beam_job.runs_on_this_machine


def check_outputs(examples_dir: str, *other_dirs: str) -> None:
    """Raises PreprocessError unless the output directories can be written and hold no earlier records."""
    earlier = {f"{split} records": split_file_pattern(examples_dir, split) for split in SPLITS}
    earlier[f"raw {features.EVAL_SPLIT} records"] = os.path.join(
        splits.raw_examples_dir(examples_dir), f"part-*{RECORD_SUFFIX}")
    beam_job.check_outputs(examples_dir, earlier, other_dirs, PreprocessError)


def preprocess(
    *,
    catalog: str,
    columns: CatalogColumns,
    options: TransformOptions,
    examples_dir: str,
    transform_graph_dir: str,
    quarantine_file: str,
    metrics_file: str,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    max_image_pixels: int = row_checks.DEFAULT_MAX_IMAGE_PIXELS,
    beam_args: Sequence[str] = (),
    temp_dir: str | None = None,
) -> PreprocessResult:
    """Runs the preprocess stage; returns its metrics (rows in, kept per split, quarantined per reason,
    label vocabulary and out-of-vocabulary labels), also written to `metrics_file`.

    `temp_dir` holds the raw train examples between the two pipelines and TFT's scratch files; by default a
    new directory under the pipeline's --temp_location (needed on remote runners) or the local temp dir.
    It is deleted when the stage succeeds.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    check_catalog(catalog, columns)
    check_outputs(
        examples_dir, transform_graph_dir, os.path.dirname(quarantine_file) or ".", os.path.dirname(metrics_file) or "."
    )
    pipeline_options = beam_options(beam_args)
    temp_dir = beam_job.scratch_dir(pipeline_options, temp_dir, "preprocess")
    raw_dir = FileSystems.join(temp_dir, "raw")

    _validate(
        catalog, columns, eval_fraction, max_image_pixels, raw_dir, examples_dir, quarantine_file, temp_dir, pipeline_options
    )
    _transform(options, raw_dir, examples_dir, transform_graph_dir, temp_dir, pipeline_options)
    # The exported model's graph refuses, by their headers, the images this run would have quarantined.
    splits.write_max_image_pixels(transform_graph_dir, max_image_pixels)

    metrics = _metrics(temp_dir, transform_graph_dir, options.label_min_count)
    beam_job.write_json(metrics_file, metrics, sort_keys=True)
    # The trainer's steps per epoch come from here rather than from a pass over the records.
    splits.write_split_sizes(examples_dir, metrics["kept"])
    beam_job.delete_dir(temp_dir)
    return PreprocessResult(
        metrics,
        examples_dir,
        transform_graph_dir,
        quarantine_file,
        metrics_file,
        label_vocabulary_file(transform_graph_dir),
    )


def _validate(
    catalog, columns, eval_fraction, max_image_pixels, raw_dir, examples_dir, quarantine_file, temp_dir, pipeline_options
):
    """Pipeline 1: catalog → raw examples per split (eval's kept), quarantine, counts."""
    import tensorflow_transform as tft
    from tensorflow_transform.tf_metadata import schema_utils

    from components.preprocess.transform import RAW_FEATURE_SPEC

    raw_coder = tft.coders.ExampleProtoCoder(schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC))
    with beam.Pipeline(options=pipeline_options) as pipeline:
        rows, first_rows, rejected = pipeline | "UniqueRows" >> UniqueRows(catalog, columns)
        products = (
            first_rows
            # Spreads the image reads evenly over all workers, whatever the runner made of the grouping.
            | "Spread" >> beam.Reshuffle()
            | "ReadImages" >> beam.ParDo(_ToProduct(columns, max_image_pixels)).with_outputs(
                QUARANTINE_TAG, main="product"
            )
        )
        quarantined = (rejected, products[QUARANTINE_TAG]) | "AllQuarantined" >> beam.Flatten()

        by_split = products.product | "Split" >> beam.Partition(
            lambda p, _: SPLITS.index(split_of(p.id, eval_fraction)), len(SPLITS)
        )
        for i, split in enumerate(SPLITS):
            prefix, suffix = _raw_shards(split, raw_dir, examples_dir)
            _ = (
                by_split[i]
                | f"RawExample{split}" >> beam.Map(lambda p: raw_coder.encode(p.as_raw_example()))
                | f"WriteRaw{split}" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=suffix)
            )
        _ = (
            quarantined
            | "QuarantineJson" >> beam.Map(row_checks.Quarantined.to_json)
            | "WriteQuarantine" >> beam.io.WriteToText(quarantine_file, shard_name_template="")
        )
        # Everything metrics.json reports, counted by the runner as (what, ...) keys.
        counted = (
            rows | "KeyRowsIn" >> beam.Map(lambda _: ("rows_in",)),
            quarantined | "KeyReasons" >> beam.Map(lambda q: ("quarantined", q.reason)),
            *(
                by_split[i] | f"KeyLabels{split}" >> beam.Map(lambda p, split=split: ("label", split, p.label))
                for i, split in enumerate(SPLITS)
            ),
        ) | "AllKeys" >> beam.Flatten()
        _ = (
            counted
            | "Count" >> beam.combiners.Count.PerElement()
            | "CountsJson" >> beam.MapTuple(lambda key, n: json.dumps([*key, n]))
            | "WriteCounts" >> beam.io.WriteToText(FileSystems.join(temp_dir, _COUNTS_PREFIX), file_name_suffix=".jsonl")
        )


def _transform(options, raw_dir, examples_dir, transform_graph_dir, temp_dir, pipeline_options):
    """Pipeline 2: raw examples → transform graph (analysed on train only) → transformed records."""
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from components.preprocess.transform import RAW_FEATURE_SPEC, make_preprocessing_fn

    raw_schema = schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC)

    def raw_examples(split: str) -> tfxio.TFExampleRecord:
        prefix, suffix = _raw_shards(split, raw_dir, examples_dir)
        return tfxio.TFExampleRecord(
            f"{prefix}-*{suffix}",  # GZIP or not, read as the suffix says
            schema=raw_schema,
            telemetry_descriptors=["hanet", "preprocess"],
        )

    encoder = tfxio.RecordBatchToExamplesEncoder()
    with beam.Pipeline(options=pipeline_options) as pipeline:
        with tft_beam.Context(temp_dir=FileSystems.join(temp_dir, "tft")):
            train = raw_examples(features.TRAIN_SPLIT)
            # The label vocabulary is analysed on train only: an eval label unseen in train maps to OOV.
            transform_fn = (
                pipeline | "ReadTrainForAnalysis" >> train.BeamSource(),
                train.TensorAdapterConfig(),
            ) | "Analyze" >> tft_beam.AnalyzeDataset(make_preprocessing_fn(options))
            _ = transform_fn | "WriteTransformGraph" >> tft_beam.WriteTransformFn(transform_graph_dir)
            for split in SPLITS:
                source = raw_examples(split)
                transformed, _ = (
                    (pipeline | f"Read{split}" >> source.BeamSource(), source.TensorAdapterConfig()),
                    transform_fn,
                ) | f"Transform{split}" >> tft_beam.TransformDataset(output_record_batches=True)
                _ = (
                    transformed
                    | f"Encode{split}" >> beam.FlatMapTuple(lambda batch, _: encoder.encode(batch))
                    | f"Write{split}"
                    >> beam.io.WriteToTFRecord(os.path.join(examples_dir, split, "part"), file_name_suffix=RECORD_SUFFIX)
                )


def label_vocabulary_file(transform_graph_dir: str) -> str:
    import tensorflow_transform as tft

    return tft.TFTransformOutput(transform_graph_dir).vocabulary_file_by_name(features.LABEL_VOCABULARY_NAME)


def _metrics(temp_dir: str, transform_graph_dir: str, label_min_count: int) -> dict:
    import tensorflow as tf
    import tensorflow_transform as tft

    rows_in, quarantined = 0, {}
    label_rows: dict[str, dict[str, int]] = {split: {} for split in SPLITS}  # one entry per label, not per row
    for path in tf.io.gfile.glob(FileSystems.join(temp_dir, f"{_COUNTS_PREFIX}*")):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                what, *key, n = json.loads(line)
                if what == "rows_in":
                    rows_in += n
                elif what == "quarantined":
                    quarantined[key[0]] = quarantined.get(key[0], 0) + n
                else:
                    split, label = key
                    label_rows[split][label] = label_rows[split].get(label, 0) + n
    train_labels, eval_labels = label_rows[features.TRAIN_SPLIT], label_rows[features.EVAL_SPLIT]
    # Intersected with the train labels: for an empty train split TFT writes a placeholder entry.
    vocabulary = {
        v.decode("utf-8") for v in tft.TFTransformOutput(transform_graph_dir).vocabulary_by_name(features.LABEL_VOCABULARY_NAME)
    } & set(train_labels)
    metrics = {
        "rows_in": rows_in,
        "kept": {split: sum(label_rows[split].values()) for split in SPLITS},
        "quarantined": dict(sorted(quarantined.items())),
        "label_vocabulary_size": len(vocabulary),
        "label_min_count": label_min_count,
        # Rows whose label the model cannot predict: it maps to the out-of-vocabulary bucket.
        "out_of_vocabulary_rows": {
            split: sum(n for label, n in label_rows[split].items() if label not in vocabulary) for split in SPLITS
        },
        # Kept (evaluated against the OOV bucket) but never trained on.
        "labels_only_in_eval": {label: n for label, n in sorted(eval_labels.items()) if label not in train_labels},
        # In train, but fewer times than label_min_count.
        "labels_below_min_count": {
            label: n for label, n in sorted(train_labels.items()) if label not in vocabulary
        },
    }
    accounted = sum(metrics["kept"].values()) + sum(quarantined.values())
    if accounted != rows_in:
        # Every row must end in exactly one place; a mismatch is a bug in this stage, never in the data.
        raise RuntimeError(f"preprocess lost rows: {rows_in} in, {accounted} kept or quarantined")
    logging.info("preprocess metrics: %s", metrics)
    return metrics


def format_counts(metrics: dict) -> str:
    """The counts of a run as a few lines for a terminal or a component log."""
    then = [f"label vocabulary: {metrics['label_vocabulary_size']} labels (min count {metrics['label_min_count']})"]
    only_eval = metrics["labels_only_in_eval"]
    if only_eval:
        then.append(f"labels only in eval (mapped to OOV): {len(only_eval)} labels, {sum(only_eval.values())} rows")
    kept = "kept: " + ", ".join(f"{split} {n}" for split, n in metrics["kept"].items())
    return beam_job.format_counts(metrics, kept, then=then)


def preprocess_to_dir(
    *,
    catalog: str,
    columns: CatalogColumns,
    output_dir: str,
    bert_handle: str,
    max_seq_length: int,
    image_size: int,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    label_min_count: int = 1,
    max_image_pixels: int = row_checks.DEFAULT_MAX_IMAGE_PIXELS,
    beam_args: Sequence[str] = (),
) -> PreprocessResult:
    """`preprocess` with every output in one directory: OUTPUT_DIR/examples/, transform_graph/,
    quarantine.jsonl and metrics.json (the standalone command's and the benchmark's layout)."""
    from components.preprocess.transform import TransformOptions

    return preprocess(
        catalog=catalog,
        columns=columns,
        options=TransformOptions.for_text_encoder(
            bert_handle, max_seq_length=max_seq_length, image_size=image_size, label_min_count=label_min_count
        ),
        examples_dir=os.path.join(output_dir, EXAMPLES_DIR),
        transform_graph_dir=os.path.join(output_dir, TRANSFORM_GRAPH_DIR),
        quarantine_file=os.path.join(output_dir, QUARANTINE_FILE),
        metrics_file=os.path.join(output_dir, METRICS_FILE),
        eval_fraction=eval_fraction,
        max_image_pixels=max_image_pixels,
        beam_args=beam_args,
    )
