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

import numpy as np

from common.calibration import Calibration, ReviewThreshold
from common.metrics import TARGET_PRECISIONS, CalibrationCounts

DEFAULT_TARGET_PRECISION = 0.98
# The search interval of T. Wider than any trained network needs (overconfident ones sit at 1-20); a
# fit at a bound means the validation split cannot say more (e.g. it holds almost no errors).
TEMPERATURE_BOUNDS = (1e-2, 1e2)
# Rows of logits per step of the NLL: bounds the temporaries to CHUNK × classes float64 whatever the
# number of validation products.
_CHUNK = 4096


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """mean_n -ln softmax(z_n / T)[y_n], in float64, CHUNK rows at a time."""
    from scipy.special import logsumexp

    total = 0.0
    for start in range(0, len(labels), _CHUNK):
        z = np.asarray(logits[start : start + _CHUNK], np.float64) / temperature
        y = labels[start : start + _CHUNK]
        total += float((logsumexp(z, axis=-1) - z[np.arange(len(y)), y]).sum())
    return total / len(labels)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T NLL(T) over TEMPERATURE_BOUNDS (scipy's bounded Brent search on ln T). 1.0 when every
    product is right: the NLL then falls towards T → 0 without a minimum, and the data say nothing."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)
    if np.all(np.argmax(logits, axis=-1) == labels):
        return 1.0
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(low, high),
                             method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))


def fit(
    logits: np.ndarray,
    labels: np.ndarray,
    target_precisions=TARGET_PRECISIONS,
    default_target: float = DEFAULT_TARGET_PRECISION,
) -> Calibration:
    """The temperature and review thresholds of a model from its uncalibrated logits [n, classes] and
    the labels [n] of held-out products (the validation split; never the eval split, which judges it).

    Holds nothing beyond the caller's logits (n × classes; 187K products × 5.6K classes in float32 are
    4.2 GB, so pass a sample there: T is one scalar, and 50K products pin it) and CHUNK-row temporaries."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise ValueError(f"need logits [n, classes] and labels [n] for n > 0, got {logits.shape} and {labels.shape}")
    if default_target not in target_precisions:
        raise ValueError(f"the default target {default_target} is not one of {tuple(target_precisions)}")
    temperature = fit_temperature(logits, labels)
    before, after = CalibrationCounts(), CalibrationCounts()
    for start in range(0, len(labels), _CHUNK):
        z, y = logits[start : start + _CHUNK], labels[start : start + _CHUNK]
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
