"""One catalog row → one validated raw example, or one quarantine record saying why not.

Everything here is a plain function of one row, so Beam can run it in parallel on any runner and
a test can call it directly.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import stat
import struct
import traceback
from typing import Mapping

import PIL.Image

from components.preprocess.catalog import CatalogColumns, CatalogRow, resolve_image_uri
from common import features
from common.features import DEFAULT_MAX_IMAGE_PIXELS

# Reason codes of quarantined rows: stable strings, counted in metrics.json.
MALFORMED_ROW = "malformed_row"
MISSING_ID = "missing_id"
MISSING_TITLE = "missing_title"
NOT_TEXT = "not_text"
INVALID_UTF8 = "invalid_utf8"
MISSING_LABEL = "missing_label"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
IMAGE_TOO_LARGE = "image_too_large"
DUPLICATE_ID = "duplicate_id"
# A check raised something it does not expect: a bug here or in a library, met on this row. The row
# is quarantined with the exception so that one such row costs that row, not the stage.
INTERNAL_ERROR = "internal_error"

# No product photo file is this large; reading stops here instead of loading, say, a 2 GB TIFF.
MAX_IMAGE_FILE_BYTES = 64 * 2**20
# Formats and modes that tf.io.decode_image reads to the same RGB pixels PIL sees; others are
# converted to RGB here, once, so the transform graph never meets CMYK, 16-bit or palette images.
_TF_NATIVE = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}


@dataclasses.dataclass(frozen=True)
class Quarantined:
    source: str
    row_number: int
    id: str | None
    reason: str
    message: str
    fields: Mapping[str, object]

    def to_json(self) -> str:
        return json.dumps(
            {
                "source": self.source,
                "row_number": self.row_number,
                "id": self.id,
                "reason": self.reason,
                "message": self.message,
                "fields": {k: _jsonable(v) for k, v in self.fields.items()},
            },
            ensure_ascii=False,
        )


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        # An embedded image (tf.Example catalogs): its size says enough, the bytes would bloat the file.
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        # Undecodable bytes were kept as surrogates; show them escaped rather than fail to write.
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # json.dumps would write NaN or Infinity, which strict JSON readers refuse
    if isinstance(value, (int, float, bool, type(None))):
        return value
    try:
        return str(value)  # a JSON list or object, shown as Python prints it
    except Exception as e:  # e.g. RecursionError: the quarantine line must be written whatever the row holds
        return f"<{type(value).__name__} that cannot be shown: {type(e).__name__}>"


@dataclasses.dataclass(frozen=True)
class RawProduct:
    """A validated product: the raw features of the transform graph, plus where it came from."""

    source: str
    row_number: int
    id: str
    title: str
    label: str
    image_bytes: bytes

    def as_raw_example(self) -> dict[str, bytes]:
        return {
            features.ID_KEY: self.id.encode("utf-8"),
            features.TITLE_KEY: self.title.encode("utf-8"),
            features.LABEL_KEY: self.label.encode("utf-8"),
            features.IMAGE_BYTES_KEY: self.image_bytes,
        }


class RowError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _text_field(row: CatalogRow, column: str) -> str:
    value = row.fields.get(column)
    if value is None:
        return ""
    if isinstance(value, bytes):  # a tf.Example bytes feature that did not decode as UTF-8
        raise RowError(INVALID_UTF8, f"column {column!r} is not valid UTF-8")
    # A JSON catalog may hold any JSON value: a number reads as text (an id often is one), but a
    # list, an object, a boolean, NaN or Infinity would become a text such as "['a', 'b']" or "True".
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise RowError(NOT_TEXT, f"column {column!r} holds {_json_kind(value)}, not text or a finite number")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(INVALID_UTF8, f"column {column!r} is not valid UTF-8") from None
    return text.strip()


def _json_kind(value: object) -> str:
    if isinstance(value, (bool, float)):
        return json.dumps(value)  # true, false, NaN, Infinity, -Infinity: as the catalog spells them
    return {list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def validate_row(row: CatalogRow, columns: CatalogColumns) -> tuple[str, str, str, str | bytes]:
    """Checks the text fields of a row; returns (id, title, label, image) or raises RowError.

    The image is a readable URI, or the encoded image itself when the catalog embeds it.
    """
    if row.parse_error:
        raise RowError(MALFORMED_ROW, row.parse_error)
    product_id = _text_field(row, columns.id)
    if not product_id:
        raise RowError(MISSING_ID, f"column {columns.id!r} is empty or missing")
    if not _text_field(row, columns.title):
        raise RowError(MISSING_TITLE, f"column {columns.title!r} is empty or whitespace")
    title = columns.text_separator.join(
        part for part in (_text_field(row, c) for c in (columns.title, *columns.extra_text)) if part
    )
    # TFT writes the vocabulary one label per line and silently drops labels holding a line break,
    # which would send every row of such a label to OOV: whitespace runs become one space instead.
    label = " ".join(_text_field(row, columns.label).split())
    if not label:
        raise RowError(MISSING_LABEL, f"column {columns.label!r} is empty or missing")
    embedded = row.fields.get(columns.image)
    if isinstance(embedded, bytes) and embedded:
        return product_id, title, label, embedded
    image = _text_field(row, columns.image)
    if not image:
        raise RowError(MISSING_IMAGE, f"column {columns.image!r} is empty or missing")
    return product_id, title, label, resolve_image_uri(row.source, image)


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if "://" in uri else uri


def read_image(uri: str) -> bytes:
    # tf.io.gfile reads every URI TensorFlow's filesystems know (gs://, s3:// with its plugin, ...).
    # Imported here so that the command line can check its arguments before TensorFlow loads.
    import tensorflow as tf

    path = _local_path(uri)
    if path is not None:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise RowError(MISSING_IMAGE, f"image {uri} does not exist") from None
        except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
            raise RowError(MISSING_IMAGE, f"image {uri} cannot be read: {e}") from None
        if not stat.S_ISREG(mode):
            # Opening a FIFO blocks the worker until something writes to it (forever), and a device such
            # as /dev/zero never ends: a photo is a regular file, anything else is not read at all.
            raise RowError(MISSING_IMAGE, f"image {uri} is not a regular file ({_file_kind(mode)})")
    try:
        with tf.io.gfile.GFile(uri, "rb") as f:
            data = f.read(MAX_IMAGE_FILE_BYTES + 1)
    except tf.errors.NotFoundError:
        raise RowError(MISSING_IMAGE, f"image {uri} does not exist") from None
    except tf.errors.OpError as e:
        raise RowError(MISSING_IMAGE, f"image {uri} cannot be read: {e.message}") from None
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise RowError(IMAGE_TOO_LARGE, f"image {uri} is larger than {MAX_IMAGE_FILE_BYTES} bytes")
    return data


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


# What Pillow raises on a file it cannot decode, besides OSError: its plugins' parsing errors.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


def normalize_image(data: bytes, uri: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bytes:
    """Checks that the bytes are a decodable image of a sane size; returns bytes TF decodes as RGB."""
    try:
        image = PIL.Image.open(io.BytesIO(data))  # reads the header only
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
        # Pillow's own limit (PIL.Image.MAX_IMAGE_PIXELS, a process-wide setting that any code may change,
        # None included) refuses the header inside open(), before the check below can run; the warning
        # is an exception too when warnings are errors. Nothing has been decoded.
        raise RowError(IMAGE_TOO_LARGE, f"image {uri} is over Pillow's limit by its header, not decoded: {e}") from None
    except (PIL.UnidentifiedImageError, *_DECODE_ERRORS) as e:
        raise RowError(UNREADABLE_IMAGE, f"image {uri} is not a readable image: {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise RowError(
            IMAGE_TOO_LARGE, f"image {uri} is {width}x{height} pixels, more than the {max_pixels} allowed"
        )
    try:
        image.load()  # a full decode: catches truncated and corrupt files
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
        # A GIF frame may extend the canvas past the header's size.
        raise RowError(IMAGE_TOO_LARGE, f"image {uri} grows past Pillow's limit while decoding: {e}") from None
    except _DECODE_ERRORS as e:
        raise RowError(UNREADABLE_IMAGE, f"image {uri} cannot be decoded: {e}") from None
    if (image.format, image.mode) in _TF_NATIVE:
        return data
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Product photos are shown on white; compositing keeps transparent areas from turning black.
        rgba = image.convert("RGBA")
        rgb = PIL.Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits by its own range rather than clipping at 255.
        rgb = image.point(lambda v: v / 256).convert("L").convert("RGB")
    else:
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="PNG")  # lossless: the transform graph re-encodes after resizing anyway
    return out.getvalue()


def check_text(row: CatalogRow, columns: CatalogColumns) -> str | Quarantined:
    """The row's id if its text fields pass `validate_row`, else its quarantine record; never raises."""
    try:
        product_id, _, _, _ = validate_row(row, columns)
    except RowError as e:
        return quarantine(row, columns, e.reason, e.message)
    except Exception as e:
        return internal_error(row, columns, e)
    return product_id


def to_product(row: CatalogRow, columns: CatalogColumns, max_pixels: int) -> RawProduct | Quarantined:
    """The validated product, or the row's quarantine record; never raises."""
    try:
        product_id, title, label, image = validate_row(row, columns)
        if isinstance(image, bytes):
            image_bytes = normalize_image(image, f"embedded in column {columns.image!r}", max_pixels)
        else:
            image_bytes = normalize_image(read_image(image), image, max_pixels)
    except RowError as e:
        return quarantine(row, columns, e.reason, e.message)
    except Exception as e:
        return internal_error(row, columns, e)
    return RawProduct(row.source, row.row_number, product_id, title, label, image_bytes)


def internal_error(row: CatalogRow, columns: CatalogColumns, error: Exception) -> Quarantined:
    """The quarantine record of a row on which a check raised `error`, an exception it does not expect."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    # The whole traceback goes to the worker's log, for whoever fixes the bug; the row says what and where.
    logging.warning("%s row %d: %s raised on this row, quarantined", row.source, row.row_number,
                    type(error).__name__, exc_info=error)
    return quarantine(row, columns, INTERNAL_ERROR, f"{type(error).__name__}: {error}{where}")


def quarantine(row: CatalogRow, columns: CatalogColumns, reason: str, message: str) -> Quarantined:
    raw_id = row.fields.get(columns.id)
    return Quarantined(
        row.source, row.row_number, None if raw_id in (None, "", b"") else str(_jsonable(raw_id)), reason, message,
        row.fields,
    )
