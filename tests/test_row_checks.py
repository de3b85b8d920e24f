"""Catalog rows → validated raw products or quarantine records, on real photos and broken ones."""
import csv
import io
import json

import PIL.Image
import pytest

from components.preprocess import row_checks
from components.preprocess.catalog import CatalogColumns, CatalogRow, read_rows, resolve_image_uri

COLUMNS = CatalogColumns(label="articleType")


def _first_rows(catalog, n):
    return [row for _, row in zip(range(n), read_rows(str(catalog), lambda: open(catalog, "rb")))]


def _rows(path):
    return list(read_rows(str(path), lambda: open(path, "rb")))


def test_real_rows_become_products_with_their_photo(fashion_catalog):
    rows = _first_rows(fashion_catalog, 3)
    products = [row_checks.to_product(row, COLUMNS, row_checks.DEFAULT_MAX_IMAGE_PIXELS) for row in rows]
    with open(fashion_catalog, newline="") as f:
        expected = list(csv.DictReader(f))[:3]
    for product, row in zip(products, expected):
        assert isinstance(product, row_checks.RawProduct), product
        assert (product.id, product.title, product.label) == (row["id"], row["title"], row["articleType"])
        with open(fashion_catalog.parent / row["image"], "rb") as f:
            assert product.image_bytes == f.read()  # RGB JPEG: passed through untouched


def test_jsonl_rows_and_a_broken_line_are_read_with_row_numbers(tmp_path):
    path = tmp_path / "catalog.jsonl"
    path.write_text('{"id": "1", "title": "a"}\nnot json\n\n["list"]\n{"id": "2"}\n')
    rows = _rows(path)
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
        ({"id": ""}, row_checks.MISSING_ID),
        ({"title": "   "}, row_checks.MISSING_TITLE),
        ({"title": "bad \udcff byte"}, row_checks.INVALID_UTF8),
        ({"articleType": ""}, row_checks.MISSING_LABEL),
        ({"image": "absent.jpg"}, row_checks.MISSING_IMAGE),
    ],
)
def test_bad_fields_are_quarantined_with_their_reason(tmp_path, fields, reason):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    result = row_checks.to_product(_row(tmp_path, **fields), COLUMNS, 10_000)
    assert isinstance(result, row_checks.Quarantined)
    assert result.reason == reason
    assert result.row_number == 7
    json.loads(result.to_json())  # the quarantine line is valid JSON even with undecodable bytes


def test_corrupt_truncated_and_oversized_images_are_quarantined(tmp_path):
    (tmp_path / "img.jpg").write_bytes(b"not an image at all")
    assert row_checks.to_product(_row(tmp_path), COLUMNS, 10_000).reason == row_checks.UNREADABLE_IMAGE
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="JPEG")
    (tmp_path / "img.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    assert row_checks.to_product(_row(tmp_path), COLUMNS, 10_000).reason == row_checks.UNREADABLE_IMAGE
    _save(tmp_path, PIL.Image.new("RGB", (200, 100)))
    result = row_checks.to_product(_row(tmp_path), COLUMNS, max_pixels=10_000)
    assert result.reason == row_checks.IMAGE_TOO_LARGE and "200x100" in result.message


def test_an_image_file_over_the_byte_limit_is_not_read_whole(tmp_path, monkeypatch):
    _save(tmp_path, PIL.Image.effect_noise((64, 64), 50).convert("RGB"))
    size = (tmp_path / "img.jpg").stat().st_size
    assert isinstance(row_checks.to_product(_row(tmp_path), COLUMNS, 10_000), row_checks.RawProduct)
    monkeypatch.setattr(row_checks, "MAX_IMAGE_FILE_BYTES", size - 1)
    result = row_checks.to_product(_row(tmp_path), COLUMNS, 10_000)
    assert result.reason == row_checks.IMAGE_TOO_LARGE and f"larger than {size - 1} bytes" in result.message


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
    product = row_checks.to_product(_row(tmp_path, image=name), COLUMNS, 10_000)
    assert isinstance(product, row_checks.RawProduct), product
    decoded = PIL.Image.open(io.BytesIO(product.image_bytes))
    assert decoded.mode in ("RGB", "L") and decoded.size == (16, 16)


def test_csv_rows_survive_a_huge_cell_and_a_broken_row(tmp_path):
    path = tmp_path / "catalog.csv"
    huge_title = "Blue Shirt " * 20_000  # 220 kB: over the csv module's 128 KiB default cell limit
    path.write_text(f'id,title\n1,{huge_title}\n2,a,surplus\n3,"ok"\n')
    rows = _rows(path)
    assert [r.row_number for r in rows] == [1, 2, 3]
    assert rows[0].fields["title"] == huge_title and rows[0].parse_error is None
    assert "more cells than the header" in rows[1].parse_error
    assert rows[2].fields == {"id": "3", "title": "ok"}


def _example(**features):
    import tensorflow as tf

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        values = value if isinstance(value, list) else [value]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    return tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})
    ).SerializeToString()


def test_tf_example_rows_keep_embedded_images_as_bytes_and_numbers_as_text(tmp_path, fashion_catalog):
    import tensorflow as tf

    photo = (fashion_catalog.parent / "images" / "15970.jpg").read_bytes()
    path = tmp_path / "catalog.tfrecord.gz"
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        writer.write(_example(id=15970, title=b"Navy Shirt", image=photo, articleType=b"Shirts"))
        writer.write(b"not a tf.Example")
        writer.write(_example(id=2, title=b"Caf\xe9", image=b"img.jpg", articleType=[b"Top", b"Wear"]))
    rows = _rows(path)
    assert [r.row_number for r in rows] == [1, 2, 3]
    first = rows[0].fields
    assert first["id"] == "15970" and first["title"] == "Navy Shirt" and first["image"] == photo
    product = row_checks.to_product(rows[0], COLUMNS, row_checks.DEFAULT_MAX_IMAGE_PIXELS)
    assert isinstance(product, row_checks.RawProduct) and product.image_bytes == photo
    assert "not a tf.Example" in rows[1].parse_error
    assert rows[2].fields["articleType"] == "Top Wear"  # several values: one text
    bad_title = row_checks.to_product(rows[2], COLUMNS, 10_000)
    assert bad_title.reason == row_checks.INVALID_UTF8
    assert json.loads(bad_title.to_json())["fields"]["title"] == "<4 bytes>"


def test_a_corrupt_tfrecord_file_ends_in_one_quarantined_row(tmp_path):
    import tensorflow as tf

    path = tmp_path / "catalog.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(_example(id=1, title=b"a"))
        writer.write(_example(id=2, title=b"b"))
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the second record's data and checksum cut short
    rows = _rows(path)
    assert [r.row_number for r in rows] == [1, 2]
    assert rows[0].fields["id"] == "1" and "corrupt TFRecord" in rows[1].parse_error


def test_extra_text_columns_are_joined_with_the_separator_and_labels_made_one_line(tmp_path):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    columns = CatalogColumns(label="articleType", extra_text=("brand", "description"), text_separator=" ; ")
    row = _row(tmp_path, brand="  Acme ", description="", articleType="Casual\nShoes ")
    product = row_checks.to_product(row, columns, 10_000)
    assert product.title == "Blue Shirt ; Acme"  # the empty description adds no separator
    assert product.label == "Casual Shoes"
