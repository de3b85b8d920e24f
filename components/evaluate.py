"""The evaluate stage: figures of a candidate model on the eval split, and the gate that blesses it."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from trainer import data, features


@dataclasses.dataclass(frozen=True)
class Verdict:
    blessed: bool
    reason: str


class ClassCounts:
    """Streaming counts for top-1/top-5 accuracy and per-class precision/recall/F1."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.examples = 0
        self.top1 = 0
        self.top5 = 0
        self.true_positives = np.zeros(num_classes, np.int64)
        self.predicted = np.zeros(num_classes, np.int64)
        self.actual = np.zeros(num_classes, np.int64)

    def add(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        top = np.argsort(-probabilities, axis=-1)[:, :5]
        predicted = top[:, 0]
        self.examples += len(labels)
        self.top1 += int(np.sum(predicted == labels))
        self.top5 += int(np.sum(np.any(top == labels[:, None], axis=-1)))
        np.add.at(self.true_positives, labels[predicted == labels], 1)
        np.add.at(self.predicted, predicted, 1)
        np.add.at(self.actual, labels, 1)

    def macro_f1(self) -> float:
        # Averaged over the classes that occur as truth or prediction, as scikit-learn's f1_score does.
        present = (self.actual + self.predicted) > 0
        if not present.any():
            return 0.0
        f1 = 2 * self.true_positives[present] / (self.actual[present] + self.predicted[present])
        return float(np.mean(f1))

    def metrics(self) -> dict:
        if self.examples == 0:
            raise ValueError("no eval examples: the eval split is empty")
        return {
            "examples": self.examples,
            "top1_accuracy": self.top1 / self.examples,
            "top5_accuracy": self.top5 / self.examples,
            "macro_f1": self.macro_f1(),
        }


def evaluate_model(model_dir: str, examples_dir: str, transform_graph_dir: str, batch_size: int = 64) -> dict:
    """Top-1/top-5 accuracy and macro-F1 of the exported model on the transformed eval split."""
    import tensorflow_transform as tft

    spec = tft.TFTransformOutput(transform_graph_dir).transformed_feature_spec()
    spec = {k: spec[k] for k in (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY)}
    predict = tf.saved_model.load(model_dir).signatures[features.TRANSFORMED_SIGNATURE]
    counts = None
    pattern = os.path.join(examples_dir, features.EVAL_SPLIT, "*")
    records = tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP")
    for batch in records.batch(batch_size).map(lambda s: tf.io.parse_example(s, spec)):
        labels = batch.pop(features.LABEL_ID_KEY).numpy()
        probabilities = predict(**batch)[features.OUTPUT_PROBABILITIES_KEY].numpy()
        counts = counts or ClassCounts(probabilities.shape[-1])
        counts.add(labels, probabilities)
    if counts is None:
        raise ValueError(f"no eval examples match {pattern}")
    return counts.metrics()


def gate(metrics: dict, accuracy_threshold: float) -> Verdict:
    accuracy = metrics["top1_accuracy"]
    if accuracy >= accuracy_threshold:
        return Verdict(True, f"top-1 accuracy {accuracy:.4f} >= threshold {accuracy_threshold:.4f}")
    return Verdict(False, f"top-1 accuracy {accuracy:.4f} < threshold {accuracy_threshold:.4f}")
