"""Catalog rows → validated raw products or quarantine records, on real photos and broken ones."""
import csv
import io
import json

import PIL.Image
import pytest

from components.preprocess import records
from components.preprocess.catalog import CatalogColumns, CatalogRow, read_rows, resolve_image_uri

COLUMNS = CatalogColumns(label="articleType")


def _first_rows(catalog, n):
    with open(catalog, "rb") as f:
        return [row for _, row in zip(range(n), read_rows(str(catalog), f))]


def test_real_rows_become_products_with_their_photo(fashion_catalog):
    rows = _first_rows(fashion_catalog, 3)
    products = [records.to_product(row, COLUMNS, records.DEFAULT_MAX_IMAGE_PIXELS) for row in rows]
    with open(fashion_catalog, newline="") as f:
        expected = list(csv.DictReader(f))[:3]
    for product, row in zip(products, expected):
        assert isinstance(product, records.RawProduct), product
        assert (product.id, product.title, product.label) == (row["id"], row["title"], row["articleType"])
        with open(fashion_catalog.parent / row["image"], "rb") as f:
            assert product.image_bytes == f.read()  # RGB JPEG: passed through untouched


def test_jsonl_rows_and_a_broken_line_are_read_with_row_numbers(tmp_path):
    path = tmp_path / "catalog.jsonl"
    path.write_text('{"id": "1", "title": "a"}\nnot json\n\n["list"]\n{"id": "2"}\n')
    with open(path, "rb") as f:
        rows = list(read_rows(str(path), f))
    assert [r.row_number for r in rows] == [1, 2, 4, 5]
    assert rows[0].fields == {"id": "1", "title": "a"} and rows[0].parse_error is None
    assert "invalid JSON" in rows[1].parse_error
    assert "must be an object" in rows[2].parse_error


def test_image_paths_resolve_relative_to_the_catalog():
    assert resolve_image_uri("/data/cat/products.csv", "images/1.jpg") == "/data/cat/images/1.jpg"
    assert resolve_image_uri("gs://b/cat/products.csv", "images/1.jpg") == "gs://b/cat/images/1.jpg"
    assert resolve_image_uri("/data/products.csv", "/abs/1.jpg") == "/abs/1.jpg"
    assert resolve_image_uri("/data/products.csv", "s3://b/1.jpg") == "s3://b/1.jpg"


def _row(tmp_path, **fields):
    base = {"id": "42", "title": "Blue Shirt", "image": "img.jpg", "articleType": "Shirts"}
    base.update(fields)
    return CatalogRow(str(tmp_path / "products.csv"), 7, base)


def _save(tmp_path, image, name="img.jpg", **kwargs):
    image.save(tmp_path / name, **kwargs)


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"id": ""}, records.MISSING_ID),
        ({"title": "   "}, records.MISSING_TITLE),
        ({"title": "bad \udcff byte"}, records.INVALID_UTF8),
        ({"articleType": ""}, records.MISSING_LABEL),
        ({"image": "absent.jpg"}, records.MISSING_IMAGE),
    ],
)
def test_bad_fields_are_quarantined_with_their_reason(tmp_path, fields, reason):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    result = records.to_product(_row(tmp_path, **fields), COLUMNS, 10_000)
    assert isinstance(result, records.Quarantined)
    assert result.reason == reason
    assert result.row_number == 7
    json.loads(result.to_json())  # the quarantine line is valid JSON even with undecodable bytes


def test_corrupt_truncated_and_oversized_images_are_quarantined(tmp_path):
    (tmp_path / "img.jpg").write_bytes(b"not an image at all")
    assert records.to_product(_row(tmp_path), COLUMNS, 10_000).reason == records.UNREADABLE_IMAGE
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="JPEG")
    (tmp_path / "img.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert records.to_product(_row(tmp_path), COLUMNS, 10_000).reason == records.UNREADABLE_IMAGE
    _save(tmp_path, PIL.Image.new("RGB", (200, 100)))
    result = records.to_product(_row(tmp_path), COLUMNS, max_pixels=10_000)
    assert result.reason == records.IMAGE_TOO_LARGE and "200x100" in result.message


@pytest.mark.parametrize(
    "image, name, fmt",
    [
        (PIL.Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "img.jpg", "JPEG"),
        (PIL.Image.new("RGBA", (16, 16), (255, 0, 0, 0)), "img.png", "PNG"),
        (PIL.Image.new("P", (16, 16), 3), "img.gif", "GIF"),
        (PIL.Image.new("I;16", (16, 16), 65535), "img.png", "PNG"),
        (PIL.Image.new("RGB", (16, 16), (255, 0, 0)), "img.bmp", "BMP"),
        (PIL.Image.new("RGB", (16, 16), (255, 0, 0)), "img.webp", "WEBP"),
    ],
)
def test_unusual_formats_and_modes_become_rgb_not_rejects(tmp_path, image, name, fmt):
    _save(tmp_path, image, name=name, format=fmt)
    product = records.to_product(_row(tmp_path, image=name), COLUMNS, 10_000)
    assert isinstance(product, records.RawProduct), product
    decoded = PIL.Image.open(io.BytesIO(product.image_bytes))
    assert decoded.mode in ("RGB", "L") and decoded.size == (16, 16)
