"""A model's calibration as it travels with the model: the temperature T and the review thresholds
that the exporter folds into the serving graph and writes to CALIBRATION_FILE (JSON, for people and
for the evaluate stage), where

    scores = softmax(logits / T),   needs_review = top-1 score < review_threshold.

Fitting them is the trainer's (trainer/calibration.py); reading them is everyone's, hence here.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

CALIBRATION_FILE = os.path.join("assets.extra", "calibration.json")


@dataclasses.dataclass(frozen=True)
class ReviewThreshold:
    target_precision: float
    threshold: float | None  # lowest calibrated top-1 score filed automatically; None: never reached
    validation_coverage: float  # the share of validation products it files automatically


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What the exporter folds into the serving graph. The default (no calibration) is the identity:
    temperature 1, and no product needs review."""

    temperature: float = 1.0
    review_thresholds: tuple[ReviewThreshold, ...] = ()
    target_precision: float | None = None  # whose threshold needs_review uses; None: nothing needs review
    validation_products: int = 0
    # Validation figures before and after: {"ece_before", "ece_after", "nll_before", "nll_after"}.
    validation: dict = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"the temperature must be positive, got {self.temperature}")
        targets = [r.target_precision for r in self.review_thresholds]
        if self.target_precision is not None and self.target_precision not in targets:
            raise ValueError(f"target precision {self.target_precision} has no review threshold (have {targets})")

    @property
    def review_threshold(self) -> float:
        """needs_review ⇔ calibrated top-1 score < this: 0 without a target, +inf for an unreached one."""
        if self.target_precision is None:
            return 0.0
        threshold = next(r.threshold for r in self.review_thresholds if r.target_precision == self.target_precision)
        return math.inf if threshold is None else threshold

    def to_json(self) -> dict:
        return {
            "definition": "scores = softmax(logits / temperature); needs_review = top-1 score < review_threshold "
                          "(null: the target precision was not reached on validation, every product needs review)",
            "temperature": self.temperature,
            "target_precision": self.target_precision,
            "review_threshold": None if math.isinf(self.review_threshold) else self.review_threshold,
            "review_thresholds": [dataclasses.asdict(r) for r in self.review_thresholds],
            "validation_products": self.validation_products,
            "validation": self.validation,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        return cls(
            temperature=data["temperature"],
            review_thresholds=tuple(ReviewThreshold(**r) for r in data["review_thresholds"]),
            target_precision=data["target_precision"],
            validation_products=data["validation_products"],
            validation=data.get("validation", {}),
        )


def write(calibration: Calibration, model_dir: str) -> str:
    import tensorflow as tf

    path = os.path.join(model_dir, CALIBRATION_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(calibration.to_json(), f, indent=2)
    return path


def read(model_dir: str) -> Calibration:
    """The calibration a model was exported with; the identity for a model exported before calibration."""
    import tensorflow as tf

    path = os.path.join(model_dir, CALIBRATION_FILE)
    if not tf.io.gfile.exists(path):
        return Calibration()
    with tf.io.gfile.GFile(path) as f:
        return Calibration.from_json(json.load(f))
