"""Tiny image files whose headers declare huge pixel counts (decompression bombs), one per format
the serving graph decodes, built in a few bytes so tests send them without the cost of a real bomb.
Each is a valid header of its format; what follows the header is whatever the format needs to be
recognised, not pixel data."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def webp_lossy(width: int = 16383, height: int = 16383) -> bytes:
    """A VP8 (lossy) WebP: key frame tag, start code, 14-bit width and height."""
    frame = b"\x30\x01\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF) + b"\x00" * 8
    chunk = b"VP8 " + struct.pack("<I", len(frame)) + frame
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_lossless(width: int = 16384, height: int = 16384) -> bytes:
    """A VP8L (lossless) WebP: signature byte, then width-1 and height-1 in 14 bits each."""
    bits = (width - 1) | ((height - 1) << 14)
    frame = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 8
    chunk = b"VP8L" + struct.pack("<I", len(frame)) + frame
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def webp_extended(width: int = 1 << 24, height: int = 1 << 24) -> bytes:
    """A VP8X (extended) WebP: canvas width-1 and height-1 in 24 bits each."""
    payload = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def png(width: int = 20000, height: int = 20000, rows: int = 0) -> bytes:
    """A PNG declaring width x height (8-bit RGB); `rows` rows of black pixel data follow (0: none,
    a truncated image), compressed, so a whole image of a few megapixels is a few kilobytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(rows)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def gif(width: int = 65535, height: int = 65535) -> bytes:
    """A GIF89a whose logical screen is width x height, with one 1x1 frame."""
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b"\x3b"


# One frame's LZW data: a clear code and the end code (3-bit codes for a 2-bit code size), one sub-block.
_EMPTY_FRAME_DATA = b"\x02\x01\x2c\x00"


def gif_frames(frames: list[tuple[int, int]], screen: tuple[int, int] = (16, 16), data: bytes = _EMPTY_FRAME_DATA,
               trailer: bytes = b"\x3b") -> bytes:
    """A GIF89a of a `screen` logical screen whose frames' descriptors declare the (width, height) of
    `frames`, each followed by `data` (a code size byte and sub-blocks): no pixels, whatever they declare."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)
    return head + b"".join(b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0) + data for w, h in frames) + trailer


def animated_gif(frames: int, size: int = 20) -> bytes:
    """A real animated GIF (PIL's): `frames` frames of size x size, each of other colours (each has its
    own local color table), a loop extension and one graphic control extension per frame."""
    images = [Image.new("RGB", (size, size), (40 * i % 256, 90, 255 - 40 * i % 256)) for i in range(frames)]
    for i, image in enumerate(images):
        image.putpixel((i % size, 0), (255, 255, 255))  # no two frames alike: PIL would merge them
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=50, loop=0)
    return buffer.getvalue()


def bmp(width: int = 100000, height: int = -100000) -> bytes:
    """A 24-bit BMP (BITMAPINFOHEADER); a negative height is a top-down image of |height| rows."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 4, 0, 0, 14 + len(info)) + info + b"\x00" * 4


def jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def small(fmt: str, size: int = 16) -> bytes:
    """A real size x size image in `fmt` (PIL's format name), for what must still be accepted."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (30, 120, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


# Every format the graph decodes, each declaring more than 20 Mpx: (name, bytes, declared width, height).
BOMBS = [
    ("webp-lossy", webp_lossy(), 16383, 16383),
    ("webp-lossless", webp_lossless(), 16384, 16384),
    ("webp-extended", webp_extended(), 1 << 24, 1 << 24),
    ("png", png(), 20000, 20000),
    ("gif", gif(), 65535, 65535),
    ("bmp", bmp(), 100000, 100000),
    ("jpeg", jpeg(), 60000, 60000),
]
