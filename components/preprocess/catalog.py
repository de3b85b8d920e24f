"""Reading a product catalog: CSV or JSON Lines files, one product per row, streamed.

A row is read as a `CatalogRow` (where it came from plus its fields as strings) and never as part of a
list: the reader yields rows one by one from an open file, so memory does not grow with the catalog.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath
from typing import Iterator, Mapping

CSV_SUFFIXES = (".csv", ".csv.gz")
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".ndjson")


@dataclasses.dataclass(frozen=True)
class CatalogColumns:
    """Which catalog column holds each raw feature."""

    label: str
    id: str = "id"
    title: str = "title"
    image: str = "image"
    # Extra text columns (e.g. a description) are appended to the title, in order.
    extra_text: tuple[str, ...] = ()

    def required(self) -> tuple[str, ...]:
        return (self.id, self.title, self.image, self.label)


@dataclasses.dataclass(frozen=True)
class CatalogRow:
    source: str  # the catalog file
    row_number: int  # 1-based data row within that file (the header is not counted)
    fields: Mapping[str, object]
    # Set when the row itself could not be parsed; `fields` then holds what could be recovered.
    parse_error: str | None = None


def catalog_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise ValueError(f"catalog {path}: unknown format, expected one of {CSV_SUFFIXES + JSONL_SUFFIXES}")


def _text_stream(binary: io.BufferedIOBase) -> io.TextIOWrapper:
    # surrogateescape keeps bytes that are not UTF-8 so validation can quarantine the row by name
    # instead of the whole file failing to decode.
    return io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")


def read_rows(source: str, binary: io.BufferedIOBase) -> Iterator[CatalogRow]:
    """Yields the rows of one catalog file opened in binary mode."""
    fmt = catalog_format(source)
    text = _text_stream(binary)
    if fmt == "csv":
        reader = csv.DictReader(text)
        for row_number, row in enumerate(reader, start=1):
            extra = row.pop(None, None)  # csv puts surplus cells under the key None
            error = f"{len(extra)} more cells than the header has columns" if extra else None
            yield CatalogRow(source, row_number, row, error)
        return
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


def resolve_image_uri(catalog_file: str, image: str) -> str:
    """An image reference as a readable URI: relative paths are relative to the catalog file."""
    if "://" in image or image.startswith("/"):
        return image
    return posixpath.join(posixpath.dirname(catalog_file), image)
