"""Training: transformed TFRecords → a fitted HANet model → the serving SavedModel.

Restartable: `BackupAndRestore` snapshots the training state every epoch (and every
`backup_every_steps`), so a job killed mid-epoch and started again with the same command continues.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from official.nlp import optimization

from trainer import data, export, features
from trainer.model import ModelConfig, build_model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    # The paper's recipe for fine-tuning BERT and HANet: AdamW, lr 2e-5, weight decay 0.01, 10% warm-up.
    learning_rate: float = 2e-5
    warmup_fraction: float = 0.1
    backup_every_steps: int | None = None
    seed: int = 42


def distribution_strategy() -> tf.distribute.Strategy:
    """Multi-worker from TF_CONFIG, mirrored over local GPUs, else the default (CPU) strategy."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def num_classes(tft_output: tft.TFTransformOutput) -> int:
    # The vocabulary plus its one out-of-vocabulary bucket.
    return tft_output.vocabulary_size_by_name(features.LABEL_VOCABULARY_NAME) + 1


def train(
    *,
    examples_dir: str,
    transform_graph_dir: str,
    export_dir: str,
    work_dir: str,
    model_config: ModelConfig,
    train_config: TrainConfig,
) -> dict:
    """Trains the model and writes the serving SavedModel to `export_dir`; returns the last epoch's logs."""
    keras.utils.set_random_seed(train_config.seed)
    tft_output = tft.TFTransformOutput(transform_graph_dir)
    train_size = data.read_split_sizes(examples_dir)[features.TRAIN_SPLIT]
    if train_size == 0:
        raise ValueError(f"{examples_dir} has no training examples")
    steps_per_epoch = math.ceil(train_size / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs

    dataset = data.make_dataset(
        os.path.join(examples_dir, features.TRAIN_SPLIT, "*"),
        tft_output.transformed_feature_spec(),
        batch_size=train_config.batch_size,
        image_size=model_config.image_size,
        shuffle=True,
        repeat=True,
        seed=train_config.seed,
    )
    strategy = distribution_strategy()
    with strategy.scope():
        model = build_model(model_config, num_classes(tft_output))
        optimizer = optimization.create_optimizer(
            init_lr=train_config.learning_rate,
            num_train_steps=total_steps,
            num_warmup_steps=int(train_config.warmup_fraction * total_steps),
            optimizer_type="adamw",
        )
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"),
            ],
        )
    callbacks = [
        keras.callbacks.BackupAndRestore(
            os.path.join(work_dir, "backup"), save_freq=train_config.backup_every_steps or "epoch"
        ),
        keras.callbacks.ModelCheckpoint(
            os.path.join(work_dir, "checkpoints", "epoch-{epoch:03d}"), save_weights_only=True
        ),
        keras.callbacks.TensorBoard(os.path.join(work_dir, "logs")),
    ]
    history = model.fit(dataset, epochs=train_config.epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks)
    export.export_serving_model(
        model,
        tft_output,
        export_dir,
        image_size=model_config.image_size,
        max_seq_length=model_config.max_seq_length,
    )
    last = {name: float(values[-1]) for name, values in history.history.items() if values}
    logging.info("trained %s for %d epochs: %s", model_config.fusion, train_config.epochs, last)
    return last
