"""Calibration: scores a shop can act on, and the threshold below which a person reviews the product.

A classifier trained with cross-entropy ends overconfident: on the fashion catalog it answers 1.0 for
products it gets wrong. Temperature scaling (Guo et al. 2017, "On calibration of modern neural
networks") divides the logits z by one scalar T > 0 before the softmax,

    p = softmax(z / T),   T = argmin_T  NLL(T) = mean_n [ logsumexp(z_n / T) - z_n,y_n / T ],

fitted on held-out products (the validation split carved from train): one parameter cannot overfit a
few hundred products, and dividing by T > 0 never changes which class is on top, so top-1 is kept
exactly. NLL is convex in 1/T, so a bounded 1-D search finds its minimum.

Then, for each target top-1 precision P (95, 98, 99 %), the review threshold is the lowest calibrated
top-1 score t at which the validation products with score ≥ t are right at least P of the time
(common.metrics.CalibrationCounts.coverage_at). The served model returns needs_review = score < t for
the chosen target (default 98 %): those products go to a person, the others are filed automatically.

The result (common.calibration.Calibration) travels inside the exported model: the exporter folds T
and the threshold into the graph and writes it to common.calibration.CALIBRATION_FILE, where the
evaluate stage and people read it.
"""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from common.calibration import Calibration, ReviewThreshold
from common.metrics import TARGET_PRECISIONS, CalibrationCounts

DEFAULT_TARGET_PRECISION = 0.98
# The search interval of T. Wider than any trained network needs (overconfident ones sit at 1-20); a
# fit at a bound means the validation split cannot say more (e.g. it holds almost no errors).
TEMPERATURE_BOUNDS = (1e-2, 1e2)
# Logits per step of the NLL and of the figures (rows × classes): each step holds a few float64
# temporaries of this many values (log-softmax, its copy, p, p², ...: CalibrationCounts.add makes about
# six), 8 MiB each, whatever the number of validation products or of classes. A fixed number of rows
# instead (4,096 before) made them grow with the classes and, below 4,096 validation products, with the
# products: at 40K products (3,941 validation) × 5,249 classes they were the train stage's peak (docs/scale.md).
CHUNK_VALUES = 2**20


def chunk_rows(classes: int) -> int:
    """Rows of logits of `classes` columns per step: CHUNK_VALUES values, one row at least."""
    return max(1, CHUNK_VALUES // max(1, classes))


def _chunks(logits, labels: np.ndarray):
    """(logits [rows, classes], labels [rows]) steps of at most CHUNK_VALUES logits, in order. `logits` is
    anything of shape [n, classes] read by row slices: an ndarray, or SpilledLogits on disk."""
    rows = chunk_rows(logits.shape[1])
    for start in range(0, len(labels), rows):
        yield logits[start : start + rows], labels[start : start + rows]


class SpilledLogits:
    """Logits [n, classes] in float32 written batch by batch to a temporary file (`append`) and read
    back by row slices (`logits[a:b]`, a plain read: no memory map whose pages would count in the
    process's memory), so that fitting the temperature holds CHUNK_VALUES at a time, not n × classes.

    Why a file: the temperature search reads every validation product's logits 20-30 times (one pass
    per NLL evaluation), so they must be kept, or the model run again per pass. In memory they were
    n × classes float32 twice (the batches, then their concatenation): 50,000 (CALIBRATION_PRODUCTS)
    × 5,600 classes is 1.1 GB a copy at the paper's scale. On local disk (`directory`, default the
    system's temporary directory; deleted on close) they cost that much disk for the fit's duration
    and memory for one batch."""

    def __init__(self, classes: int, directory: str | None = None):
        self.classes = classes
        self.rows = 0
        self._file = tempfile.TemporaryFile(dir=directory)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.classes)

    def __len__(self) -> int:
        return self.rows

    def append(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.classes:
            raise ValueError(f"need logits [batch, {self.classes}], got {batch.shape}")
        self._file.seek(0, os.SEEK_END)
        self._file.write(batch.tobytes())
        self.rows += len(batch)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.rows)
        if step != 1:
            raise ValueError("SpilledLogits reads contiguous rows only")
        count = max(0, stop - start)
        self._file.seek(start * self.classes * 4)
        values = np.frombuffer(self._file.read(count * self.classes * 4), np.float32)
        return values.reshape(count, self.classes)

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_logits(logits):
    return logits if isinstance(logits, SpilledLogits) else np.asarray(logits)


def nll(logits, labels: np.ndarray, temperature: float) -> float:
    """mean_n -ln softmax(z_n / T)[y_n], in float64, CHUNK_VALUES logits at a time."""
    from scipy.special import logsumexp

    logits, labels = _as_logits(logits), np.asarray(labels)
    total = 0.0
    for chunk, y in _chunks(logits, labels):
        z = np.asarray(chunk, np.float64) / temperature
        total += float((logsumexp(z, axis=-1) - z[np.arange(len(y)), y]).sum())
    return total / len(labels)


def fit_temperature(logits, labels: np.ndarray) -> float:
    """argmin_T NLL(T) over TEMPERATURE_BOUNDS (scipy's bounded Brent search on ln T). 1.0 when every
    product is right: the NLL then falls towards T → 0 without a minimum, and the data say nothing.
    `logits` [n, classes]: an ndarray or SpilledLogits, read CHUNK_VALUES at a time."""
    from scipy.optimize import minimize_scalar

    logits, labels = _as_logits(logits), np.asarray(labels)
    if all(np.all(np.argmax(z, axis=-1) == y) for z, y in _chunks(logits, labels)):
        return 1.0
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(low, high),
                             method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))


def fit(
    logits,
    labels: np.ndarray,
    target_precisions=TARGET_PRECISIONS,
    default_target: float = DEFAULT_TARGET_PRECISION,
) -> Calibration:
    """The temperature and review thresholds of a model from its uncalibrated logits [n, classes] and
    the labels [n] of held-out products (the validation split; never the eval split, which judges it).

    `logits` is an ndarray or SpilledLogits (on disk): this holds nothing beyond them, the labels and
    temporaries of CHUNK_VALUES logits; with SpilledLogits, nothing of n × classes (187K validation
    products × 5.6K classes in float32 are 4.2 GB; T is one scalar, and 50K products pin it)."""
    logits = _as_logits(logits)
    labels = np.asarray(labels, np.int64)
    if len(logits.shape) != 2 or len(logits) != len(labels) or not len(labels):
        raise ValueError(f"need logits [n, classes] and labels [n] for n > 0, got {logits.shape} and {labels.shape}")
    if default_target not in target_precisions:
        raise ValueError(f"the default target {default_target} is not one of {tuple(target_precisions)}")
    temperature = fit_temperature(logits, labels)
    before, after = CalibrationCounts(), CalibrationCounts()
    for z, y in _chunks(logits, labels):
        before.add(z, y)
        after.add(np.asarray(z, np.float64) / temperature, y)
    thresholds = []
    for target in target_precisions:
        coverage, threshold = after.coverage_at(target)
        thresholds.append(ReviewThreshold(target, threshold, coverage))
    return Calibration(
        temperature=temperature,
        review_thresholds=tuple(thresholds),
        target_precision=default_target,
        validation_products=len(labels),
        validation={"ece_before": before.ece(), "ece_after": after.ece(),
                    "nll_before": before.nll_sum / before.examples, "nll_after": after.nll_sum / after.examples},
    )
