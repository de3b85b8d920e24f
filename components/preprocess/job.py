"""The preprocess stage: a Beam pipeline from a raw catalog to transformed TFRecords and a transform graph.

    catalog files → rows → text checks → one row per id → image checks → split by hash of id
        → tensorflow-transform (label vocabulary analysed on train only) → GZIP TFRecords
    and every rejected row → quarantine.jsonl, with its reason.

The pipeline is built and run inside `preprocess()`: a Beam/TFT pipeline built at import time crashes
the interpreter at exit (protobuf's C extension).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Iterable, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.options.pipeline_options import PipelineOptions

from components.preprocess import records
from components.preprocess.catalog import CatalogColumns, CatalogRow, read_rows
from components.preprocess.transform import RAW_FEATURE_SPEC, TransformOptions, make_preprocessing_fn
from trainer import features
from trainer.data import write_split_sizes

QUARANTINE_FILE = "quarantine.jsonl"
METRICS_FILE = "metrics.json"
RECORD_SUFFIX = ".tfrecord.gz"
_COUNTS_PREFIX = "counts"
_QUARANTINE_TAG = "quarantine"


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    metrics: dict
    examples_dir: str
    transform_graph_dir: str
    quarantine_file: str


def split_of(product_id: str, eval_fraction: float) -> str:
    """The split of a product, from a hash of its id: the same on every run and every runner."""
    digest = hashlib.sha256(product_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return features.EVAL_SPLIT if position < eval_fraction else features.TRAIN_SPLIT


def split_file_pattern(examples_dir: str, split: str) -> str:
    return os.path.join(examples_dir, split, f"part-*{RECORD_SUFFIX}")


class _CheckText(beam.DoFn):
    def __init__(self, columns: CatalogColumns):
        self._columns = columns

    def process(self, row: CatalogRow):
        try:
            product_id, _, _, _ = records.validate_row(row, self._columns)
        except records.RowError as e:
            yield beam.pvalue.TaggedOutput(_QUARANTINE_TAG, records.quarantine(row, self._columns, e.reason, e.message))
            return
        yield product_id, row


class _KeepFirstOfEachId(beam.DoFn):
    def __init__(self, columns: CatalogColumns):
        self._columns = columns

    def process(self, keyed: tuple[str, Iterable[CatalogRow]]):
        product_id, rows = keyed
        ordered = sorted(rows, key=lambda r: (r.source, r.row_number))
        yield ordered[0]
        for dup in ordered[1:]:
            first = ordered[0]
            message = f"id {product_id!r} already seen at {first.source} row {first.row_number}"
            yield beam.pvalue.TaggedOutput(
                _QUARANTINE_TAG, records.quarantine(dup, self._columns, records.DUPLICATE_ID, message)
            )


class _ToProduct(beam.DoFn):
    def __init__(self, columns: CatalogColumns, max_image_pixels: int):
        self._columns = columns
        self._max_image_pixels = max_image_pixels

    def process(self, row: CatalogRow):
        result = records.to_product(row, self._columns, self._max_image_pixels)
        if isinstance(result, records.Quarantined):
            yield beam.pvalue.TaggedOutput(_QUARANTINE_TAG, result)
        else:
            yield result


def _count(pcoll, name: str):
    return pcoll | f"Count{name}" >> beam.combiners.Count.Globally() | f"Key{name}" >> beam.Map(lambda n: (name, n))


def _beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        # Beam's own default is now Prism, which downloads a binary at run time.
        args.append("--runner=DirectRunner")
    return PipelineOptions(args)


def preprocess(
    *,
    catalog: str,
    columns: CatalogColumns,
    options: TransformOptions,
    examples_dir: str,
    transform_graph_dir: str,
    report_dir: str,
    eval_fraction: float = 0.2,
    max_image_pixels: int = records.DEFAULT_MAX_IMAGE_PIXELS,
    beam_args: Sequence[str] = (),
    temp_dir: str | None = None,
) -> PreprocessResult:
    """Runs the preprocess stage; returns its metrics (rows in, kept per split, quarantined per reason)."""
    # Imported here: tensorflow_transform.beam registers Beam coders and pulls TF in; the CLI's
    # argument errors should not pay for it.
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="hanet-preprocess-")
    raw_metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC))
    preprocessing_fn = make_preprocessing_fn(options)

    with beam.Pipeline(options=_beam_options(beam_args)) as pipeline:
        with tft_beam.Context(temp_dir=os.path.join(temp_dir, "tft")):
            rows = (
                pipeline
                | "Catalog" >> beam.Create([catalog])
                | "Match" >> fileio.MatchAll()
                | "Open" >> fileio.ReadMatches()
                | "Rows" >> beam.FlatMap(lambda f: read_rows(f.metadata.path, f.open()))
            )
            checked = rows | "CheckText" >> beam.ParDo(_CheckText(columns)).with_outputs(
                _QUARANTINE_TAG, main="valid"
            )
            unique = (
                checked.valid
                | "GroupById" >> beam.GroupByKey()
                | "KeepFirst" >> beam.ParDo(_KeepFirstOfEachId(columns)).with_outputs(_QUARANTINE_TAG, main="first")
            )
            products = (
                unique.first
                # Spreads image reads over all workers: a catalog file is read by one worker.
                | "Spread" >> beam.Reshuffle()
                | "ReadImages" >> beam.ParDo(_ToProduct(columns, max_image_pixels)).with_outputs(
                    _QUARANTINE_TAG, main="product"
                )
            )
            quarantined = (
                checked[_QUARANTINE_TAG],
                unique[_QUARANTINE_TAG],
                products[_QUARANTINE_TAG],
            ) | "AllQuarantined" >> beam.Flatten()

            by_split = products.product | "Split" >> beam.Partition(
                lambda p, _: 0 if split_of(p.id, eval_fraction) == features.TRAIN_SPLIT else 1, 2
            )
            raw = {
                split: by_split[i] | f"RawExample{split}" >> beam.Map(records.RawProduct.as_raw_example)
                for i, split in enumerate((features.TRAIN_SPLIT, features.EVAL_SPLIT))
            }
            # The label vocabulary is analysed on train only: an eval label unseen in train maps to OOV.
            transform_fn = (raw[features.TRAIN_SPLIT], raw_metadata) | "Analyze" >> tft_beam.AnalyzeDataset(
                preprocessing_fn
            )
            _ = transform_fn | "WriteTransformGraph" >> tft_beam.WriteTransformFn(transform_graph_dir)
            for split, raw_examples in raw.items():
                transformed, transformed_metadata = (
                    (raw_examples, raw_metadata),
                    transform_fn,
                ) | f"Transform{split}" >> tft_beam.TransformDataset()
                coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
                _ = (
                    transformed
                    | f"Encode{split}" >> beam.Map(coder.encode)
                    | f"Write{split}"
                    >> beam.io.WriteToTFRecord(os.path.join(examples_dir, split, "part"), file_name_suffix=RECORD_SUFFIX)
                )

            _ = (
                quarantined
                | "QuarantineJson" >> beam.Map(records.Quarantined.to_json)
                | "WriteQuarantine"
                >> beam.io.WriteToText(os.path.join(report_dir, QUARANTINE_FILE), shard_name_template="")
            )
            counts = (
                _count(rows, "rows_in"),
                _count(raw[features.TRAIN_SPLIT], f"kept_{features.TRAIN_SPLIT}"),
                _count(raw[features.EVAL_SPLIT], f"kept_{features.EVAL_SPLIT}"),
                quarantined
                | "Reasons" >> beam.Map(lambda q: f"quarantined_{q.reason}")
                | "CountReasons" >> beam.combiners.Count.PerElement(),
            ) | "AllCounts" >> beam.Flatten()
            _ = (
                counts
                | "CountsJson" >> beam.Map(json.dumps)
                | "WriteCounts"
                >> beam.io.WriteToText(os.path.join(temp_dir, _COUNTS_PREFIX), file_name_suffix=".jsonl")
            )

    metrics = _metrics(temp_dir, transform_graph_dir)
    _write_json(os.path.join(report_dir, METRICS_FILE), metrics)
    # The trainer's steps per epoch come from here rather than from a pass over the records.
    write_split_sizes(examples_dir, metrics["kept"])
    return PreprocessResult(metrics, examples_dir, transform_graph_dir, os.path.join(report_dir, QUARANTINE_FILE))


def _metrics(temp_dir: str, transform_graph_dir: str) -> dict:
    import tensorflow as tf
    import tensorflow_transform as tft

    counts: dict[str, int] = {}
    for path in tf.io.gfile.glob(os.path.join(temp_dir, f"{_COUNTS_PREFIX}*")):
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                name, n = json.loads(line)
                counts[name] = counts.get(name, 0) + n
    kept = {split: counts.get(f"kept_{split}", 0) for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT)}
    quarantined = {k.removeprefix("quarantined_"): v for k, v in sorted(counts.items()) if k.startswith("quarantined_")}
    metrics = {
        "rows_in": counts.get("rows_in", 0),
        "kept": kept,
        "quarantined": quarantined,
        "label_vocabulary_size": tft.TFTransformOutput(transform_graph_dir).vocabulary_size_by_name(
            features.LABEL_VOCABULARY_NAME
        ),
    }
    accounted = sum(kept.values()) + sum(quarantined.values())
    if accounted != metrics["rows_in"]:
        # Every row must end in exactly one place; a mismatch is a bug in this stage, never in the data.
        raise RuntimeError(f"preprocess lost rows: {metrics['rows_in']} in, {accounted} kept or quarantined")
    logging.info("preprocess metrics: %s", metrics)
    return metrics


def _write_json(path: str, payload: dict) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
