"""A GIF's frames, not only its logical screen, are held to the pixel limit before it is decoded
(trainer/gif_frames.py, in the exported graph's refuse_large_images): giflib reads every frame at the
size its descriptor declares, whatever the screen says."""
import pytest
import tensorflow as tf

from tests import hostile_images
from trainer import export, gif_frames

LIMIT = 20_000_000
frame_pixels = tf.function(gif_frames.gif_frame_pixels)  # as the exported graph runs it


def _refuse(images: list[bytes], limit: int = LIMIT):
    return tf.function(lambda x: export.refuse_large_images(x, limit))(tf.constant(images))


def test_real_gifs_are_summed_over_their_frames_and_decode():
    images = [hostile_images.small("GIF", 40), hostile_images.animated_gif(3), hostile_images.animated_gif(60, size=8)]
    assert frame_pixels(tf.constant(images)).numpy().tolist() == [1600, 3 * 400, 60 * 64]
    assert _refuse(images).numpy().tolist() == images
    for image in images:
        assert tf.io.decode_image(image, channels=3, expand_animations=False).shape[2] == 3


def test_other_formats_and_empty_bytes_have_no_frames():
    images = [hostile_images.small(fmt) for fmt in ("JPEG", "PNG", "BMP", "WEBP")] + [b"", b"GIF8"]
    assert frame_pixels(tf.constant(images)).numpy().tolist() == [0] * 6


def test_a_frame_larger_than_the_screen_is_refused_naming_the_instance():
    bomb = hostile_images.gif_frames([(8000, 8000)])  # 28 bytes; decoded, an 8000x8000x3 tensor
    assert bomb[6:10] == b"\x10\x00\x10\x00"  # the header declares 16x16
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="image_bytes of instance 1 is a GIF whose frames declare 64000000 pixels in all, "
                             "more than the 20000000 this model decodes"):
        _refuse([hostile_images.small("GIF"), bomb])


def test_many_frames_each_under_the_limit_are_refused_by_their_sum():
    frames = hostile_images.gif_frames([(2000, 2000)] * 6)  # 6 x 4 Mpx: each under 20 Mpx
    assert frame_pixels(tf.constant([frames])).numpy().tolist() == [24_000_000]
    with pytest.raises(tf.errors.InvalidArgumentError, match="instance 0 is a GIF whose frames declare 24000000"):
        _refuse([frames])
    assert _refuse([frames], 24_000_000).numpy().tolist() == [frames]


@pytest.mark.parametrize("name, gif", [
    ("too-many-frames", hostile_images.gif_frames([(1, 1)] * (gif_frames.MAX_GIF_BLOCKS + 1))),
    # Sub-blocks of sizes 1 and 2 in turn: each needs a step of its own.
    ("changing-sub-block-sizes", hostile_images.gif_frames([(16, 16)], data=b"\x02" + b"\x01a\x02ab" * 5000 + b"\x00")),
])
def test_a_gif_that_cannot_be_walked_within_the_bounds_is_refused(name, gif):
    assert frame_pixels(tf.constant([gif])).numpy().tolist() == [gif_frames.UNCHECKABLE]
    with pytest.raises(tf.errors.InvalidArgumentError, match="instance 0 is a GIF whose frames cannot be counted within"):
        _refuse([gif], limit=2**40)


def test_long_frame_data_of_one_sub_block_size_is_skipped_in_runs():
    # 4 MiB of 255-byte sub-blocks (some 16,000) in one frame: walked in a few steps, the frame after it counted.
    data = b"\x08" + (b"\xff" + b"\x01" * 255) * (2**14) + b"\x07abcdefg\x00"
    gif = hostile_images.gif_frames([(100, 100), (3000, 3000)], data=data)
    assert frame_pixels(tf.constant([gif])).numpy().tolist() == [10_000 + 9_000_000]


def test_a_truncated_gif_counts_the_frames_it_holds():
    gif = hostile_images.gif_frames([(100, 100), (200, 200)], trailer=b"")
    cut = [gif, gif[:-3], gif[:25], gif[:20]]  # the second's frame data, the first's, its descriptor cut short
    assert frame_pixels(tf.constant(cut)).numpy().tolist() == [50_000, 50_000, 10_000, 0]
