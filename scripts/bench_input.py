"""Is the input pipeline ever the bottleneck? Step times fed from TFRecords vs from cached tensors.

Usage: .venv/bin/python scripts/bench_input.py --examples DIR --transform-graph DIR [--work-dir DIR]
           [--fusion hanet] [--batch-size 32] [--steps 20] [--bert-handle H] [--image-weights W] [--image-variant V]

DIRs are a transform stage's outputs (e.g. a run-local's pipeline_root/.../preprocess/examples and
transform_graph). For the end-to-end model and for a head on cached features (the frozen-encoder
mode), it prints, per batch: the input pipeline alone, a training step fed by tf.data from the
TFRecords, and a training step fed from the same batches held in memory. If the TFRecord-fed step is
no slower than the in-memory one, input is not the bottleneck.
"""
import argparse
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402

from common import features  # noqa: E402
from trainer import data, features_cache, recipe  # noqa: E402
from trainer.model import ModelConfig, build_model, head_model, top_model  # noqa: E402
from common.labels import num_classes  # noqa: E402
from common.splits import read_split_sizes  # noqa: E402


class StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def input_ms_per_batch(dataset: tf.data.Dataset, batches: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # warm-up: file opening, autotuning
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 1000 * (time.perf_counter() - start) / batches


def step_ms(model_fn, dataset: tf.data.Dataset, steps: int) -> float:
    """Median time of a training step (the first `steps` trace and warm up, then `steps` are timed)."""
    model = model_fn()
    model.compile(optimizer=recipe.PAPER_FUSION.make_optimizer(steps), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    times = StepTimes()
    model.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[times], verbose=0)
    return 1000 * statistics.median(times.times[steps:])


def in_memory(dataset: tf.data.Dataset, batches: int) -> tf.data.Dataset:
    """The first `batches` batches as tensors in memory, repeated: a feed that costs nothing."""
    stacked = tf.nest.map_structure(lambda *xs: tf.stack(xs), *dataset.take(batches))
    return tf.data.Dataset.from_tensor_slices(stacked).repeat()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", required=True)
    parser.add_argument("--transform-graph", required=True)
    parser.add_argument("--work-dir", default="", help="where the feature cache goes (default: a temp dir)")
    parser.add_argument("--fusion", default="hanet")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bert-handle", default=str(REPO_ROOT / "pretrained" / "bert_minilm_l6"))
    parser.add_argument("--image-weights", default=str(REPO_ROOT / "pretrained" / "efficientnet_lite0_imagenet.h5"))
    parser.add_argument("--image-variant", default="lite0")
    parser.add_argument("--text-pooling", default="mean", help="pooled (BERT-base) or mean (the MiniLM stand-in)")
    args = parser.parse_args()

    tft_output = tft.TFTransformOutput(args.transform_graph)
    spec = tft_output.transformed_feature_spec()
    pattern = os.path.join(args.examples, features.TRAIN_SPLIT, "*")
    first = next(iter(tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")))
    image_size = int(tf.io.decode_jpeg(tf.io.parse_single_example(first, spec)[features.IMAGE_KEY]).shape[0])
    config = ModelConfig(fusion=args.fusion, bert_handle=args.bert_handle, image_weights=args.image_weights or None,
                         text_pooling=args.text_pooling,
                         image_variant=args.image_variant, image_size=image_size,
                         max_seq_length=spec[features.INPUT_WORD_IDS_KEY].shape[0])
    classes = num_classes(tft_output)
    train_size = read_split_sizes(args.examples)[features.TRAIN_SPLIT]
    batches = min(args.steps, math.ceil(train_size / args.batch_size))
    print(f"{train_size} training products, batch {args.batch_size}, {image_size}px, {config.max_seq_length} tokens, "
          f"{args.fusion}, {os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))}")

    records = data.make_dataset(args.examples, features.TRAIN_SPLIT, spec, args.batch_size, image_size, shuffle=True,
                                repeat=True)
    print(f"end to end: input pipeline alone      {input_ms_per_batch(records, args.steps):8.1f} ms/batch")
    print(f"end to end: step fed from TFRecords   {step_ms(lambda: build_model(config, classes), records, args.steps):8.1f} ms")
    memory = in_memory(records, batches)
    print(f"end to end: step fed from memory      {step_ms(lambda: build_model(config, classes), memory, args.steps):8.1f} ms")

    cache_dir = os.path.join(args.work_dir or tempfile.mkdtemp(), "feature_cache")
    start = time.perf_counter()
    metadata = features_cache.cache_features(examples_dir=args.examples, transform_graph_dir=args.transform_graph,
                                             cache_dir=cache_dir, model_config=config, top=True)
    products = sum(metadata["split_sizes"].values())
    size = sum(tf.io.gfile.stat(os.path.join(root, name)).length
               for root, _, names in tf.io.gfile.walk(cache_dir) for name in names)
    print(f"cache (frozen and top forms) built in {time.perf_counter() - start:.1f} s "
          f"({1000 * (time.perf_counter() - start) / products:.1f} ms/product, all splits), "
          f"{size / products / 1024:.1f} KiB/product on disk")
    for form, cache_form, model in (
        ("frozen", features_cache.FROZEN_FORM,
         lambda: head_model(config, classes, metadata["text_dim"], metadata["image_dim"])),
        ("top", features_cache.TOP_FORM,
         lambda: top_model(config, classes, metadata["text_dim"], metadata["image_map_shape"])),
    ):
        cached = features_cache.make_feature_dataset(cache_dir, features.TRAIN_SPLIT, args.batch_size, shuffle=True,
                                                     repeat=True, form=cache_form)
        cached = features_cache.for_model(cached, list(model().input))
        print(f"{form}: input pipeline alone          {input_ms_per_batch(cached, args.steps):8.2f} ms/batch")
        ms = step_ms(model, cached, args.steps)
        print(f"{form}: step fed from cached TFRecords {ms:7.2f} ms ({1000 / ms:.1f} steps/s)")
        print(f"{form}: step fed from memory          {step_ms(model, in_memory(cached, batches), args.steps):8.2f} ms")


if __name__ == "__main__":
    main()
