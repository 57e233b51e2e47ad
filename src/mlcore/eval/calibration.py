"""Expected calibration error (Naeini et al. 2015; Guo et al. 2017, "On Calibration of Modern Neural Networks").

A classifier is calibrated when, among the predictions made with confidence ``c``, a share ``c`` is right.
Split the confidences ``conf_i = max_k p_ik`` into ``M`` equal-width bins ``B_m = ((m-1)/M, m/M]`` (the first
bin also takes 0) and compare, per bin, accuracy with mean confidence:

    ECE = sum_m |B_m| / N * | acc(B_m) - conf(B_m) |

Empty bins contribute nothing. ``reliability_table`` returns the per-bin figures a reliability diagram draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlcore.eval._checks import as_float_array, check_positive_int


def _confidences(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = as_float_array("probs", probs, ndim=(1, 2))
    y = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"labels must have shape (N,) = ({p.shape[0]},) to match probs, got {y.shape}")
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"probs must lie in [0, 1], got values in [{p.min():.3g}, {p.max():.3g}]")
    classes = 2 if p.ndim == 1 else p.shape[1]
    integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y)))))
    if y.dtype.kind == "b" or not integral or (y.size and (y.min() < 0 or y.max() >= classes)):
        raise ValueError(f"labels must be integer classes in [0, {classes}), got {y[:10].tolist()}"
                         + (" ..." if y.size > 10 else ""))
    y = y.astype(np.int64)
    if p.ndim == 1:  # binary: p is P(class 1); the prediction is the likelier class
        conf, pred = np.maximum(p, 1 - p), (p >= 0.5).astype(np.int64)
    else:
        if not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
            raise ValueError("probs rows must sum to 1 (softmax outputs), got sums in "
                             f"[{p.sum(axis=1).min():.4g}, {p.sum(axis=1).max():.4g}]")
        conf, pred = p.max(axis=1), p.argmax(axis=1)
    return conf, (pred == y).astype(np.float64)


def reliability_table(probs: Any, labels: Any, *, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin: ``lower``, ``upper``, ``count``, ``accuracy``, ``confidence`` (NaN where empty).

    ``probs``: (N, C) class probabilities, or (N,) the probability of class 1 for a binary classifier;
    ``labels``: (N,) integer classes.
    """
    check_positive_int("n_bins", n_bins)
    conf, correct = _confidences(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin m holds (edges[m], edges[m+1]]; confidence 0 falls into bin 0
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count, "accuracy": acc, "confidence": mean_conf}


def expected_calibration_error(probs: Any, labels: Any, *, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (module docstring); 0 = perfectly calibrated."""
    t = reliability_table(probs, labels, n_bins=n_bins)
    full = t["count"] > 0
    gap = np.abs(t["accuracy"][full] - t["confidence"][full])
    return float((t["count"][full] / t["count"].sum() * gap).sum())
