"""The pixels a GIF's frames declare, read from its block structure with core TF ops, before decoding.

A GIF's logical screen (its header) says nothing of its frames: giflib reads every frame of the file
into memory at the size its descriptor declares before TensorFlow sees the first, and tf.io.decode_image
answers a frame larger than the screen at the frame's size. Measured (TF 2.x, one process): a 48 KB GIF
with a 16x16 screen and one 8000x8000 frame decodes to 8000x8000x3 in 2.3 s, +249 MB; 50 frames of
2000x2000 in a 196 KB file take 6.7 s and +207 MB to give one frame. So the pixels of all frames
are summed here, and the exported graph refuses a GIF whose sum is over its limit.

Blocks are walked one at a time, and so is each block's data, a chain of length-prefixed
sub-blocks; but a run of sub-blocks of one size (every encoder writes 255-byte ones) is skipped
in one step of a few thousand blocks. A product photo's GIF is checked in a few steps per frame;
a GIF needing more than MAX_GIF_STEPS steps (sub-blocks of changing sizes) or more than
MAX_GIF_BLOCKS frames and extensions is refused, not guessed: the walk's cost is bounded whatever
the file (docs/serving.md has the figures).
"""
from __future__ import annotations

import tensorflow as tf

# Frames and extensions a GIF may have (an animated one has two blocks per frame): a product photo has 1-3.
MAX_GIF_BLOCKS = 128
# Steps of the walk: a block, or a run of up to _RUN sub-blocks of one size, per step.
MAX_GIF_STEPS = 4 * MAX_GIF_BLOCKS + 16
_RUN = 4096
# The frame pixels of a GIF that cannot be walked within those bounds: refused for any limit.
UNCHECKABLE = -1

_EXTENSION, _IMAGE = 0x21, 0x2C


def _color_table(packed: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.bitwise.bitwise_and(packed, 0x80) > 0, 3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(packed, 7)), 0)


def _frame_pixels(gif: tf.Tensor, max_blocks: int, max_steps: int) -> tf.Tensor:
    """int64: the pixels all frames of one GIF declare; UNCHECKABLE past the bounds. Stops at the
    trailer, at a block type giflib refuses, or at the end of a truncated file (what follows is never
    decoded)."""
    data = tf.cast(tf.io.decode_raw(gif, tf.uint8), tf.int32)
    n = tf.shape(data)[0]
    padded = tf.concat([data, [-1]], 0)  # reads past the end give -1: no size, no block type
    run = tf.range(_RUN, dtype=tf.int32)

    def byte(p):
        return padded[tf.minimum(p, n)]

    def step(steps, pos, in_chain, pixels, blocks, done):
        tag = byte(pos)
        # In a chain: pos is a sub-block's size byte; 0 ends the chain, a run of equal sizes is skipped.
        same = tf.gather(padded, tf.minimum(pos + (tag + 1) * run, n)) != tag
        skipped = tf.argmax(tf.cast(tf.concat([same, [True]], 0), tf.int32), output_type=tf.int32)
        chain_pos = tf.where(tag == 0, pos + 1, pos + skipped * (tag + 1))
        # At a block: an image descriptor (its pixels, then its color table and LZW code size byte
        # before its chain) or an extension (a label, then its chain); anything else ends the walk.
        is_image, is_extension = tf.equal(tag, _IMAGE), tf.equal(tag, _EXTENSION)
        size = tf.cast(byte(pos + 5) + 256 * byte(pos + 6), tf.int64) * tf.cast(byte(pos + 7) + 256 * byte(pos + 8), tf.int64)
        size = tf.where(pos + 9 < n, size, 0)  # a descriptor cut short is refused by giflib before any frame
        block_pos = tf.where(is_image, pos + 11 + _color_table(byte(pos + 9)), pos + 2)
        ended = tf.where(in_chain, tag < 0, ~(is_image | is_extension))
        return (
            steps + 1,
            tf.where(in_chain, chain_pos, block_pos),
            ~in_chain | (tag != 0),
            pixels + tf.where(~in_chain & is_image, size, 0),
            blocks + tf.where(~in_chain & (is_image | is_extension), 1, 0),
            ended | (pos >= n),
        )

    start = 13 + _color_table(byte(10))
    state = (0, start, tf.constant(False), tf.constant(0, tf.int64), 0, tf.constant(False))
    _, _, _, pixels, blocks, done = tf.while_loop(
        lambda steps, pos, in_chain, pixels, blocks, done: ~done & (steps < max_steps) & (blocks <= max_blocks),
        step, state,
    )
    return tf.where(done & (blocks <= max_blocks), pixels, UNCHECKABLE)


def gif_frame_pixels(image_bytes: tf.Tensor, max_blocks: int = MAX_GIF_BLOCKS,
                     max_steps: int = MAX_GIF_STEPS) -> tf.Tensor:
    """int64 [batch]: for each GIF of `image_bytes`, the pixels of all its frames as their descriptors
    declare them (UNCHECKABLE for a GIF not walked within the bounds); 0 for other images."""
    is_gif = tf.equal(tf.strings.substr(image_bytes, 0, 4), b"GIF8")
    return tf.map_fn(
        lambda args: tf.cond(args[1], lambda: _frame_pixels(args[0], max_blocks, max_steps), lambda: tf.constant(0, tf.int64)),
        (image_bytes, is_gif), fn_output_signature=tf.TensorSpec([], tf.int64),
    )
