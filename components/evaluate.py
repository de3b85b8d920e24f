"""The evaluate stage: a candidate model's figures on the eval split, and the gate that blesses it.

One streamed pass over the transformed eval records feeds every batch to each model being judged:

    candidate            `transformed_features` → top-1/top-5 accuracy, macro-F1, per-class
                         precision/recall/F1, confusion counts, calibration (ECE, NLL, Brier,
                         coverage at target precision; before and after its temperature), what its
                         review threshold does, the stream weights (s_t, s_i) of right and wrong
                         products, a few products for the report (the very inputs training saw)
    text_only and        `transformed_features` → the paper's Table 1: on which products the text
    image_only models    model, the image model, both or neither is right; their calibration figures
    tfidf_svm            the title (with any extra text columns) → the baseline a user already has
                         (common/baselines.py, fitted first on the train split's titles): its top-1,
                         top-5 and macro-F1, and on how many products each model is right where the
                         other is wrong (McNemar's exact test): does the fused model earn its cost?
    tfidf_image_poe      the title and the frozen image features the trainer cached → the product of
                         experts a user builds (common/poe.py, fitted first on the train and validation
                         products of that cache): the same figures, paired with the candidate by id;
                         reported, not gated on

When a model is served, a second pass over the eval split's raw examples (RAW_EXAMPLES_DIR: the
catalog's title and original image bytes, as a client sends them) feeds both the served model and the
candidate through `serving_default`, for the gate's comparison. The served model may come from another
run, with another label vocabulary, sequence length or image size: its own transform graph handles
those from the original photo (not the candidate's resized JPEG, which a model of another image size
would see upscaled and re-encoded), and classes are matched by name against the raw label.

Memory is bounded by the number of classes (per-class counts, the confused pairs that occur) and fixed
histograms (confidence, stream weights), never by the number of products; tfidf_image_poe alone holds
its training products' image features, and is fitted only up to poe.MAX_EVALUATE_COST products × classes.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from common import baselines, features, poe, splits
from common import calibration as calibrations
from common.labels import label_names
from common.metrics import (
    TARGET_PRECISIONS,
    CalibrationCounts,
    ClassCounts,
    PairedCounts,
    RoutingCounts,
    StreamWeightCounts,
    UnimodalAgreement,
    precision_name,
    top_k_ids,
)

# Correctly and wrongly classified eval products shown (photo, title, classes) in the report.
SAMPLES_PER_KIND = 4
# Salted, so that the products the baseline trains on are independent of the eval split's own hash.
_BASELINE_SALT = "baseline:"


@dataclasses.dataclass(frozen=True)
class Verdict:
    blessed: bool
    reason: str


@dataclasses.dataclass
class ServedComparison:
    """Top-1 accuracy and mean top-1 score of the served model and of the candidate, both through
    SERVING_SIGNATURE on the same raw eval products."""

    served_version: int
    examples: int = 0
    served_right: int = 0
    candidate_right: int = 0
    served_score_sum: float = 0.0
    candidate_score_sum: float = 0.0

    def add(self, labels: np.ndarray, served: tuple, candidate: tuple) -> None:
        """labels [batch] strings; served and candidate: (top-1 classes [batch] strings, scores [batch])."""
        self.examples += len(labels)
        self.served_right += int(np.sum(served[0] == labels))
        self.candidate_right += int(np.sum(candidate[0] == labels))
        self.served_score_sum += float(np.sum(served[1], dtype=np.float64))
        self.candidate_score_sum += float(np.sum(candidate[1], dtype=np.float64))

    def figures(self) -> dict:
        if not self.examples:
            raise ValueError("no raw eval examples to compare the served model on")
        return {
            "served_version": self.served_version,
            "examples": self.examples,
            "served_top1_accuracy": self.served_right / self.examples,
            "candidate_top1_accuracy": self.candidate_right / self.examples,
            "served_mean_top1_score": self.served_score_sum / self.examples,
            "candidate_mean_top1_score": self.candidate_score_sum / self.examples,
        }


class SampleProducts:
    """The first few right and wrong eval products, with what the report shows of them."""

    def __init__(self, per_kind: int = SAMPLES_PER_KIND):
        self.per_kind = per_kind
        self.right: list[dict] = []
        self.wrong: list[dict] = []

    def full(self) -> bool:
        return len(self.right) >= self.per_kind and len(self.wrong) >= self.per_kind

    def add(self, batch: dict, labels, top_ids, outputs: dict, names: list[str], review_threshold: float) -> None:
        probabilities = outputs[features.OUTPUT_PROBABILITIES_KEY]
        for row in range(len(labels)):
            kind = self.right if top_ids[row, 0] == labels[row] else self.wrong
            if len(kind) >= self.per_kind:
                continue
            sample = {
                "id": batch[features.ID_KEY][row].decode("utf-8"),
                "title": batch[features.TITLE_KEY][row].decode("utf-8") if features.TITLE_KEY in batch else "",
                "image_jpeg": batch[features.IMAGE_KEY][row],
                "true": names[labels[row]],
                "predicted": [(names[c], float(probabilities[row, c])) for c in top_ids[row, :3]],
                "needs_review": bool(probabilities[row, top_ids[row, 0]] < review_threshold),
            }
            if features.OUTPUT_TEXT_WEIGHT_KEY in outputs:
                sample["text_weight"] = float(outputs[features.OUTPUT_TEXT_WEIGHT_KEY][row])
                sample["image_weight"] = float(outputs[features.OUTPUT_IMAGE_WEIGHT_KEY][row])
            if features.OUTPUT_LEXICAL_WEIGHT_KEY in outputs:
                sample["lexical_weight"] = float(outputs[features.OUTPUT_LEXICAL_WEIGHT_KEY][row])
            kind.append(sample)


class ModelCalibration:
    """A model's calibration figures on eval, from its uncalibrated logits: before (softmax(z)) and
    after its temperature (softmax(z / T), what it serves), and what its review threshold does."""

    def __init__(self, calibration: calibrations.Calibration):
        self.calibration = calibration
        self.before, self.after = CalibrationCounts(), CalibrationCounts()

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.before.add(logits, labels)
        self.after.add(np.asarray(logits, np.float64) / self.calibration.temperature, labels)

    def figures(self) -> dict:
        """{temperature, the calibrated figures, *_uncalibrated, review: what the model's threshold does}."""
        after, before = self.after.figures(), self.before.figures()
        figures = {"temperature": self.calibration.temperature, **after}
        for name in ("ece", "nll", "brier", "mean_confidence",
                     *(f"coverage_at_{precision_name(p)}" for p in TARGET_PRECISIONS)):
            figures[f"{name}_uncalibrated"] = before[name]
        review = self.after.at_threshold(
            None if np.isinf(self.calibration.review_threshold) else self.calibration.review_threshold)
        figures["review"] = {"target_precision": self.calibration.target_precision, **review}
        return figures

    def curves(self) -> dict:
        """What the report draws: the reliability bins before and after, the coverage–precision curve."""
        return {"reliability_uncalibrated": self.before.reliability(), "reliability": self.after.reliability(),
                "coverage_precision": self.after.coverage_curve()}


@dataclasses.dataclass
class Evaluation:
    metrics: dict  # examples, top1_accuracy, top5_accuracy, macro_f1
    per_class: list[dict]
    confused_pairs: list[dict]
    confusion_matrix: tuple[list[str], list[list[int]]]
    table1: dict | None
    served: dict | None  # ServedComparison.figures(), when a model is served
    samples: dict  # {"right": [...], "wrong": [...]}
    # ModelCalibration.figures() of the candidate, and {TEXT_ONLY, IMAGE_ONLY: the same} with Table 1.
    calibration: dict = dataclasses.field(default_factory=dict)
    unimodal_calibration: dict | None = None
    curves: dict = dataclasses.field(default_factory=dict)  # ModelCalibration.curves() of the candidate
    # StreamWeightCounts.summary() and .histogram() of the candidate, for heads that weigh the streams,
    # and "routing": RoutingCounts.figures() (the spread of s_t and, with the unimodal models, the routing AUC).
    stream_weights: dict | None = None
    # The tfidf_svm baseline on the same eval products: {model, train_products, fit_seconds, its
    # ClassCounts.metrics(), "paired": PairedCounts.figures() of the candidate against it}, or {model,
    # error} when it could not be fitted.
    baseline: dict | None = None
    # tfidf_image_poe on the same eval products: {model, train_products, fit_seconds, choices, its
    # ClassCounts.metrics(), "paired" against the candidate}, or {model, error} when it was not fitted.
    poe_baseline: dict | None = None

    def scalars(self) -> dict:
        """Every single-number figure, flat, as KFP's Metrics artifact takes them (undefined ones left out)."""
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
        for prefix, figures in (("", self.calibration), *((f"{m}_", f) for m, f in (self.unimodal_calibration or {}).items())):
            for name, value in figures.items():
                if name == "review":
                    scalars[f"{prefix}review_threshold"] = value["threshold"]
                    scalars[f"{prefix}review_share"] = value["review_share"]
                    scalars[f"{prefix}auto_precision"] = value["auto_precision"]
                elif name != "accuracy":  # the same as top1_accuracy
                    scalars[f"{prefix}{name}"] = value
        for kind in StreamWeightCounts.KINDS:
            for name, value in ((self.stream_weights or {}).get("summary", {}).get(kind) or {}).items():
                if name != "products":
                    scalars[f"{kind}_{name}"] = value
        for name, value in (self.stream_weights or {}).get("routing", {}).items():
            if name != "products":
                scalars[name] = value
        if self.baseline and "error" not in self.baseline:
            for name in ("top1_accuracy", "top5_accuracy", "macro_f1", "train_products"):
                scalars[f"baseline_{name}"] = self.baseline[name]
            paired = self.baseline["paired"]
            scalars["baseline_only_right"] = paired["baseline_only_right"]
            scalars["candidate_only_right"] = paired["candidate_only_right"]
            scalars["baseline_mcnemar_p_value"] = paired["mcnemar_p_value"]
        if self.poe_baseline and "error" not in self.poe_baseline:
            name = poe.TFIDF_IMAGE_POE
            for figure in ("top1_accuracy", "top5_accuracy", "macro_f1", "train_products"):
                scalars[f"{name}_{figure}"] = self.poe_baseline[figure]
            paired = self.poe_baseline["paired"]
            scalars[f"{name}_only_right"] = paired["baseline_only_right"]
            scalars[f"candidate_only_right_against_{name}"] = paired["candidate_only_right"]
            scalars[f"{name}_mcnemar_p_value"] = paired["mcnemar_p_value"]
        return {k: v for k, v in scalars.items() if v is not None}

    def summary(self) -> dict:
        """Everything but the photos, for a JSON file next to the verdict."""
        samples = {
            kind: [{k: v for k, v in s.items() if k != "image_jpeg"} for s in products]
            for kind, products in self.samples.items()
        }
        return {**dataclasses.asdict(self), "samples": samples}


class EvalFigures:
    """Everything evaluate_model streams over the eval split: the candidate's counts, calibration,
    stream weights and sample products, and with the unimodal models Table 1 and their calibration."""

    def __init__(self, names: list[str], calibration: ModelCalibration, unimodal: dict, samples_per_kind: int,
                 baseline: baselines.TfidfSvm | None = None, baseline_error: str | None = None,
                 poe_baseline: poe.EvalPredictions | None = None, poe_error: str | None = None):
        self.names, self.calibration, self.unimodal, self.baseline = names, calibration, unimodal, baseline
        self.baseline_error = baseline_error
        self.counts = ClassCounts(len(names))
        self.baseline_counts = ClassCounts(len(names)) if baseline else None
        self.paired = PairedCounts() if baseline else None
        self.poe, self.poe_error = poe_baseline, poe_error
        self.poe_counts = ClassCounts(len(names)) if poe_baseline else None
        self.poe_paired = PairedCounts() if poe_baseline else None
        self.agreement = UnimodalAgreement() if unimodal else None
        self.weights = None
        self.routing = None
        self.samples = SampleProducts(samples_per_kind)

    def add(self, batch: dict, outputs: dict) -> None:
        """One batch of transformed eval records and the candidate's outputs on it."""
        labels = batch[features.LABEL_ID_KEY].numpy()
        logits = outputs[features.OUTPUT_LOGITS_KEY]
        top_ids = top_k_ids(logits)
        self.counts.add(labels, top_ids)
        self.calibration.add(logits, labels)
        if features.OUTPUT_TEXT_WEIGHT_KEY in outputs:
            self.weights = self.weights or StreamWeightCounts()
            # The expert fusions' third column: the lexical expert's share (part of s_t).
            columns = (features.OUTPUT_TEXT_WEIGHT_KEY, features.OUTPUT_IMAGE_WEIGHT_KEY,
                       *([features.OUTPUT_LEXICAL_WEIGHT_KEY] if features.OUTPUT_LEXICAL_WEIGHT_KEY in outputs else []))
            self.weights.add(np.stack([outputs[c] for c in columns], -1), top_ids[:, 0] == labels)
            self.routing = self.routing or RoutingCounts()
        if not self.samples.full():
            self.samples.add({k: v.numpy() for k, v in batch.items()}, labels, top_ids, outputs, self.names,
                             self.calibration.calibration.review_threshold)
        if self.agreement:
            top1 = {}
            for stage, (predict, stage_calibration) in self.unimodal.items():
                stage_logits = predict(batch)[features.OUTPUT_LOGITS_KEY]
                stage_calibration.add(stage_logits, labels)
                top1[stage] = top_k_ids(stage_logits, 1)[:, 0]
            self.agreement.add(labels, top1[features.TEXT_ONLY], top1[features.IMAGE_ONLY], top_ids[:, 0])
        if self.routing:
            self.routing.add(outputs[features.OUTPUT_TEXT_WEIGHT_KEY], *(
                (top1[features.TEXT_ONLY] == labels, top1[features.IMAGE_ONLY] == labels) if self.agreement else ()),
                lexical_weight=outputs.get(features.OUTPUT_LEXICAL_WEIGHT_KEY))
        if self.baseline:
            baseline_ids = top_k_ids(self.baseline.scores(baselines.decode_titles(batch[features.TITLE_KEY].numpy())))
            self.baseline_counts.add(labels, baseline_ids)
            self.paired.add(top_ids[:, 0] == labels, baseline_ids[:, 0] == labels)
        if self.poe:
            poe_ids = self.poe.top_classes(batch[features.ID_KEY].numpy())
            self.poe_counts.add(labels, poe_ids)
            self.poe_paired.add(top_ids[:, 0] == labels, poe_ids[:, 0] == labels)

    def poe_figures(self) -> dict | None:
        if self.poe_error:
            return {"model": poe.TFIDF_IMAGE_POE, "error": self.poe_error}
        if not self.poe:
            return None
        return {"model": poe.TFIDF_IMAGE_POE, "train_products": self.poe.train_products,
                "fit_seconds": self.poe.fit_seconds, "choices": self.poe.choices, **self.poe_counts.metrics(),
                "paired": self.poe_paired.figures()}

    def baseline_figures(self) -> dict | None:
        if self.baseline_error:
            return {"model": baselines.TFIDF_SVM, "error": self.baseline_error}
        if not self.baseline:
            return None
        return {"model": baselines.TFIDF_SVM, "train_products": self.baseline.train_products,
                "fit_seconds": self.baseline.fit_seconds, "solver": self.baseline.solver, "alpha": self.baseline.alpha,
                "holdout_accuracy": self.baseline.holdout_accuracy, **self.baseline_counts.metrics(),
                "paired": self.paired.figures()}

    def evaluation(self, served: dict | None) -> Evaluation:
        return Evaluation(
            metrics=self.counts.metrics(),
            per_class=self.counts.per_class(self.names),
            confused_pairs=self.counts.confused_pairs(self.names),
            confusion_matrix=self.counts.confusion_matrix(self.names),
            table1=self.agreement.table() if self.agreement else None,
            served=served,
            samples={"right": self.samples.right, "wrong": self.samples.wrong},
            calibration=self.calibration.figures(),
            unimodal_calibration={stage: c.figures() for stage, (_, c) in self.unimodal.items()} or None,
            curves=self.calibration.curves(),
            stream_weights={"summary": self.weights.summary(), "histogram": self.weights.histogram(),
                            "routing": self.routing.figures()} if self.weights else None,
            baseline=self.baseline_figures(),
            poe_baseline=self.poe_figures(),
        )


def _transformed_predictor(model, model_dir: str):
    """batch → the TRANSFORMED_SIGNATURE outputs (numpy): probabilities, logits, stream weights."""
    signature = model.signatures[features.TRANSFORMED_SIGNATURE]
    input_names = list(signature.structured_input_signature[1])
    if features.OUTPUT_LOGITS_KEY not in signature.structured_outputs:
        raise ValueError(f"{model_dir} has no {features.OUTPUT_LOGITS_KEY!r} output in {features.TRANSFORMED_SIGNATURE}: "
                         "it was exported before calibration; export it again")

    def predict(batch: dict) -> dict:
        return {k: v.numpy() for k, v in signature(**{k: batch[k] for k in input_names}).items()}

    return predict


def _raw_input_top1(model):
    """The model's top class (label string) and its score through SERVING_SIGNATURE."""
    signature = model.signatures[features.SERVING_SIGNATURE]

    def top1(batch: dict) -> tuple[np.ndarray, np.ndarray]:
        outputs = signature(**{features.TITLE_KEY: batch[features.TITLE_KEY],
                               features.IMAGE_BYTES_KEY: batch[features.IMAGE_BYTES_KEY]})
        return outputs[features.OUTPUT_CLASSES_KEY].numpy()[:, 0], outputs[features.OUTPUT_SCORES_KEY].numpy()[:, 0]

    return top1


def split_records(examples_dir: str, split: str, feature_spec: dict, batch_size: int) -> tf.data.Dataset:
    """Parsed batches of a split's transformed records."""
    pattern = os.path.join(examples_dir, split, "*")
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise ValueError(f"no {split} examples match {pattern}")
    records = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return records.batch(batch_size).map(lambda s: tf.io.parse_example(s, feature_spec)).prefetch(tf.data.AUTOTUNE)


RAW_SPEC = {key: tf.io.FixedLenFeature([], tf.string)
            for key in (features.ID_KEY, features.TITLE_KEY, features.IMAGE_BYTES_KEY, features.LABEL_KEY)}


def raw_eval_records(examples_dir: str, batch_size: int) -> tf.data.Dataset:
    """The eval split's raw examples (original image bytes, label string), as the preprocess stage keeps them."""
    directory = splits.raw_examples_dir(examples_dir)
    files = tf.io.gfile.glob(os.path.join(directory, "*.tfrecord.gz"))
    if not files:
        raise ValueError(f"comparing with the served model needs the eval split's raw examples, and {directory} "
                         "holds none: the examples come from an older preprocess stage; run it again")
    records = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")
    return records.batch(batch_size).map(lambda s: tf.io.parse_example(s, RAW_SPEC)).prefetch(tf.data.AUTOTUNE)


def fit_baseline(examples_dir: str, num_classes: int, max_train_products: int = baselines.MAX_TRAIN_PRODUCTS,
                 batch_size: int = 1024) -> baselines.TfidfSvm:
    """tfidf_svm fitted on the train split's titles (what the trainer trains on, validation included),
    streamed from the transformed records once per epoch; at most about `max_train_products` of them, by a
    hash of the id."""
    share = max_train_products / max(1, splits.read_split_sizes(examples_dir)[features.TRAIN_SPLIT])
    batches = split_records(examples_dir, features.TRAIN_SPLIT, baselines.record_spec(), batch_size)
    if share < 1:
        def sample(batch):
            keep = splits.in_salted_share(batch[features.ID_KEY], _BASELINE_SALT, share)
            return {key: tf.boolean_mask(value, keep) for key, value in batch.items()}

        batches = batches.map(sample)
    return baselines.TfidfSvm.streamed(baselines.record_batches(batches), num_classes)


def compare_with_served(served_model: tuple[int, str], candidate, examples_dir: str, batch_size: int,
                        load=tf.saved_model.load) -> dict:
    """ServedComparison.figures() of the served model (version, directory) and the candidate (a loaded
    model) through SERVING_SIGNATURE on the eval split's raw examples."""
    records = raw_eval_records(examples_dir, batch_size)  # before loading: a missing directory fails fast
    version, served_dir = served_model
    comparison = ServedComparison(version)
    served_top1, candidate_top1 = _raw_input_top1(load(served_dir)), _raw_input_top1(candidate)
    for batch in records:
        comparison.add(batch[features.LABEL_KEY].numpy(), served_top1(batch), candidate_top1(batch))
    return comparison.figures()


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
    baseline_max_train_products: int = baselines.MAX_TRAIN_PRODUCTS,
    poe_fit: Callable[[int], poe.EvalPredictions] | None = None,
) -> Evaluation:
    """The candidate's figures on the transformed eval split; Table 1 and the unimodal models'
    calibration when both unimodal model directories are given; the comparison with `served_model`
    (version, directory) on the raw eval split when given; the tfidf_svm baseline on the same eval
    products, fitted on at most about `baseline_max_train_products` train products (0: no baselines),
    and tfidf_image_poe on them when `poe_fit` (number of classes → its eval predictions, ValueError
    saying why it cannot be fitted; the pipeline's: from the trainer's feature cache) is given."""
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(transform_graph_dir)
    names = label_names(tft_output)
    spec = tft_output.transformed_feature_spec()
    wanted = (*features.BERT_INPUT_KEYS, features.IMAGE_KEY, features.LABEL_ID_KEY, features.ID_KEY, features.TITLE_KEY)
    spec = {k: spec[k] for k in wanted if k in spec}

    if bool(text_model_dir) != bool(image_model_dir):
        raise ValueError("Table 1 needs both unimodal models: give text_model_dir and image_model_dir, or neither")
    loaded = {}  # each directory loaded once, whatever roles it plays

    def load(directory: str):
        if directory not in loaded:
            loaded[directory] = tf.saved_model.load(directory)
        return loaded[directory]

    served = compare_with_served(served_model, load(model_dir), examples_dir, batch_size, load) if served_model else None
    candidate = _transformed_predictor(load(model_dir), model_dir)
    unimodal = {}
    if text_model_dir:
        unimodal = {stage: (_transformed_predictor(load(d), d), ModelCalibration(calibrations.read(d)))
                    for stage, d in ((features.TEXT_ONLY, text_model_dir), (features.IMAGE_ONLY, image_model_dir))}

    baseline, baseline_error = None, None
    if baseline_max_train_products:
        if features.TITLE_KEY not in spec:
            raise ValueError(f"the transform graph {transform_graph_dir} passes no {features.TITLE_KEY!r} through, which "
                             "the tfidf_svm baseline reads: preprocess again, or set baseline_max_train_products to 0")
        try:
            baseline = fit_baseline(examples_dir, len(names), baseline_max_train_products)
        except ValueError as e:
            # The baseline is a yardstick, not the candidate: a train split it cannot fit (no title left
            # after sampling) is said in the figures and the verdict, and the candidate is still judged.
            baseline_error = f"the {baselines.TFIDF_SVM} baseline could not be fitted: {e}"
    poe_baseline, poe_error = None, None
    if baseline_max_train_products and poe_fit:
        try:
            poe_baseline = poe_fit(len(names))
        except ValueError as e:  # a yardstick too: said, and the candidate still judged
            poe_error = f"the {poe.TFIDF_IMAGE_POE} baseline was not fitted: {e}"
    figures = EvalFigures(names, ModelCalibration(calibrations.read(model_dir)), unimodal, samples_per_kind, baseline,
                          baseline_error, poe_baseline, poe_error)
    for batch in split_records(examples_dir, features.EVAL_SPLIT, spec, batch_size):
        outputs = candidate(batch)
        classes = outputs[features.OUTPUT_LOGITS_KEY].shape[-1]
        if classes != len(names):
            raise ValueError(
                f"{model_dir} predicts {classes} classes but the transform graph "
                f"{transform_graph_dir} has {len(names)}: the model was trained on other records"
            )
        figures.add(batch, outputs)
    return figures.evaluation(served)


def gate(
    metrics: dict,
    accuracy_threshold: float,
    served: dict | None = None,
    accuracy_tolerance: float = 0.0,
    baseline: dict | None = None,
    baseline_tolerance: float = 0.0,
) -> Verdict:
    """Blesses when (a) top-1 accuracy >= accuracy_threshold, (c) the candidate's top-1 is at most
    `baseline_tolerance` below the tfidf_svm baseline's on the same eval products (`baseline` as
    Evaluation.baseline; 0, the default, refuses a candidate below it; 1.0 never refuses: the baseline is
    reported, not gated on; a baseline that could not be fitted is said, not gated on) and (b) when a model is served, the
    candidate's top-1 is at most `accuracy_tolerance` below the served model's on the same products
    through the same signature (`served` as ServedComparison.figures()). Judged in the order a, c, b."""
    accuracy = metrics["top1_accuracy"]
    if accuracy < accuracy_threshold:
        return Verdict(False, f"top-1 accuracy {accuracy:.4f} < threshold {accuracy_threshold:.4f}")
    absolute = f"top-1 accuracy {accuracy:.4f} >= threshold {accuracy_threshold:.4f}"
    if baseline and "error" in baseline:
        absolute += f"; {baseline['error']}"
    elif baseline:
        theirs = baseline["top1_accuracy"]
        against = f"the {baseline['model']} baseline's top-1 on the same products is {theirs:.4f}"
        if accuracy < theirs - baseline_tolerance:
            return Verdict(False, f"{absolute}, but {against}: worse by {theirs - accuracy:.4f}, more than the "
                                  f"baseline tolerance {baseline_tolerance:.4f}")
        absolute += f"; {against} (tolerance {baseline_tolerance:.4f})"
        if accuracy < theirs:
            absolute += f", so the candidate, {theirs - accuracy:.4f} below it, is blessed only by that tolerance"
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
