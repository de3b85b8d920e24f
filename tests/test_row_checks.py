"""Catalog rows → validated raw products or quarantine records, on real photos and broken ones."""
import csv
import gzip
import io
import json
import os
import struct
import warnings
import zlib

import PIL.Image
import PIL.ImageFile
import pytest

from components.preprocess import catalog, row_checks
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
    monkeypatch.setattr(row_checks, "MAX_IMAGE_FILE_BYTES", size)  # exactly the limit: still read
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


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of width × height, written chunk by chunk: 76 kB on disk for
    25,000², which decodes to 625 Mpx (1.9 GB as RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the row's pixels, 8 to a byte
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png(25_000, 25_000))
    return path


@pytest.mark.parametrize("pillow_limit", ["Pillow's default", None, 10**12])
def test_an_image_over_pillows_hard_limit_is_too_large_and_never_decoded(tmp_path, monkeypatch, bomb, pillow_limit):
    assert bomb.stat().st_size < 200_000 and 25_000**2 > 2 * PIL.Image.MAX_IMAGE_PIXELS
    if pillow_limit != "Pillow's default":
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", pillow_limit)

    def decode(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", decode)
    result = row_checks.to_product(_row(tmp_path, image=str(bomb)), COLUMNS, row_checks.DEFAULT_MAX_IMAGE_PIXELS)
    assert (result.reason, result.row_number, result.id) == (row_checks.IMAGE_TOO_LARGE, 7, "42"), result.message
    assert "625000000 pixels" in result.message or "25000x25000" in result.message


def test_pillows_bomb_warning_raised_as_an_error_is_too_large_too(tmp_path):
    (tmp_path / "img.png").write_bytes(bomb_png(10_000, 10_000))  # 100 Mpx: between Pillow's warning and error
    with warnings.catch_warnings():
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        result = row_checks.to_product(_row(tmp_path, image="img.png"), COLUMNS, row_checks.DEFAULT_MAX_IMAGE_PIXELS)
    assert result.reason == row_checks.IMAGE_TOO_LARGE, result.message


def test_a_check_raising_something_unexpected_costs_its_row_as_internal_error(tmp_path, monkeypatch):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))

    def deepest():
        raise ZeroDivisionError("a bug met on this row")

    def broken(*args):
        deepest()

    monkeypatch.setattr(row_checks, "normalize_image", broken)
    result = row_checks.to_product(_row(tmp_path), COLUMNS, 10_000)
    assert (result.reason, result.id) == (row_checks.INTERNAL_ERROR, "42")
    # Where: the innermost frame, the line that raised (the traceback has three).
    assert result.message.startswith("ZeroDivisionError: a bug met on this row (at test_row_checks.py:")
    assert result.message.endswith(" in deepest)")
    monkeypatch.setattr(row_checks, "resolve_image_uri", broken)  # reached by the text checks too
    assert row_checks.check_text(_row(tmp_path), COLUMNS).reason == row_checks.INTERNAL_ERROR


@pytest.mark.timeout(300)  # opening the FIFO would block forever (the first test to import TensorFlow pays for it)
@pytest.mark.parametrize("kind, named", [("directory", "a directory"), ("fifo", "a FIFO"), ("socket", "a socket"),
                                         ("/dev/zero", "a character device")])
def test_an_image_path_that_is_not_a_regular_file_is_not_read(tmp_path, kind, named):
    import socket
    import tempfile

    with tempfile.TemporaryDirectory() as short, socket.socket(socket.AF_UNIX) as listening:
        image = tmp_path / "img.jpg"
        if kind == "directory":
            image.mkdir()
        elif kind == "fifo":
            os.mkfifo(image)
        elif kind == "socket":
            image = os.path.join(short, "img.jpg")  # a socket's path has at most 107 bytes
            listening.bind(image)
        else:
            image = kind
        result = row_checks.to_product(_row(tmp_path, image=str(image)), COLUMNS, 10_000)
    assert result.reason == row_checks.MISSING_IMAGE
    assert result.message == f"image {image} is not a regular file ({named})"


def test_an_image_uri_of_a_filesystem_tensorflow_lacks_is_quarantined_saying_so(tmp_path):
    result = row_checks.to_product(_row(tmp_path, image="nofs://bucket/img.jpg"), COLUMNS, 10_000)
    assert result.reason == row_checks.MISSING_IMAGE
    assert result.message.startswith("image nofs://bucket/img.jpg cannot be read: ") and "'nofs'" in result.message


def test_a_field_too_deeply_nested_to_print_still_gives_a_quarantine_line(tmp_path):
    nested = []
    for _ in range(100_000):  # str() of it overflows the interpreter's recursion limit
        nested = [nested]
    result = row_checks.check_text(_row(tmp_path, title=nested), COLUMNS)
    assert result.reason == row_checks.NOT_TEXT
    assert _strict_json(result.to_json())["fields"]["title"] == "<list that cannot be shown: RecursionError>"


def _strict_json(line):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_json_values_that_are_not_text_are_quarantined_by_name(tmp_path):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    base = {"id": "1", "title": "Blue Shirt", "image": "img.jpg", "articleType": "Shirts"}
    cases = [
        ({"id": 15970, "title": 42}, None),  # numbers are text: ids often are numbers
        ({"title": ["Blue", "Shirt"]}, row_checks.NOT_TEXT),
        ({"title": {"en": "Blue Shirt"}}, row_checks.NOT_TEXT),
        ({"id": {"sku": 1}}, row_checks.NOT_TEXT),
        ({"articleType": True}, row_checks.NOT_TEXT),
        ({"id": float("nan")}, row_checks.NOT_TEXT),
        ({"image": ["img.jpg"]}, row_checks.NOT_TEXT),
    ]
    path = tmp_path / "products.jsonl"
    path.write_text("".join(json.dumps({**base, **fields}) + "\n" for fields, _ in cases))  # NaN written as NaN
    results = [row_checks.to_product(row, COLUMNS, 10_000) for row in _rows(path)]
    assert [getattr(r, "reason", None) for r in results] == [reason for _, reason in cases]
    assert (results[0].id, results[0].title) == ("15970", "42")
    assert "holds a list" in results[1].message and "'title'" in results[1].message
    for result in results[1:]:
        _strict_json(result.to_json())  # NaN and nested values still make a valid quarantine line
    assert _strict_json(results[3].to_json())["id"] == "{'sku': 1}"


def test_jsonl_lines_too_deep_too_long_or_with_huge_numbers_cost_one_row_each(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "MAX_LINE_CHARS", 15_000)
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        '{"id": "1"}\n'
        + "[" * 10_000 + "\n"  # json recurses per level: past Python's recursion limit
        + '{"id": ' + "9" * 5_000 + "}\n"  # more digits than int() converts by default
        + '{"id": "' + "x" * 20_000 + '"}\n'  # over the line limit: skipped, never parsed
        + '{"id": "5"}\n'
    )
    rows = _rows(path)
    assert [r.row_number for r in rows] == [1, 2, 3, 4, 5]
    assert [r.fields.get("id") for r in (rows[0], rows[4])] == ["1", "5"]
    assert "nested too deeply" in rows[1].parse_error
    assert "4300 digits" in rows[2].parse_error
    assert "line 4 is longer than 15000 characters" in rows[3].parse_error and len(rows[3].fields["_raw"]) == 1000


def test_csv_nul_bytes_cells_over_the_limit_and_overlong_lines_cost_at_most_their_row(tmp_path, monkeypatch):
    path = tmp_path / "catalog.csv"
    over_limit = "x" * (catalog.MAX_CSV_FIELD_CHARS + 1)
    path.write_bytes(f"id,title\n1,Navy\0Shirt\n2,{over_limit}\n3,ok\n".encode())
    rows = _rows(path)
    assert [r.row_number for r in rows] == [1, 2, 3]
    assert rows[0].fields == {"id": "1", "title": "Navy\0Shirt"}  # the csv module reads NUL as a character
    assert "field larger than field limit" in rows[1].parse_error
    assert rows[2].fields == {"id": "3", "title": "ok"}

    monkeypatch.setattr(catalog, "MAX_LINE_CHARS", 1_000)
    path.write_text(f"id,title\n1,a\n2,{'y' * 5_000}\n3,c\n")
    rows = _rows(path)
    assert [r.fields.get("id") for r in rows] == ["1", None, "3"]
    assert "line 3 is longer than 1000 characters" in rows[1].parse_error
    path.write_text(f"id,title{'z' * 5_000}\n1,a\n")
    (header_row,) = _rows(path)
    assert "unreadable CSV header" in header_row.parse_error


@pytest.mark.parametrize("name", ["catalog.csv.gz", "catalog.jsonl.gz", "catalog.tfrecord.gz"])
def test_a_truncated_gzip_file_keeps_its_first_rows_and_ends_in_one_quarantined_row(tmp_path, name):
    import tensorflow as tf

    path = tmp_path / name
    ids = [str(i) for i in range(3_000)]
    if name.endswith(".tfrecord.gz"):
        with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
            for i in ids:
                writer.write(_example(id=int(i), title=b"t" * 50))
    elif name.endswith(".csv.gz"):
        path.write_bytes(gzip.compress(("id,title\n" + "".join(f"{i},{'t' * 50}\n" for i in ids)).encode()))
    else:
        path.write_bytes(gzip.compress("".join(json.dumps({"id": i, "title": "t" * 50}) + "\n" for i in ids).encode()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    rows = _rows(path)
    *read, last = rows
    assert read and [r.fields["id"] for r in read] == ids[: len(read)] and len(read) < len(ids)
    assert last.row_number == len(read) + 1 and "the rest of the file is unreadable" in last.parse_error


def test_a_file_named_gz_that_is_not_gzip_is_one_quarantined_row(tmp_path):
    path = tmp_path / "catalog.csv.gz"
    path.write_text("id,title\n1,a\n")
    (row,) = _rows(path)
    assert "corrupt gzip" in row.parse_error and "Not a gzipped file" in row.parse_error


def test_every_reason_code_is_the_one_docs_preprocessing_md_lists():
    import pathlib
    import re

    table = (pathlib.Path(__file__).parents[1] / "docs" / "preprocessing.md").read_text()
    documented = {code for line in table.splitlines() if line.startswith("| `")
                  for code in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])}
    codes = {row_checks.MALFORMED_ROW, row_checks.MISSING_ID, row_checks.MISSING_TITLE, row_checks.NOT_TEXT,
             row_checks.INVALID_UTF8, row_checks.MISSING_LABEL, row_checks.MISSING_IMAGE, row_checks.UNREADABLE_IMAGE,
             row_checks.IMAGE_TOO_LARGE, row_checks.DUPLICATE_ID, row_checks.INTERNAL_ERROR}
    assert codes <= documented, codes - documented


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"id": ""}, "column 'id' is empty or missing"),
        ({"id": None}, "column 'id' is empty or missing"),
        ({"title": None}, f"column {COLUMNS.title!r} is empty or whitespace"),
        ({"articleType": None}, "column 'articleType' is empty or missing"),
        ({"image": None}, "column 'image' is empty or missing"),
    ],
)
def test_an_absent_or_empty_column_is_quarantined_with_a_message_naming_it(tmp_path, fields, message):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    row = _row(tmp_path)
    for column, value in fields.items():
        if value is None:
            del row.fields[column]
        else:
            row.fields[column] = value
    result = row_checks.to_product(row, COLUMNS, 10_000)
    assert isinstance(result, row_checks.Quarantined) and result.message == message


def test_images_tensorflow_decodes_as_they_are_pass_unchanged_others_are_reencoded(tmp_path):
    # PNGs saved uncompressed, so that re-encoding (Pillow's default compression) would change their bytes.
    for mode, fmt, name in (("RGB", "PNG", "a.png"), ("L", "PNG", "b.png"), ("RGB", "JPEG", "c.jpg"),
                            ("L", "JPEG", "d.jpg")):
        _save(tmp_path, PIL.Image.effect_noise((16, 16), 40).convert(mode), name=name, format=fmt,
              **({"compress_level": 0} if fmt == "PNG" else {}))
        product = row_checks.to_product(_row(tmp_path, image=name), COLUMNS, 10_000)
        assert product.image_bytes == (tmp_path / name).read_bytes(), (mode, fmt)
    _save(tmp_path, PIL.Image.new("RGB", (8, 8), (1, 2, 3)), name="e.bmp", format="BMP")
    product = row_checks.to_product(_row(tmp_path, image="e.bmp"), COLUMNS, 10_000)
    assert product.image_bytes[:8] == b"\x89PNG\r\n\x1a\n"  # lossless PNG, RGB
    assert PIL.Image.open(io.BytesIO(product.image_bytes)).getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("mode, name, fmt", [("I;16", "g.png", "PNG"), ("I", "g.tif", "TIFF")])
def test_16_and_32_bit_grayscale_is_scaled_to_8_bits_by_its_range_not_clipped(tmp_path, mode, name, fmt):
    image = PIL.Image.new(mode, (4, 1))
    image.putdata([0, 256 * 64, 256 * 128, 65535])
    _save(tmp_path, image, name=name, format=fmt)
    assert PIL.Image.open(tmp_path / name).mode == mode
    product = row_checks.to_product(_row(tmp_path, image=name), COLUMNS, 10_000)
    decoded = PIL.Image.open(io.BytesIO(product.image_bytes))
    assert decoded.mode == "RGB"
    assert [decoded.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (64, 64, 64), (128, 128, 128), (255, 255, 255)]


def test_transparent_areas_of_palette_and_alpha_images_become_white(tmp_path):
    palette = PIL.Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    _save(tmp_path, palette, name="p.png", format="PNG", transparency=0)
    _save(tmp_path, PIL.Image.new("LA", (4, 4), (50, 0)), name="la.png", format="PNG")
    _save(tmp_path, PIL.Image.new("RGBA", (4, 4), (255, 0, 0, 0)), name="rgba.png", format="PNG")
    for name in ("p.png", "la.png", "rgba.png"):
        product = row_checks.to_product(_row(tmp_path, image=name), COLUMNS, 10_000)
        assert PIL.Image.open(io.BytesIO(product.image_bytes)).convert("RGB").getpixel((0, 0)) == (255, 255, 255), name


def test_a_path_that_is_not_a_regular_file_says_what_it_is(tmp_path):
    (tmp_path / "img.jpg").mkdir()
    result = row_checks.to_product(_row(tmp_path), COLUMNS, 10_000)
    assert result.reason == row_checks.MISSING_IMAGE
    assert result.message == f"image {tmp_path / 'img.jpg'} is not a regular file (a directory)"


def test_a_truncated_image_says_it_cannot_be_decoded(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    (tmp_path / "img.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    result = row_checks.to_product(_row(tmp_path), COLUMNS, 10_000)
    assert result.reason == row_checks.UNREADABLE_IMAGE
    assert result.message.startswith(f"image {tmp_path / 'img.jpg'} cannot be decoded: ")


def test_an_absent_image_file_is_named_in_its_message(tmp_path):
    result = row_checks.to_product(_row(tmp_path, image="absent.jpg"), COLUMNS, 10_000)
    assert result.reason == row_checks.MISSING_IMAGE
    assert result.message == f"image {tmp_path / 'absent.jpg'} does not exist"


def test_an_image_of_exactly_the_allowed_pixels_passes_one_more_does_not(tmp_path):
    _save(tmp_path, PIL.Image.new("RGB", (100, 100)))
    assert isinstance(row_checks.to_product(_row(tmp_path), COLUMNS, 10_000), row_checks.RawProduct)
    assert row_checks.to_product(_row(tmp_path), COLUMNS, 9_999).reason == row_checks.IMAGE_TOO_LARGE


def test_a_file_uri_is_checked_as_a_local_path(tmp_path):
    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    assert isinstance(row_checks.to_product(_row(tmp_path, image=f"file://{tmp_path}/img.jpg"), COLUMNS, 10_000),
                      row_checks.RawProduct)
    (tmp_path / "folder").mkdir()
    result = row_checks.to_product(_row(tmp_path, image=f"file://{tmp_path}/folder"), COLUMNS, 10_000)
    assert result.reason == row_checks.MISSING_IMAGE and result.message.endswith("is not a regular file (a directory)")


def test_a_product_becomes_the_raw_example_of_the_transform_graph():
    product = row_checks.RawProduct("c.csv", 3, "42é", "Blue Shirt", "Shirts", b"\xff\xd8")
    assert product.as_raw_example() == {"id": "42é".encode(), "title": b"Blue Shirt", "label": b"Shirts",
                                        "image_bytes": b"\xff\xd8"}


def test_a_quarantine_line_is_the_documented_record_with_its_text_as_written():
    """docs/preprocessing.md's quarantine record: users read these keys; non-ASCII stays readable."""
    record = row_checks.Quarantined("c.csv", 7, "42é", row_checks.MISSING_TITLE, "column 'title' is empty",
                                    {"title": "", "image": b"\x89PNG", "price": float("nan")})
    line = record.to_json()
    assert json.loads(line) == {"source": "c.csv", "row_number": 7, "id": "42é", "reason": "missing_title",
                                "message": "column 'title' is empty",
                                "fields": {"title": "", "image": "<4 bytes>", "price": "nan"}}
    assert "42é" in line  # not \\u00e9


@pytest.mark.parametrize("raw_id", ["", b"", None])
def test_a_row_without_an_id_is_quarantined_with_a_null_id(tmp_path, raw_id):
    fields = {"title": "Blue Shirt", "image": "img.jpg", "articleType": "Shirts"}
    if raw_id is not None:
        fields["id"] = raw_id
    record = row_checks.quarantine(CatalogRow(str(tmp_path / "products.csv"), 3, fields), COLUMNS,
                                   row_checks.MISSING_ID, "no id")
    assert record.id is None and json.loads(record.to_json())["id"] is None


def test_an_internal_error_names_the_innermost_frame_even_in_another_module(tmp_path, monkeypatch):
    """The frame that raised, where the bug is: here inside the json module, two calls below the check."""
    import traceback

    _save(tmp_path, PIL.Image.new("RGB", (8, 8)))
    monkeypatch.setattr(row_checks, "normalize_image", lambda *args: json.loads("{"))
    result = row_checks.to_product(_row(tmp_path), COLUMNS, 10_000)
    try:
        json.loads("{")
    except json.JSONDecodeError as e:
        innermost = traceback.extract_tb(e.__traceback__)[-1]
    assert innermost.filename != __file__
    assert result.reason == row_checks.INTERNAL_ERROR
    assert result.message.endswith(
        f"(at {os.path.basename(innermost.filename)}:{innermost.lineno} in {innermost.name})"), result.message
