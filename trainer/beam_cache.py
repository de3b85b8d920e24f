"""The feature cache as a Beam job: what trainer/features_cache.py writes in one process, written by
Beam's workers, so that encoding the catalog spreads over machines (and GPUs) like the other Beam stages.

    transformed TFRecords (train, eval), listed by the launcher: (split, file, piece, pieces)
      → each piece read (every pieces-th record of the file) into batches of serialized records
      → RunInference(EncoderHandler, batches as they come): the frozen encoders (trainer.model.encoder_model,
        inference mode), loaded once per worker process and shared by its threads; each product →
        (cache split, hash shard, order key, its cache record) (the validation split carved from train by
        the same hash of the id as the trainer's)
      → grouped by (split, hash shard) → each shard sorted by features_cache.order_key
        → CACHE_DIR/<split>/part-<shard>.tfrecord.gz, and its records and output shapes → a counts file
      → cache.json from the counts files, written last by the launcher

The job uses nothing Beam's DaskRunner (2.77) cannot run (tests/test_dask_runner.py names what it
cannot): no `beam.io.Read` (the files are listed by the launcher and read in a ParDo), no BatchElements
(whose last batch of a bundle, emitted in finish_bundle, that runner drops: the batches are made while
reading), no tagged outputs, no side inputs, and one terminal step that writes everything (that runner
computes only the last step of a graph). The DaskRunner spreads work only over the partitions of the
first step (`--dask_npartitions`; a Reshuffle is nothing there), so `pieces_per_file` makes more read
tasks than files: each piece decompresses its whole file and keeps its share of the records.

The files (one per hash shard of the split the products come from, each sorted by order key), their
records and the metadata are features_cache's, so `tune frozen` / `top`, the decision models and
`make_feature_dataset` read the cache unchanged, and a model trained from it is the one trained from
the in-process cache, but for float rounding: the encoders see other batches.

A shard is sorted in one worker's memory: RECORDS_PER_SHARD records, about 16,384 × 14.8 KB = 240 MB in
the top form. The pipeline is built inside `cache_features_beam`, never at import time.

    python -m trainer.beam_cache --examples E --transform-graph T --cache-dir C [--top] \\
        [--validation-fraction 0.1] [--pieces-per-file 1] [--bert-handle …] [Beam's options, e.g. --runner=DataflowRunner …]
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterable, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from common import beam as beam_job  # noqa: E402
from common import features  # noqa: E402

_COUNTS_PREFIX = "cache-counts"
_NAMESPACE = "hanet_feature_cache"


class _Encoders:
    """What a worker loads: the encoders and what reading a batch of serialized records needs."""

    def __init__(self, model_config, top: bool, transform_graph_dir: str):
        import tensorflow as tf
        import tensorflow_transform as tft

        from trainer import data
        from trainer.model import encoder_model

        self.spec = data.model_feature_spec(tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec())
        self.image_size = model_config.image_size
        model = encoder_model(model_config, top=top)
        self.encode = tf.function(lambda inputs: model(inputs, training=False))

    def __call__(self, serialized: Sequence[bytes]) -> tuple[dict, dict]:
        import tensorflow as tf

        from trainer import data

        parsed = tf.io.parse_example(tf.constant(list(serialized)), self.spec)
        inputs = data.model_inputs(parsed, self.image_size)
        return parsed, {k: v.numpy() for k, v in self.encode(inputs).items()} | {
            features.INPUT_MASK_KEY: inputs[features.INPUT_MASK_KEY].numpy()}


def _encoder_inference(encoders: _Encoders, batch: Sequence[tuple[str, bytes]], shards: dict[str, int],
                       validation_fraction: float) -> list[tuple[tuple[str, int], tuple[bytes, bytes, dict]]]:
    """A batch of (source split, serialized transformed record) → per product ((cache split, shard),
    (order key, cache record, one product's output shapes))."""
    from trainer import data, features_cache

    parsed, encoded = encoders([record for _, record in batch])
    masks = encoded.pop(features.INPUT_MASK_KEY)
    ids, labels = parsed[features.ID_KEY].numpy(), parsed[features.LABEL_ID_KEY].numpy()
    validation = (data.in_validation(parsed[features.ID_KEY], validation_fraction).numpy() if validation_fraction
                  else np.zeros(len(ids), bool))
    shapes = {k: list(v.shape[1:]) for k, v in encoded.items()}
    results = []
    records = features_cache.serialized_examples(encoded, labels, ids, masks)
    for (source, _), product_id, in_validation, record in zip(batch, ids, validation, records):
        split = features.VALIDATION_SPLIT if source == features.TRAIN_SPLIT and in_validation else source
        # The shards are those of the split the products come from, as features_cache orders them.
        shard = features_cache.shard_of(product_id, shards[source])
        results.append(((split, shard), (features_cache.order_key(product_id), record, shapes)))
    return results


def _handler(model_config, top: bool, transform_graph_dir: str, shards: dict[str, int], validation_fraction: float,
             batch_size: int, large_model: bool):
    """RunInference's model handler over the frozen encoders: batching (`batch_size` records a call) and
    sharing (one copy per worker process, shared by its threads; with `large_model`, one per machine)
    are Beam's. Made here so that this module imports without Beam."""
    from apache_beam.ml.inference.base import ModelHandler

    class EncoderHandler(ModelHandler):
        def __init__(self):
            super().__init__(min_batch_size=batch_size, max_batch_size=batch_size, large_model=large_model)

        def load_model(self) -> _Encoders:
            return _Encoders(model_config, top, transform_graph_dir)

        def run_inference(self, batch, model, inference_args: dict[str, Any] | None = None):
            return _encoder_inference(model, batch, shards, validation_fraction)

        def get_num_bytes(self, batch) -> int:
            return sum(len(record) for _, record in batch)

        def get_metrics_namespace(self) -> str:
            return _NAMESPACE

    return EncoderHandler()


def _read_batches(piece: tuple[str, str, int, int], batch_size: int) -> Iterable[list[tuple[str, bytes]]]:
    """(source split, file, piece, pieces) → batches of (source split, serialized record): every
    pieces-th record of the file from the piece-th, `batch_size` a batch, the last one shorter."""
    import tensorflow as tf

    source, path, index, pieces = piece
    batch = []
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP").shard(pieces, index).as_numpy_iterator():
        batch.append((source, record))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_shard(cache_dir: str, counts_dir: str, key: tuple[str, int], products: Iterable[tuple[bytes, bytes, dict]]) -> str:
    """Writes one hash shard of a split, sorted by order key, and its counts (a JSON file named after the
    shard, so that a retried shard overwrites its own); returns the counts."""
    import tensorflow as tf

    from trainer import features_cache

    split, shard = key
    products = sorted(products, key=lambda product: product[0])
    split_dir = os.path.join(cache_dir, split)
    tf.io.gfile.makedirs(split_dir)
    path = features_cache.shard_file(split_dir, shard)
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for _, record, _ in products:
            writer.write(record)
    counts = json.dumps({"split": split, "records": len(products), "shapes": products[0][2]})
    with tf.io.gfile.GFile(os.path.join(counts_dir, f"{_COUNTS_PREFIX}-{split}-{shard:05d}.json"), "w") as f:
        f.write(counts)
    return counts


def cache_features_beam(
    *,
    examples_dir: str,
    transform_graph_dir: str,
    cache_dir: str,
    model_config,
    top: bool = False,
    validation_fraction: float = 0.0,
    batch_size: int = 64,
    splits: tuple[str, ...] | None = None,
    data_fingerprint: str | None = None,
    beam_args: Sequence[str] = (),
    large_model: bool = False,
    temp_dir: str | None = None,
    pieces_per_file: int = 1,
) -> dict:
    """features_cache.cache_features, run as a Beam job (`beam_args`: the runner and its options, as the
    preprocess stage takes them; the DirectRunner by default, a thread per core sharing one model).
    Returns the cache's metadata; a finished cache of the same encoders, data and splits is reused.
    `pieces_per_file`: read tasks per examples file (see the module's docstring: for the DaskRunner)."""
    import apache_beam as beam
    import tensorflow as tf
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.ml.inference.base import RunInference

    from common.splits import SPLIT_SIZES_FILE, read_split_sizes
    from trainer import features_cache

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if pieces_per_file < 1:
        raise ValueError(f"pieces_per_file must be at least 1, got {pieces_per_file}")
    for directory, holds in ((examples_dir, SPLIT_SIZES_FILE), (transform_graph_dir, "transformed_metadata")):
        if not tf.io.gfile.exists(os.path.join(directory, holds)):
            raise ValueError(f"{directory} holds no {holds}: not an output of the preprocess stage")
    splits, wanted, metadata = features_cache.reusable_cache(
        examples_dir, transform_graph_dir, cache_dir, model_config, top, validation_fraction,
        splits or features_cache.SPLITS, data_fingerprint)
    if metadata is not None:
        return metadata
    sizes = read_split_sizes(examples_dir)
    sources = sorted({features.TRAIN_SPLIT if s == features.VALIDATION_SPLIT else s for s in splits})
    shards = {source: features_cache.shards_for(sizes[source]) for source in sources}
    options = beam_job.beam_options(beam_args, beam_job.MULTI_THREADING)
    temp_dir = beam_job.scratch_dir(options, temp_dir, "feature-cache")
    handler = _handler(model_config, top, transform_graph_dir, shards, validation_fraction, batch_size, large_model)
    files = [(source, path) for source in sources for path in sorted(tf.io.gfile.glob(os.path.join(examples_dir, source, "*")))]
    # Piece by piece over the files: the DaskRunner cuts this list into consecutive partitions, and with as
    # many pieces a file as partitions each partition gets a share of every file.
    pieces = [(source, path, index, pieces_per_file) for index in range(pieces_per_file) for source, path in files]
    tf.io.gfile.makedirs(temp_dir)
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Pieces" >> beam.Create(pieces)
            | "SpreadPieces" >> beam.Reshuffle()
            | "Read" >> beam.FlatMap(_read_batches, batch_size)
            # The batches of one file go to several workers (the runners that fuse steps would
            # otherwise encode a file where it was read).
            | "SpreadBatches" >> beam.Reshuffle()
            | "Encode" >> RunInference(handler.with_no_batching())
            | "OnlyAsked" >> beam.Filter(lambda product: product[0][0] in splits)
            | "ByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.MapTuple(lambda key, products: _write_shard(cache_dir, temp_dir, key, products))
        )
    split_sizes, shapes = {split: 0 for split in splits}, {}
    for path in tf.io.gfile.glob(FileSystems.join(temp_dir, f"{_COUNTS_PREFIX}-*.json")):
        with tf.io.gfile.GFile(path) as f:
            counts = json.load(f)
            split_sizes[counts["split"]] += counts["records"]
            shapes = counts["shapes"]
    beam_job.delete_dir(temp_dir)
    for split in splits:  # a split without products is an empty directory, as in the in-process cache
        tf.io.gfile.makedirs(os.path.join(cache_dir, split))
    if not shapes:
        raise ValueError(f"{examples_dir} has no products to cache")
    return features_cache.write_metadata(cache_dir, wanted, top, shapes, split_sizes)


def main(argv: Sequence[str] | None = None) -> None:
    from trainer.model import ModelConfig

    parser = argparse.ArgumentParser(
        prog="python -m trainer.beam_cache", description="The feature cache of tune frozen / top as a Beam job; "
        "options it does not know go to Beam (--runner=DataflowRunner, --direct_num_workers=4, ...).")
    parser.add_argument("--examples", required=True, help="the preprocess stage's examples directory")
    parser.add_argument("--transform-graph", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--top", action="store_true", help="also the inputs of the encoders' top blocks (tune top)")
    parser.add_argument("--validation-fraction", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--large-model", action="store_true", help="one encoder copy per machine")
    parser.add_argument("--pieces-per-file", type=int, default=1,
                        help="read tasks per examples file (the DaskRunner spreads only these: with --dask_npartitions)")
    defaults = ModelConfig()
    encoder_fields = defaults.encoder_fields(top=True)
    for name, default in encoder_fields.items():
        # image_weights' None default (random initialisation) is "" on the command line.
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default) if default is not None else str,
                            default=default, help=f"default: {default!r}")
    args, beam_args = parser.parse_known_args(argv)
    config = ModelConfig(**{name: getattr(args, name) for name in encoder_fields} | {
        "image_weights": args.image_weights or None})
    try:
        metadata = cache_features_beam(
            examples_dir=args.examples, transform_graph_dir=args.transform_graph, cache_dir=args.cache_dir,
            model_config=config, top=args.top, validation_fraction=args.validation_fraction,
            batch_size=args.batch_size, beam_args=beam_args, large_model=args.large_model,
            pieces_per_file=args.pieces_per_file)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(metadata["split_sizes"]))


if __name__ == "__main__":
    main()
