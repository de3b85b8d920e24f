"""The evaluate stage: a candidate model's figures on the eval split, and the gate that blesses it.

One streamed pass over the eval records feeds every batch to each model being judged:

    candidate            `transformed_features` → top-1/top-5 accuracy, macro-F1, per-class
                         precision/recall/F1, confusion counts, a few products for the report
                         (the very inputs training saw, so no training/serving skew)
    text_only and        `transformed_features` → the paper's Table 1: on which products the text
    image_only models    model, the image model, both or neither is right (when the trainer exported them)
    served model and     `serving_default` on each product's raw title and stored image → both
    candidate again      top-1 accuracies, for the gate's comparison

The served model is compared through its raw-input signature because it may come from another run,
with another label vocabulary, sequence length or image size: its own transform graph handles those,
and classes are matched by name. The candidate is scored through the same signature on the same
products, so the comparison is like for like.

Memory is bounded by the number of classes (per-class counts, and the confused pairs that occur),
never by the number of products.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from common import features
from common.labels import label_names
from common.metrics import ClassCounts, UnimodalAgreement, top_k_ids

# Correctly and wrongly classified eval products shown (photo, title, classes) in the report.
SAMPLES_PER_KIND = 4


@dataclasses.dataclass(frozen=True)
class Verdict:
    blessed: bool
    reason: str


@dataclasses.dataclass
class ServedComparison:
    """Top-1 of the served model and of the candidate, both through SERVING_SIGNATURE."""

    served_version: int
    examples: int = 0
    served_right: int = 0
    candidate_right: int = 0

    def figures(self) -> dict:
        return {
            "served_version": self.served_version,
            "examples": self.examples,
            "served_top1_accuracy": self.served_right / self.examples,
            "candidate_top1_accuracy": self.candidate_right / self.examples,
        }


class SampleProducts:
    """The first few right and wrong eval products, with what the report shows of them."""

    def __init__(self, per_kind: int = SAMPLES_PER_KIND):
        self.per_kind = per_kind
        self.right: list[dict] = []
        self.wrong: list[dict] = []

    def full(self) -> bool:
        return len(self.right) >= self.per_kind and len(self.wrong) >= self.per_kind

    def add(self, batch: dict, labels, top_ids, probabilities, names: list[str]) -> None:
        for row in range(len(labels)):
            kind = self.right if top_ids[row, 0] == labels[row] else self.wrong
            if len(kind) >= self.per_kind:
                continue
            kind.append({
                "id": batch[features.ID_KEY][row].decode("utf-8"),
                "title": batch[features.TITLE_KEY][row].decode("utf-8") if features.TITLE_KEY in batch else "",
                "image_jpeg": batch[features.IMAGE_KEY][row],
                "true": names[labels[row]],
                "predicted": [(names[c], float(probabilities[row, c])) for c in top_ids[row, :3]],
            })


@dataclasses.dataclass
class Evaluation:
    metrics: dict  # examples, top1_accuracy, top5_accuracy, macro_f1
    per_class: list[dict]
    confused_pairs: list[dict]
    confusion_matrix: tuple[list[str], list[list[int]]]
    table1: dict | None
    served: dict | None  # ServedComparison.figures(), when a model is served
    samples: dict  # {"right": [...], "wrong": [...]}

    def scalars(self) -> dict:
        """Every single-number figure, flat, as KFP's Metrics artifact takes them."""
        scalars = dict(self.metrics)
        for name, cell in (self.table1 or {}).items():
            if isinstance(cell, dict):
                scalars[f"table1_{name}_percent"] = cell["percent"]
            else:
                scalars[f"table1_{name}"] = cell
        if self.served:
            scalars["served_version"] = self.served["served_version"]
            scalars["served_top1_accuracy"] = self.served["served_top1_accuracy"]
            scalars["candidate_serving_top1_accuracy"] = self.served["candidate_top1_accuracy"]
        return scalars

    def summary(self) -> dict:
        """Everything but the photos, for a JSON file next to the verdict."""
        samples = {
            kind: [{k: v for k, v in s.items() if k != "image_jpeg"} for s in products]
            for kind, products in self.samples.items()
        }
        return {**dataclasses.asdict(self), "samples": samples}


def _transformed_predictor(model):
    signature = model.signatures[features.TRANSFORMED_SIGNATURE]
    input_names = list(signature.structured_input_signature[1])

    def probabilities(batch: dict) -> np.ndarray:
        return signature(**{k: batch[k] for k in input_names})[features.OUTPUT_PROBABILITIES_KEY].numpy()

    return probabilities


def _raw_input_top1(model, label_ids: dict[str, int]):
    """The model's top class through SERVING_SIGNATURE, as an id of the candidate's vocabulary (-1 for
    a class the candidate does not know)."""
    signature = model.signatures[features.SERVING_SIGNATURE]

    def top1(batch: dict) -> np.ndarray:
        outputs = signature(**{features.TITLE_KEY: batch[features.TITLE_KEY],
                               features.IMAGE_BYTES_KEY: batch[features.IMAGE_KEY]})
        classes = outputs[features.OUTPUT_CLASSES_KEY].numpy()[:, 0]
        return np.array([label_ids.get(c.decode("utf-8"), -1) for c in classes], np.int64)

    return top1


def eval_records(examples_dir: str, feature_spec: dict, batch_size: int) -> tf.data.Dataset:
    pattern = os.path.join(examples_dir, features.EVAL_SPLIT, "*")
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise ValueError(f"no eval examples match {pattern}")
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return records.batch(batch_size).map(lambda s: tf.io.parse_example(s, feature_spec)).prefetch(tf.data.AUTOTUNE)


def evaluate_model(
    model_dir: str,
    examples_dir: str,
    transform_graph_dir: str,
    *,
    text_model_dir: str | None = None,
    image_model_dir: str | None = None,
    served_model: tuple[int, str] | None = None,
    batch_size: int = 64,
    samples_per_kind: int = SAMPLES_PER_KIND,
) -> Evaluation:
    """The candidate's figures on the transformed eval split; Table 1 when both unimodal model
    directories are given; the comparison with `served_model` (version, directory) when given."""
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(transform_graph_dir)
    names = label_names(tft_output)
    spec = tft_output.transformed_feature_spec()
    wanted = (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY, features.ID_KEY, features.TITLE_KEY)
    spec = {k: spec[k] for k in wanted if k in spec}
    if served_model and features.TITLE_KEY not in spec:
        raise ValueError(
            f"the eval records under {examples_dir} carry no raw {features.TITLE_KEY!r}, which comparing "
            "with the served model needs: they come from an older preprocess stage; run it again"
        )

    if bool(text_model_dir) != bool(image_model_dir):
        raise ValueError("Table 1 needs both unimodal models: give text_model_dir and image_model_dir, or neither")
    loaded = {}  # each directory loaded once, whatever roles it plays

    def load(directory: str):
        if directory not in loaded:
            loaded[directory] = tf.saved_model.load(directory)
        return loaded[directory]

    candidate = _transformed_predictor(load(model_dir))
    unimodal = None
    if text_model_dir:
        unimodal = (_transformed_predictor(load(text_model_dir)), _transformed_predictor(load(image_model_dir)))
    comparison = None
    if served_model:
        version, served_dir = served_model
        label_ids = {name: i for i, name in enumerate(names)}
        comparison = (
            ServedComparison(version),
            _raw_input_top1(load(served_dir), label_ids),
            _raw_input_top1(load(model_dir), label_ids),
        )

    counts = ClassCounts(len(names))
    agreement = UnimodalAgreement() if unimodal else None
    samples = SampleProducts(samples_per_kind)
    for batch in eval_records(examples_dir, spec, batch_size):
        labels = batch[features.LABEL_ID_KEY].numpy()
        probabilities = candidate(batch)
        if probabilities.shape[-1] != len(names):
            raise ValueError(
                f"{model_dir} predicts {probabilities.shape[-1]} classes but the transform graph "
                f"{transform_graph_dir} has {len(names)}: the model was trained on other records"
            )
        top_ids = top_k_ids(probabilities)
        counts.add(labels, top_ids)
        if not samples.full():
            samples.add({k: v.numpy() for k, v in batch.items()}, labels, top_ids, probabilities, names)
        if agreement:
            text, image = (top_k_ids(predict(batch), 1)[:, 0] for predict in unimodal)
            agreement.add(labels, text, image, top_ids[:, 0])
        if comparison:
            figures, served_top1, candidate_top1 = comparison
            figures.examples += len(labels)
            figures.served_right += int(np.sum(served_top1(batch) == labels))
            figures.candidate_right += int(np.sum(candidate_top1(batch) == labels))
    return Evaluation(
        metrics=counts.metrics(),
        per_class=counts.per_class(names),
        confused_pairs=counts.confused_pairs(names),
        confusion_matrix=counts.confusion_matrix(names),
        table1=agreement.table() if agreement else None,
        served=comparison[0].figures() if comparison else None,
        samples={"right": samples.right, "wrong": samples.wrong},
    )


def gate(
    metrics: dict,
    accuracy_threshold: float,
    served: dict | None = None,
    accuracy_tolerance: float = 0.0,
) -> Verdict:
    """Blesses when (a) top-1 accuracy >= accuracy_threshold and (b) when a model is served, the
    candidate's top-1 is at most `accuracy_tolerance` below the served model's on the same products
    through the same signature (`served` as ServedComparison.figures() gives it)."""
    accuracy = metrics["top1_accuracy"]
    if accuracy < accuracy_threshold:
        return Verdict(False, f"top-1 accuracy {accuracy:.4f} < threshold {accuracy_threshold:.4f}")
    absolute = f"top-1 accuracy {accuracy:.4f} >= threshold {accuracy_threshold:.4f}"
    if not served:
        return Verdict(True, f"{absolute}; nothing is served yet, so there is no model to compare with")
    mine, theirs, version = served["candidate_top1_accuracy"], served["served_top1_accuracy"], served["served_version"]
    comparison = (
        f"top-1 through {features.SERVING_SIGNATURE} on the same {served['examples']} products: "
        f"candidate {mine:.4f}, served version {version} {theirs:.4f}"
    )
    if mine < theirs - accuracy_tolerance:
        return Verdict(False, f"{comparison}: worse by {theirs - mine:.4f}, more than the tolerance {accuracy_tolerance:.4f}")
    return Verdict(True, f"{absolute}; {comparison} (tolerance {accuracy_tolerance:.4f})")
