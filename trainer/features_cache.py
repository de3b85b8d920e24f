"""The encoders' fixed parts, run once per product and cached as TFRecords (tune "frozen" and "top").

    transformed TFRecords → encoders (inference mode) → CACHE_DIR/{train,validation,eval}/part-*.tfrecord.gz
        ID_KEY, LABEL_ID_KEY, f_t (TEXT_FEATURES_KEY [H]), f_i (IMAGE_FEATURES_KEY [1280]) and, for
        tune "top", the inputs of the encoders' last blocks: TEXT_HIDDEN_KEY (BERT's hidden states of
        the title's tokens [n, H]) and IMAGE_MAP_KEY (EfficientNet's feature map [h, w, C]), float16
    then only the head (frozen) or the last blocks and the head (top) train, on batches of the cache.

On a CPU this is what makes the paper's whole ablation run in minutes (an encoder forward pass per
product once, instead of a forward and backward pass per product per epoch per model); on a GPU it
makes every model a fraction of the cost. One pass writes both forms. The cache streams: records are
written as their batch is encoded, in shards, and never held in memory. Its metadata (written last)
names the encoders, the data's fingerprint and the validation split it was built for; a cache that
differs in any of them is built again.

The evaluate stage's tfidf_image_poe reads only f_i of the splits it fits on: `write_poe_features`
copies those out of a finished cache into a directory of their own (the train stage's `poe_features`
artifact), bounded by the fit's cap, and `fit_poe` fits from it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from common import features
from common.splits import read_split_sizes
from trainer import data
from trainer.model import ModelConfig, encoder_model

METADATA_FILE = "cache.json"
RECORD_SUFFIX = ".tfrecord.gz"
RECORDS_PER_SHARD = 16384
# How a cache's products are ordered (`order_key`); a cache of another order is built again.
ORDER = "id-hash"
ORDERED_EXAMPLES_DIR = "ordered-examples"  # the examples in that order, while the cache is built
SPLITS = (features.TRAIN_SPLIT, features.VALIDATION_SPLIT, features.EVAL_SPLIT)
# The form of a cache's records a dataset reads: f_t and f_i (frozen heads), or the top blocks' inputs.
FROZEN_FORM, TOP_FORM = "frozen", "top"
_TEXT_LENGTH_KEY = "text_length"


def read_metadata(cache_dir: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(cache_dir, METADATA_FILE)) as f:
        return json.load(f)


def _reusable(cache_dir: str, wanted: dict, top: bool, splits) -> dict | None:
    """The metadata of a finished cache that serves `wanted` (and the top form, if asked), else None;
    says why an existing cache is not reused."""
    if not tf.io.gfile.exists(os.path.join(cache_dir, METADATA_FILE)):
        return None
    metadata = read_metadata(cache_dir)
    # A cache built for "top" also serves "frozen": compare the encoder fields asked for only. A
    # frozen cache records no top blocks: what it lacks is a form, said apart from other encoders.
    fields = [k for k in wanted["encoders"] if metadata["top"] or k in metadata["encoders"]]
    built = dict(metadata, encoders={k: metadata["encoders"].get(k) for k in fields})
    wanted = dict(wanted, encoders={k: wanted["encoders"][k] for k in fields})
    other = [key for key, value in wanted.items() if built.get(key) != value]
    lacks_top = top and not metadata["top"]
    if not other and not lacks_top and set(splits) <= set(metadata["split_sizes"]):
        return metadata
    reasons = ([f"it was built for other {', '.join(other)}"] if other else []) + (
        ["it holds no inputs of the top blocks (built for tune frozen)"] if lacks_top else [])
    print(f"[cache] rebuilding {cache_dir}: {'; '.join(reasons) or 'it was built for other splits'}", flush=True)
    return None


def _float_feature(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def serialized_examples(encoded: dict, labels: np.ndarray, ids: np.ndarray, masks: np.ndarray):
    """One serialized tf.Example per product of an encoded batch."""
    top = features.TEXT_HIDDEN_KEY in encoded
    for row, (label, product_id) in enumerate(zip(labels, ids)):
        feature = {
            features.ID_KEY: _bytes_feature(product_id),
            features.LABEL_ID_KEY: _int_feature(int(label)),
            features.TEXT_FEATURES_KEY: _float_feature(encoded[features.TEXT_FEATURES_KEY][row]),
            features.IMAGE_FEATURES_KEY: _float_feature(encoded[features.IMAGE_FEATURES_KEY][row]),
        }
        if top:
            length = int(masks[row].sum())  # only the title's tokens: padding changes nothing above
            feature[_TEXT_LENGTH_KEY] = _int_feature(length)
            feature[features.TEXT_HIDDEN_KEY] = _bytes_feature(
                encoded[features.TEXT_HIDDEN_KEY][row, :length].astype(np.float16).tobytes())
            feature[features.IMAGE_MAP_KEY] = _bytes_feature(
                encoded[features.IMAGE_MAP_KEY][row].astype(np.float16).tobytes())
        yield tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_frozen_records(batches, split_dir: str) -> int:
    """Writes ({TEXT_FEATURES_KEY, IMAGE_FEATURES_KEY}, labels, ids) batches as a frozen-form split."""
    return _write_split(((encoded, labels, ids, None, None) for encoded, labels, ids in batches), split_dir, "")[0]


def order_key(product_id: bytes) -> bytes:
    """Where a product goes in the cache: by a hash of its id (ties, never expected, by the id). The
    preprocess stage writes products in no fixed order; a cache in this order makes the training
    batches, hence the trained model, the same whatever order the examples came in."""
    return hashlib.blake2b(product_id, digest_size=8).digest() + product_id


def shard_of(product_id: bytes, shards: int) -> int:
    return int.from_bytes(order_key(product_id)[:8], "big") % shards


def shards_for(products: int) -> int:
    """How many hash shards a split of `products` is ordered in."""
    return max(1, math.ceil(products / RECORDS_PER_SHARD))


def _record_id(record: bytes) -> bytes:
    return tf.train.Example.FromString(record).features.feature[features.ID_KEY].bytes_list.value[0]


def _shard_dir(out_dir: str, shard: int) -> str:
    return os.path.join(out_dir, f"shard-{shard:05d}")


def _ordered_copy(source_dir: str, out_dir: str, split: str, shards: int) -> None:
    """The GZIP TFRecords of `source_dir` rewritten into `shards` examples directories under out_dir,
    each product in the one of a hash of its id (`shard_of`), each file sorted by `order_key` (one
    file held in memory)."""
    paths = [os.path.join(_shard_dir(out_dir, i), split, f"part{RECORD_SUFFIX}") for i in range(shards)]
    for path in paths:
        tf.io.gfile.makedirs(os.path.dirname(path))
    writers = [tf.io.TFRecordWriter(path, "GZIP") for path in paths]
    try:
        files = sorted(tf.io.gfile.glob(os.path.join(source_dir, "*")))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
            writers[shard_of(_record_id(record), shards)].write(record)
    finally:
        for writer in writers:
            writer.close()
    for path in paths:
        records = sorted((order_key(_record_id(r)), r)
                         for r in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator())
        with tf.io.TFRecordWriter(path, "GZIP") as writer:
            for _, record in records:
                writer.write(record)


def ordered_examples(examples_dir: str, out_dir: str) -> dict[str, list[str]]:
    """A copy of the examples (train and eval splits) in `order_key` order, in hash shards of about
    RECORDS_PER_SHARD products: what the encoders read, so that the cache holds the same products
    in the same order, encoded in the same batches (bit for bit the same features), whatever order
    the preprocess stage wrote them in. Returns each split's shards, in order: examples directories
    holding that split only. The Beam cache (trainer/beam_cache.py) writes the same shards."""
    sizes = read_split_sizes(examples_dir)
    shards = {split: shards_for(sizes[split]) for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT)}
    for split, count in shards.items():
        _ordered_copy(os.path.join(examples_dir, split), out_dir, split, count)
    return {split: [_shard_dir(out_dir, i) for i in range(count)] for split, count in shards.items()}


def shard_file(split_dir: str, shard: int) -> str:
    return os.path.join(split_dir, f"part-{shard:05d}{RECORD_SUFFIX}")


def _write_split(batches, split_dir: str, split: str) -> tuple[int, dict]:
    """Writes (encoded, labels, ids, input masks, hash shard) batches into split_dir: a file per hash
    shard, or where the shard is None a file per RECORDS_PER_SHARD records. Returns (records, the shapes
    of one product's outputs). Says how fast it goes every 30 s when `split` is named."""
    tf.io.gfile.makedirs(split_dir)
    count, shard, writer, shapes = 0, -1, None, {}
    started = last_report = time.monotonic()
    try:
        for encoded, labels, ids, masks, hash_shard in batches:
            encoded = {k: np.asarray(v) for k, v in encoded.items()}
            shapes = {k: list(v.shape[1:]) for k, v in encoded.items()}
            for example in serialized_examples(encoded, np.asarray(labels), np.asarray(ids), masks):
                wanted = hash_shard if hash_shard is not None else count // RECORDS_PER_SHARD
                if wanted != shard:
                    if writer is not None:
                        writer.close()
                    shard, writer = wanted, tf.io.TFRecordWriter(shard_file(split_dir, wanted), "GZIP")
                writer.write(example)
                count += 1
            if split and time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                print(f"[cache] {split}: {count} products, {count / (last_report - started):.1f} products/s", flush=True)
    finally:
        if writer is not None:
            writer.close()
    if split:
        print(f"[cache] {split}: {count} products in {time.monotonic() - started:.0f} s", flush=True)
    return count, shapes


def cache_features(
    *,
    examples_dir: str,
    transform_graph_dir: str,
    cache_dir: str,
    model_config: ModelConfig,
    top: bool = False,
    validation_fraction: float = 0.0,
    batch_size: int = 64,
    splits: tuple[str, ...] = SPLITS,
    data_fingerprint: str | None = None,
) -> dict:
    """Encodes every split once (the validation split is carved from train by `validation_fraction`;
    none if 0); returns the cache's metadata. `top` also keeps the inputs of the encoders' last blocks.

    Idempotent: a finished cache of the same encoders, data and splits is reused as it is (its
    metadata is written last, so a killed run leaves none and starts over).
    """
    splits, wanted, metadata = reusable_cache(examples_dir, transform_graph_dir, cache_dir, model_config, top,
                                              validation_fraction, splits, data_fingerprint)
    if metadata is not None:
        return metadata
    spec = tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec()
    encoders = encoder_model(model_config, top=top)
    encode = tf.function(lambda inputs: encoders(inputs, training=False))
    sizes, shapes = {}, {}
    ordered_dir = os.path.join(cache_dir, ORDERED_EXAMPLES_DIR)
    ordered = ordered_examples(examples_dir, ordered_dir)

    def encoded(split: str):
        """The split's batches, one hash shard after the other (validation: train's shards)."""
        source = features.TRAIN_SPLIT if split == features.VALIDATION_SPLIT else split
        for shard, shard_dir in enumerate(ordered[source]):
            dataset = data.make_dataset(shard_dir, split, spec, batch_size, model_config.image_size, shuffle=False,
                                        validation_fraction=validation_fraction, with_ids=True)
            for inputs, labels, ids in dataset:
                yield encode(inputs), labels, ids, inputs[features.INPUT_MASK_KEY].numpy(), shard

    for split in splits:
        sizes[split], split_shapes = _write_split(encoded(split), os.path.join(cache_dir, split), split)
        shapes = split_shapes or shapes
    tf.io.gfile.rmtree(ordered_dir)
    if not shapes:
        raise ValueError(f"{examples_dir} has no products to cache")
    return write_metadata(cache_dir, wanted, top, shapes, sizes)


def reusable_cache(examples_dir: str, transform_graph_dir: str, cache_dir: str, model_config: ModelConfig, top: bool,
                   validation_fraction: float, splits: tuple[str, ...], data_fingerprint: str | None):
    """(the splits to cache, the metadata a cache of them must have, the metadata of a finished cache in
    `cache_dir` that serves them or None); when None, whatever `cache_dir` held is gone."""
    if not validation_fraction:
        splits = tuple(s for s in splits if s != features.VALIDATION_SPLIT)
    wanted = {
        "encoders": model_config.encoder_fields(top),
        "data": data_fingerprint or data.fingerprint(examples_dir, transform_graph_dir),
        "validation_fraction": validation_fraction,
        "order": ORDER,
    }
    metadata = _reusable(cache_dir, wanted, top, splits)
    if metadata is None and tf.io.gfile.exists(cache_dir):
        tf.io.gfile.rmtree(cache_dir)
    return splits, wanted, metadata


def write_metadata(cache_dir: str, wanted: dict, top: bool, shapes: dict, sizes: dict) -> dict:
    """The finished cache's metadata (written last: a cache without it is unfinished); `shapes` are one
    product's output shapes, `sizes` the products of each split."""
    metadata = {
        **wanted,
        "top": top,
        "text_dim": shapes[features.TEXT_FEATURES_KEY][0],
        "image_dim": shapes[features.IMAGE_FEATURES_KEY][0],
        "split_sizes": sizes,
    }
    if top:
        metadata["image_map_shape"] = shapes[features.IMAGE_MAP_KEY]
    with tf.io.gfile.GFile(os.path.join(cache_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return metadata


def _spec(metadata: dict, form: str) -> dict:
    spec = {features.ID_KEY: tf.io.FixedLenFeature([], tf.string),
            features.LABEL_ID_KEY: tf.io.FixedLenFeature([], tf.int64)}
    if form == FROZEN_FORM:
        spec[features.TEXT_FEATURES_KEY] = tf.io.FixedLenFeature([metadata["text_dim"]], tf.float32)
        spec[features.IMAGE_FEATURES_KEY] = tf.io.FixedLenFeature([metadata["image_dim"]], tf.float32)
    elif form == TOP_FORM:
        if not metadata["top"]:
            raise ValueError("this feature cache holds no inputs of the encoders' top blocks: build it with top=True")
        spec[features.TEXT_HIDDEN_KEY] = tf.io.FixedLenFeature([], tf.string)
        spec[features.IMAGE_MAP_KEY] = tf.io.FixedLenFeature([], tf.string)
    else:
        raise ValueError(f"unknown cache form {form!r}")
    return spec


def make_feature_dataset(
    cache_dir: str,
    split: str,
    batch_size: int,
    shuffle: bool,
    repeat: bool = False,
    shuffle_buffer: int = 16384,
    seed: int | None = None,
    form: str = FROZEN_FORM,
    keep=None,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """(inputs, label_id[, id]) batches of the cache's split: inputs {TEXT_FEATURES_KEY,
    IMAGE_FEATURES_KEY} (frozen form) or {TEXT_HIDDEN_KEY [batch, n, H], INPUT_MASK_KEY [batch, n],
    IMAGE_MAP_KEY [batch, h, w, C]} (top form, titles padded to the batch's longest);
    `keep(ids) → bool [n]` selects products (cross-fitting folds)."""
    metadata = read_metadata(cache_dir)
    spec = _spec(metadata, form)
    records = data.select(
        data.read_records(os.path.join(cache_dir, split, f"*{RECORD_SUFFIX}"), shuffle, repeat, shuffle_buffer, seed),
        keep,
    )

    def outputs(inputs, parsed):
        if with_ids:
            return inputs, parsed[features.LABEL_ID_KEY], parsed[features.ID_KEY]
        return inputs, parsed[features.LABEL_ID_KEY]

    if form == FROZEN_FORM:
        def parse_batch(serialized):
            parsed = tf.io.parse_example(serialized, spec)
            return outputs({k: parsed[k] for k in (features.TEXT_FEATURES_KEY, features.IMAGE_FEATURES_KEY)}, parsed)

        batches = records.batch(batch_size).map(parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
        return batches.prefetch(tf.data.AUTOTUNE)

    hidden_size, map_shape = metadata["text_dim"], metadata["image_map_shape"]

    def parse_one(serialized):
        parsed = tf.io.parse_single_example(serialized, spec)
        hidden = tf.reshape(tf.io.decode_raw(parsed[features.TEXT_HIDDEN_KEY], tf.float16), [-1, hidden_size])
        inputs = {
            features.TEXT_HIDDEN_KEY: tf.cast(hidden, tf.float32),
            features.INPUT_MASK_KEY: tf.ones([tf.shape(hidden)[0]], tf.int32),
            features.IMAGE_MAP_KEY: tf.cast(
                tf.reshape(tf.io.decode_raw(parsed[features.IMAGE_MAP_KEY], tf.float16), map_shape), tf.float32),
        }
        return outputs(inputs, parsed)

    # Padded to the longest title of each batch (zeros, mask 0): BERT's blocks cost grows with it.
    return records.map(parse_one, num_parallel_calls=tf.data.AUTOTUNE).padded_batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def for_model(dataset: tf.data.Dataset, input_names) -> tf.data.Dataset:
    """Only the inputs a model takes (a text-only model has no image input)."""
    names = tuple(input_names)
    return dataset.map(lambda inputs, *rest: ({k: inputs[k] for k in names}, *rest))


def _cached_image_features(cache_dir: str, split: str):
    """(ids [batch], f_i [batch, image_dim]) batches of a cached split, in the cache's order."""
    for inputs, _, ids in make_feature_dataset(cache_dir, split, 1024, False, with_ids=True):
        yield ids.numpy(), inputs[features.IMAGE_FEATURES_KEY].numpy()


def _with_titles(image: dict, examples_dir: str, split: str, validation_fraction: float,
                 source: str) -> tuple[list[str], np.ndarray, np.ndarray, list[bytes]]:
    """(titles, f_i [n, image_dim], label ids [n], ids) of a split: titles from the transformed examples
    (with any extra text columns joined), f_i looked up by id in `image` (id → f_i, read from `source`,
    which errors name): the examples and the features hold their products in different orders."""
    from common import baselines

    source_dir, keep = data.split_predicate(split, validation_fraction)
    records = data.select(data.read_records(os.path.join(examples_dir, source_dir, "*"), shuffle=False), keep)
    spec = baselines.record_spec()
    titles, ids, labels = [], [], []
    for batch in records.batch(1024).map(lambda s: tf.io.parse_example(s, spec)):
        titles += baselines.decode_titles(batch[features.TITLE_KEY].numpy())
        ids += list(batch[features.ID_KEY].numpy())
        labels.append(batch[features.LABEL_ID_KEY].numpy())
    missing = [i.decode("utf-8", errors="replace") for i in ids if i not in image]
    if missing:
        raise ValueError(f"{source} has no image features for {len(missing)} {split} products (e.g. {missing[0]}): "
                         "it was built from other examples")
    return (titles, np.stack([image[i] for i in ids]) if ids else np.zeros([0, 1], np.float32),
            np.concatenate(labels) if labels else np.zeros([0], np.int64), ids)


def titles_and_image_features(cache_dir: str, examples_dir: str, split: str,
                              validation_fraction: float) -> tuple[list[str], np.ndarray, np.ndarray, list[bytes]]:
    """(titles, the frozen image encoder's f_i [n, image_dim], label ids [n], ids) of a split: what
    tfidf_image_poe reads, f_i from the feature cache of those examples (the benchmark's source)."""
    image = {}
    for ids, image_features in _cached_image_features(cache_dir, split):
        image.update(zip(ids, image_features))
    return _with_titles(image, examples_dir, split, validation_fraction, f"the feature cache {cache_dir}")


# The evaluate stage's tfidf_image_poe features (`write_poe_features`): POE_METADATA_FILE, and per
# split the fit reads an .npz of the products' ids (POE_IDS_KEY) and f_i (features.IMAGE_FEATURES_KEY).
POE_METADATA_FILE = "poe_features.json"
POE_IDS_KEY = "ids"
_POE_DTYPE = np.dtype("<f4")  # the cache's own precision: the fit sees the very features the cache holds


def poe_split_file(poe_dir: str, split: str) -> str:
    return os.path.join(poe_dir, f"{split}.npz")


def _past_cap(split_sizes: dict, num_classes: int) -> str | None:
    """Why the evaluate stage does not fit tfidf_image_poe on splits of these sizes, or None."""
    from common import poe

    train_products = split_sizes.get(features.TRAIN_SPLIT, 0) + split_sizes.get(features.VALIDATION_SPLIT, 0)
    if train_products * num_classes > poe.MAX_EVALUATE_COST:
        return (f"{train_products} training products × {num_classes} classes is past what the evaluate stage fits "
                f"({poe.MAX_EVALUATE_COST:,}); the benchmark reports it")
    return None


def _write_npz_member(archive: zipfile.ZipFile, name: str, shape: tuple, dtype: np.dtype, chunks) -> int:
    """Writes `chunks` (arrays of `dtype`, rows of shape[1:]) as the .npy member `name`, a chunk at a
    time (np.savez would want the whole array in memory); returns the rows written."""
    rows = 0
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_2_0(member, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": shape})
        for chunk in chunks:
            member.write(np.ascontiguousarray(chunk, dtype).tobytes())
            rows += len(chunk)
    return rows


def write_poe_features(cache_dir: str, transform_graph_dir: str, poe_dir: str) -> dict:
    """What the evaluate stage fits tfidf_image_poe from (fit_poe), out of a training run's finished
    feature cache, so that the stage is not sent the whole work directory (checkpoints, backups, the
    top form's inputs). Writes into `poe_dir`:
        per split the fit reads (train, validation if any, eval), poe_split_file: an .npz of the
            products' ids (POE_IDS_KEY, bytes [n]) and f_i (IMAGE_FEATURES_KEY, float32 [n, image_dim]),
            in the cache's order, written a batch at a time;
        POE_METADATA_FILE: what fit_poe checks (the data's fingerprint, the split sizes, the validation
            fraction) and the image dimension.
    When the fit would be refused (no finished cache, as tune full leaves; training products × classes
    past poe.MAX_EVALUATE_COST) only POE_METADATA_FILE is written, {"refused": why}, which the
    evaluate stage reports. Returns the metadata.

    Its size is bounded by the cap, whatever the checkpoints or the cache hold: at most
    MAX_EVALUATE_COST / classes training products (train and validation), 500,000 / 2 in the worst
    case, × image_dim × 4 bytes (5 KiB a product at EfficientNet's 1280: 1.3 GB at most, 64 MB at
    hm's 40 classes), plus the eval split's products × the same (a fraction of what the stage already
    reads: the eval examples with their photos), plus the ids.
    """
    from common.labels import num_classes

    tf.io.gfile.makedirs(poe_dir)
    classes = num_classes(tft.TFTransformOutput(transform_graph_dir))
    if not tf.io.gfile.exists(os.path.join(cache_dir, METADATA_FILE)):
        written = {"refused": f"the trainer left no finished feature cache in {cache_dir} (it caches the frozen "
                              "image features for tune frozen and top, not full)"}
    else:
        cache = read_metadata(cache_dir)
        sizes = {split: cache["split_sizes"][split] for split in SPLITS if split in cache["split_sizes"]}
        refused = _past_cap(sizes, classes)
        written = {"refused": refused} if refused else {
            "data": cache["data"], "split_sizes": sizes, "validation_fraction": cache["validation_fraction"],
            "image_dim": cache["image_dim"]}
    for split, size in written.get("split_sizes", {}).items():
        ids = []

        def image_features():
            for batch_ids, batch_features in _cached_image_features(cache_dir, split):
                ids.extend(batch_ids)
                yield batch_features

        # A local path (a KFP artifact's): zipfile seeks back into what it wrote, which a GFile does not.
        with zipfile.ZipFile(poe_split_file(poe_dir, split), "w") as archive:
            rows = _write_npz_member(archive, features.IMAGE_FEATURES_KEY, (size, written["image_dim"]), _POE_DTYPE,
                                     image_features())
            if rows != size:
                raise ValueError(f"the feature cache {cache_dir} holds {rows} {split} products, its metadata says "
                                 f"{size}: it is damaged; delete it and train again")
            id_array = np.array(ids, dtype=bytes)
            _write_npz_member(archive, POE_IDS_KEY, id_array.shape, id_array.dtype, [id_array])
    # Last, as the cache's own metadata: a directory without it was not finished.
    with tf.io.gfile.GFile(os.path.join(poe_dir, POE_METADATA_FILE), "w") as f:
        json.dump(written, f, indent=2)
    return written


def _read_poe_metadata(poe_dir: str) -> dict:
    """The metadata of a poe features directory; ValueError saying why the fit cannot use it."""
    path = os.path.join(poe_dir, POE_METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"{poe_dir} holds no {POE_METADATA_FILE}: it is not the poe features a train stage wrote, "
                         "or their writing did not finish")
    try:
        with tf.io.gfile.GFile(path) as f:
            metadata = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not the JSON a train stage writes ({e})") from None
    if isinstance(metadata, dict) and "refused" in metadata:
        raise ValueError(str(metadata["refused"]))
    fields = ("data", "split_sizes", "validation_fraction", "image_dim")
    if not isinstance(metadata, dict) or not all(k in metadata for k in fields):
        raise ValueError(f"{path} is not the metadata a train stage writes: it lacks one of {', '.join(fields)}")
    return metadata


def _read_poe_split(poe_dir: str, split: str, metadata: dict) -> dict:
    """{id: f_i} of one split of a poe features directory; ValueError naming the file when it is missing,
    truncated, corrupt (zip's CRC) or not of the shape its metadata says."""
    path = poe_split_file(poe_dir, split)
    size, dim = metadata["split_sizes"].get(split), metadata["image_dim"]
    if size is None:
        raise ValueError(f"{os.path.join(poe_dir, POE_METADATA_FILE)} names no {split} split, which the fit reads")
    try:
        with np.load(path) as archive:  # allow_pickle stays False: an array, never code
            ids, image = archive[POE_IDS_KEY], archive[features.IMAGE_FEATURES_KEY]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"the tfidf_image_poe features file {path} cannot be read (missing, truncated or "
                         f"corrupt: {type(e).__name__}: {e}); train again to rewrite it") from None
    if ids.dtype.kind != "S" or ids.shape != (size,) or image.dtype != _POE_DTYPE or image.shape != (size, dim):
        raise ValueError(f"the tfidf_image_poe features file {path} holds ids {ids.dtype} {ids.shape} and image "
                         f"features {image.dtype} {image.shape}; its metadata says {size} products × {dim} float32")
    return dict(zip(ids.tolist(), image))


def poe_split(poe_dir: str, examples_dir: str, split: str, metadata: dict | None = None) -> tuple:
    """(titles, image features, label ids, ids) of one split of a poe_features artifact, each product's
    title read from `examples_dir`; `metadata` as _read_poe_metadata gives it (read when None)."""
    metadata = _read_poe_metadata(poe_dir) if metadata is None else metadata
    return _with_titles(_read_poe_split(poe_dir, split, metadata), examples_dir, split,
                        metadata["validation_fraction"], f"the tfidf_image_poe features in {poe_dir}")


def fit_poe(poe_dir: str, examples_dir: str, transform_graph_dir: str, num_classes: int):
    """tfidf_image_poe (common/poe.py) fitted as the benchmark fits it, on the titles of `examples_dir` and
    the frozen image features a training run wrote from them into `poe_dir` (write_poe_features): its
    EvalPredictions; ValueError, saying why, when they cannot serve."""
    from common import poe

    metadata = _read_poe_metadata(poe_dir)
    if metadata["data"] != data.fingerprint(examples_dir, transform_graph_dir):
        raise ValueError(f"the tfidf_image_poe features in {poe_dir} were built from other examples or another "
                         "transform graph")
    fraction = metadata["validation_fraction"]
    refused = _past_cap(metadata["split_sizes"], num_classes)
    if refused:
        raise ValueError(refused)

    def split(name: str):
        return poe_split(poe_dir, examples_dir, name, metadata)

    train = split(features.TRAIN_SPLIT)[:3]
    validation = (split(features.VALIDATION_SPLIT)[:3] if fraction else
                  ([], np.zeros([0, train[1].shape[1]], np.float32), np.zeros([0], np.int64)))
    titles, images, _, ids = split(features.EVAL_SPLIT)
    return poe.fit_for_eval(train, validation, (titles, images, ids), num_classes)
