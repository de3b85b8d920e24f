"""The Beam steps every job that reads a catalog starts with (preprocess, batch prediction):

    catalog files → rows → text checks → one row per id (the first, by file then row)

and the rows they reject, as quarantine records with their reasons (row_checks). Photos are read by
each job after this, so that what the runner shuffles (grouping by id) is the text of a row, never an
image.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from components.preprocess import row_checks
from components.preprocess.catalog import CatalogColumns, CatalogRow, read_rows

QUARANTINE_TAG = "quarantine"


def _rows_of(catalog_file: fileio.ReadableFile) -> Iterable[CatalogRow]:
    # Opened as stored: read_rows undoes gzip itself.
    return read_rows(
        catalog_file.metadata.path, lambda: catalog_file.open(compression_type=CompressionTypes.UNCOMPRESSED)
    )


class _CheckText(beam.DoFn):
    def __init__(self, columns: CatalogColumns):
        self._columns = columns

    def process(self, row: CatalogRow):
        # check_text never raises: an unexpected error quarantines its row too.
        checked = row_checks.check_text(row, self._columns)
        if isinstance(checked, row_checks.Quarantined):
            yield beam.pvalue.TaggedOutput(QUARANTINE_TAG, checked)
        else:
            yield checked, row


def _position(row: CatalogRow) -> tuple[str, int]:
    return row.source, row.row_number


class _KeepFirstOfEachId(beam.DoFn):
    def __init__(self, columns: CatalogColumns):
        self._columns = columns

    def process(self, keyed: tuple[str, Iterable[CatalogRow]]):
        product_id, rows = keyed
        # Two passes over the grouped rows (Beam's grouped values can be iterated again) rather than
        # a sorted copy: even an id repeated a million times is never held in memory.
        first = min(rows, key=_position)
        yield first
        message = f"id {product_id!r} already seen at {first.source} row {first.row_number}"
        for row in rows:
            if _position(row) != _position(first):
                yield beam.pvalue.TaggedOutput(
                    QUARANTINE_TAG, row_checks.quarantine(row, self._columns, row_checks.DUPLICATE_ID, message)
                )


class UniqueRows(beam.PTransform):
    """A catalog path or glob → (every row read, the first row of each id whose text passes, the
    rejected rows): a tuple of three PCollections."""

    def __init__(self, catalog: str, columns: CatalogColumns):
        super().__init__()
        self._catalog = catalog
        self._columns = columns

    def expand(self, pbegin):
        rows = (
            pbegin
            | "Catalog" >> beam.Create([self._catalog])
            | "Match" >> fileio.MatchAll()
            | "Open" >> fileio.ReadMatches()
            # One worker reads one catalog file (a sharded catalog, e.g. part-*.csv, is read in parallel).
            | "Rows" >> beam.FlatMap(_rows_of)
        )
        checked = rows | "CheckText" >> beam.ParDo(_CheckText(self._columns)).with_outputs(QUARANTINE_TAG, main="valid")
        unique = (
            checked.valid
            | "GroupById" >> beam.GroupByKey()
            | "KeepFirst" >> beam.ParDo(_KeepFirstOfEachId(self._columns)).with_outputs(QUARANTINE_TAG, main="first")
        )
        rejected = (checked[QUARANTINE_TAG], unique[QUARANTINE_TAG]) | "Rejected" >> beam.Flatten()
        return rows, unique.first, rejected
