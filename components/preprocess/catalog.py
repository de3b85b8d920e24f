"""Reading a product catalog: CSV, JSON Lines or TFRecords of tf.Example, one product per row, streamed.

A row is read as a `CatalogRow` (where it came from plus its fields) and never as part of a list: the
reader yields rows one by one from an open file, so memory does not grow with the catalog.

Field values are strings, except in a tf.Example catalog, where a bytes feature that is not UTF-8 text
stays `bytes`: that is how such catalogs embed the image itself, and for a text column it is caught as
invalid UTF-8 by validation.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import posixpath
from typing import BinaryIO, Callable, Iterator, Mapping

CSV_SUFFIXES = (".csv", ".csv.gz")
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".ndjson")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")

# A title is truncated to the token budget later, never rejected for its length, so a CSV cell may be
# far larger than the csv module's 128 KiB default. The cap still stops an unclosed quote from
# swallowing the rest of a large file into one cell.
MAX_CSV_FIELD_CHARS = 16 * 2**20

# The catalog columns' default names; the label column has none, a catalog always names it.
DEFAULT_ID_COLUMN = "id"
DEFAULT_TITLE_COLUMN = "title"
DEFAULT_IMAGE_COLUMN = "image"
# Joins the title and the extra text columns (see CatalogColumns.text_separator).
DEFAULT_TEXT_SEPARATOR = " | "


class CatalogError(ValueError):
    """The catalog cannot be used at all (no file, an unknown format, a required column absent): the
    user's to fix before anything runs, unlike a bad row, which is quarantined."""


@dataclasses.dataclass(frozen=True)
class CatalogColumns:
    """Which catalog column holds each raw feature."""

    label: str
    id: str = DEFAULT_ID_COLUMN
    title: str = DEFAULT_TITLE_COLUMN
    image: str = DEFAULT_IMAGE_COLUMN
    # Extra text columns (e.g. a description) are appended to the title, in order, each after the
    # separator; empty ones are skipped. The model sees one text: a serving client sends the same join.
    extra_text: tuple[str, ...] = ()
    text_separator: str = DEFAULT_TEXT_SEPARATOR

    def required(self) -> tuple[str, ...]:
        return (self.id, self.title, self.image, self.label)


def split_column_list(spec: str) -> tuple[str, ...]:
    """"description,brand" → ("description", "brand"): how flags and pipeline parameters name columns."""
    return tuple(name.strip() for name in spec.split(",") if name.strip())


@dataclasses.dataclass(frozen=True)
class CatalogRow:
    source: str  # the catalog file
    row_number: int  # 1-based data row within that file (a CSV header is not counted)
    fields: Mapping[str, object]
    # Set when the row itself could not be parsed; `fields` then holds what could be recovered.
    parse_error: str | None = None


def catalog_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(TFRECORD_SUFFIXES):
        return "tfrecord"
    known = CSV_SUFFIXES + JSONL_SUFFIXES + TFRECORD_SUFFIXES
    raise CatalogError(f"catalog {path}: unknown format, expected a file name ending in one of {known}")


def check_catalog(catalog: str, columns: CatalogColumns) -> list[str]:
    """The catalog files matched by `catalog` (a path, URI or glob; Beam's filesystems list it, as the
    job will); raises CatalogError when the job could not use them at all."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        files = sorted(m.path for m in FileSystems.match([catalog])[0].metadata_list)
    except Exception as e:  # BeamIOError, or the filesystem's own error for a malformed URI
        raise CatalogError(f"catalog {catalog} cannot be listed: {e}") from None
    if not files:
        raise CatalogError(f"catalog {catalog} matches no file")
    for path in files:
        catalog_format(path)
    first = files[0]
    if catalog_format(first) == "csv":
        # A CSV header is the catalog's schema: a misspelt column would otherwise quarantine every row.
        header = csv_header(first, lambda: FileSystems.open(first, compression_type=CompressionTypes.UNCOMPRESSED))
        absent = [c for c in (*columns.required(), *columns.extra_text) if c not in header]
        if absent:
            raise CatalogError(f"catalog {first} has no column {', '.join(map(repr, absent))} (its columns: {header})")
    return files


def read_rows(source: str, open_file: Callable[[], BinaryIO]) -> Iterator[CatalogRow]:
    """Yields the rows of one catalog file; `open_file` opens its bytes as stored (gzip is undone here)."""
    fmt = catalog_format(source)
    if fmt == "tfrecord":
        yield from _tf_example_rows(source)
        return
    with _open_text(source, open_file) as text:
        yield from (_csv_rows if fmt == "csv" else _jsonl_rows)(source, text)


def csv_header(source: str, open_file: Callable[[], BinaryIO]) -> list[str]:
    """The column names of a CSV catalog (its first line)."""
    with _open_text(source, open_file) as text:
        return next(csv.reader(text), [])


@contextlib.contextmanager
def _open_text(source: str, open_file: Callable[[], BinaryIO]) -> Iterator[io.TextIOWrapper]:
    with open_file() as stored:
        # gzip.GzipFile rather than Beam's own decompressing reader, which is not a full io object
        # (TextIOWrapper needs one).
        binary = gzip.GzipFile(fileobj=stored, mode="rb") if source.lower().endswith(".gz") else stored
        # surrogateescape keeps bytes that are not UTF-8 so validation can quarantine the row by name
        # instead of the whole file failing to decode.
        yield io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")


def _csv_rows(source: str, text: io.TextIOBase) -> Iterator[CatalogRow]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_FIELD_CHARS))
    reader = csv.DictReader(text)
    row_number = 0
    while True:
        row_number += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            # The reader resumes at the next line: one broken row, not a broken file.
            yield CatalogRow(source, row_number, {}, f"unparseable CSV row ending at line {reader.line_num}: {e}")
            continue
        extra = row.pop(None, None)  # csv puts surplus cells under the key None
        error = f"{len(extra)} more cells than the header has columns" if extra else None
        yield CatalogRow(source, row_number, row, error)


def _jsonl_rows(source: str, text: io.TextIOBase) -> Iterator[CatalogRow]:
    for row_number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as e:
            yield CatalogRow(source, row_number, {"_raw": line[:1000]}, f"invalid JSON: {e.msg}")
            continue
        if not isinstance(fields, dict):
            yield CatalogRow(source, row_number, {"_raw": line[:1000]}, "a JSON line must be an object")
            continue
        yield CatalogRow(source, row_number, fields)


def _tf_example_rows(source: str) -> Iterator[CatalogRow]:
    # tf.data reads the TFRecord framing and checks its CRCs, from any tf.io.gfile URI.
    import tensorflow as tf

    compression = "GZIP" if source.lower().endswith(".gz") else ""
    records = iter(tf.data.TFRecordDataset(source, compression_type=compression).as_numpy_iterator())
    row_number = 0
    while True:
        row_number += 1
        try:
            record = next(records)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            # A corrupt length or checksum loses the framing: nothing after it can be located.
            yield CatalogRow(source, row_number, {}, f"corrupt TFRecord, the rest of the file is unreadable: {e.message}")
            return
        try:
            example = tf.train.Example.FromString(record)
        except Exception as e:  # protobuf's DecodeError has no stable import path across versions
            yield CatalogRow(source, row_number, {}, f"not a tf.Example: {e}")
            continue
        yield CatalogRow(source, row_number, {k: _feature_value(f) for k, f in example.features.feature.items()})


def _feature_value(feature) -> object:
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value) if kind else []
    if kind != "bytes_list":
        return " ".join(str(v) for v in values)
    if len(values) == 1:
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            return values[0]  # an embedded image, or text that validation rejects as not UTF-8
    return " ".join(v.decode("utf-8", "surrogateescape") for v in values)


def resolve_image_uri(catalog_file: str, image: str) -> str:
    """An image reference as a readable URI: relative paths are relative to the catalog file."""
    if "://" in image or image.startswith("/"):
        return image
    return posixpath.join(posixpath.dirname(catalog_file), image)
