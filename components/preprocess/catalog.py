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
import logging
import posixpath
import zlib
from typing import BinaryIO, Callable, Iterator, Mapping

from common.features import DEFAULT_ID_COLUMN, DEFAULT_IMAGE_COLUMN, DEFAULT_TEXT_SEPARATOR, DEFAULT_TITLE_COLUMN

CSV_SUFFIXES = (".csv", ".csv.gz")
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".ndjson")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")

# A title is truncated to the token budget later, never rejected for its length, so a CSV cell may be
# far larger than the csv module's 128 KiB default. The cap still stops an unclosed quote from
# swallowing the rest of a large file into one cell.
MAX_CSV_FIELD_CHARS = 16 * 2**20
# The csv and json modules see a file line by line, each line read whole first: without a bound, a file
# with no line break (a 5 GB JSON array saved as .json, a CSV whose line breaks were stripped) would be
# held in memory as one row. A longer line is skipped unread and quarantined as one malformed row.
MAX_LINE_CHARS = 64 * 2**20
# What a truncated or corrupt gzip file raises part-way through: nothing after it can be read.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


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
    for path in (p for p in files if catalog_format(p) == "csv"):
        # A CSV header is the catalog's schema: a misspelt column would otherwise quarantine every row.
        try:
            header = csv_header(path, lambda: FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))
        except (*_GZIP_ERRORS, csv.Error, _LineTooLong) as e:
            # A corrupt file costs its rows, not the job (it is quarantined as one row): the next one has the schema.
            logging.warning("catalog %s: its CSV header cannot be read (%s), checking the next CSV file's", path, e)
            continue
        except Exception as e:  # the file cannot be opened at all (permissions, a directory, a broken link)
            raise CatalogError(f"catalog {path} cannot be read: {e}") from None
        absent = [c for c in (*columns.required(), *columns.extra_text) if c not in header]
        if absent:
            raise CatalogError(f"catalog {path} has no column {', '.join(map(repr, absent))} (its columns: {header})")
        break
    return files


def read_rows(source: str, open_file: Callable[[], BinaryIO]) -> Iterator[CatalogRow]:
    """Yields the rows of one catalog file; `open_file` opens its bytes as stored (gzip is undone here)."""
    fmt = catalog_format(source)
    if fmt == "tfrecord":
        yield from _tf_example_rows(source)
        return
    row_number = 0
    try:
        with _open_text(source, open_file) as text:
            for row in (_csv_rows if fmt == "csv" else _jsonl_rows)(source, text):
                row_number = row.row_number
                yield row
    except _GZIP_ERRORS as e:
        # As a corrupt TFRecord: the rows before it are read, the rest of the file is one quarantined row.
        yield CatalogRow(
            source, row_number + 1, {}, f"corrupt gzip after row {row_number}, the rest of the file is unreadable: {e}"
        )
    except OSError as e:
        # The file itself cannot be read (permissions, a failing disk or network): the job fails, naming it.
        where = f" after row {row_number}" if row_number else ""
        raise CatalogError(f"catalog {source} cannot be read{where}: {e}") from e


def csv_header(source: str, open_file: Callable[[], BinaryIO]) -> list[str]:
    """The column names of a CSV catalog (its first line)."""
    with _open_text(source, open_file) as text:
        return next(csv.reader(_BoundedLines(text)), [])


@contextlib.contextmanager
def _open_text(source: str, open_file: Callable[[], BinaryIO]) -> Iterator[io.TextIOWrapper]:
    with open_file() as stored:
        # gzip.GzipFile rather than Beam's own decompressing reader, which is not a full io object
        # (TextIOWrapper needs one).
        binary = gzip.GzipFile(fileobj=stored, mode="rb") if source.lower().endswith(".gz") else stored
        # surrogateescape keeps bytes that are not UTF-8 so validation can quarantine the row by name
        # instead of the whole file failing to decode.
        yield io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")


class _LineTooLong(Exception):
    def __init__(self, line_number: int, head: str):
        super().__init__(f"line {line_number} is longer than {MAX_LINE_CHARS} characters, skipped")
        self.head = head


class _BoundedLines:
    """The lines of a text file, each at most MAX_LINE_CHARS long: a longer one is skipped without being
    held and raises _LineTooLong, and the next call goes on with the next line. A class, not a generator,
    because a generator that raised is finished, and the csv reader asks its input again after an error."""

    def __init__(self, text: io.TextIOBase):
        self._text = text
        self.line_number = 0  # physical lines read, so messages can name the line

    def __iter__(self) -> "_BoundedLines":
        return self

    def __next__(self) -> str:
        line = self._text.readline(MAX_LINE_CHARS + 1)
        if not line:
            raise StopIteration
        self.line_number += 1
        if len(line) > MAX_LINE_CHARS:
            head, rest = line[:1000], line
            while rest and rest[-1] not in "\r\n":
                rest = self._text.readline(MAX_LINE_CHARS)
            raise _LineTooLong(self.line_number, head)
        return line


def _csv_rows(source: str, text: io.TextIOBase) -> Iterator[CatalogRow]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_FIELD_CHARS))
    lines = _BoundedLines(text)
    try:
        header = next(csv.reader(lines))
    except StopIteration:
        return
    except (csv.Error, _LineTooLong) as e:
        # Without a header no cell can be named: the file is one malformed row.
        yield CatalogRow(source, 1, {}, f"unreadable CSV header, the file is not read: {e}")
        return
    # The header read apart, so that an error in it cannot make the next line the header.
    reader = csv.DictReader(lines, fieldnames=header)
    row_number = 0
    while True:
        row_number += 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, _LineTooLong) as e:
            # The reader resumes at the next line: one broken row, not a broken file.
            yield CatalogRow(source, row_number, {}, f"unparseable CSV row ending at line {lines.line_number}: {e}")
            continue
        extra = row.pop(None, None)  # csv puts surplus cells under the key None
        error = f"{len(extra)} more cells than the header has columns" if extra else None
        yield CatalogRow(source, row_number, row, error)


def _jsonl_rows(source: str, text: io.TextIOBase) -> Iterator[CatalogRow]:
    lines = _BoundedLines(text)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except _LineTooLong as e:
            yield CatalogRow(source, lines.line_number, {"_raw": e.head}, str(e))
            continue
        row_number = lines.line_number
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as e:
            yield CatalogRow(source, row_number, {"_raw": line[:1000]}, f"invalid JSON: {e.msg}")
            continue
        except RecursionError:
            # json recurses once per level of nesting: "[[[[..." 10,000 deep exhausts Python's stack limit.
            yield CatalogRow(source, row_number, {"_raw": line[:1000]}, "invalid JSON: nested too deeply to parse")
            continue
        except ValueError as e:  # a number of more digits than Python converts (sys.get_int_max_str_digits)
            yield CatalogRow(source, row_number, {"_raw": line[:1000]}, f"invalid JSON: {e}")
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
