"""Expected calibration error: closed-form cases and a reference built on sklearn's calibration_curve."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from mlcore.eval import expected_calibration_error, reliability_table


def test_closed_form():
    # every prediction made at confidence 0.8, 60 % right: ECE = |0.6 - 0.8| = 0.2
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.2)
    # two bins: 0.95 confidence all right (gap 0.05), 0.55 confidence half right (gap 0.05) -> 0.05
    probs = np.array([[0.95, 0.05]] * 4 + [[0.55, 0.45]] * 4)
    labels = np.array([0, 0, 0, 0, 0, 1, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.05)


def test_binary_against_sklearn_reference():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 2000)
    y = (rng.uniform(0, 1, 2000) < p**3).astype(int)  # miscalibrated on purpose
    n_bins = 10
    # sklearn bins P(class 1) (not the confidence); bin the confidence max(p, 1-p) with it instead
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5).astype(int) == y).astype(int)
    acc, mean_conf = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0, 1, n_bins + 1))[0]
    counts = counts[counts > 0]
    ref = float((counts / counts.sum() * np.abs(acc - mean_conf)).sum())
    assert expected_calibration_error(p, y, n_bins=n_bins) == pytest.approx(ref, abs=1e-12)
    assert ref > 0.02  # the miscalibration is visible


def test_multiclass_table_consistent():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    t = reliability_table(probs, labels, n_bins=5)
    assert t["count"].sum() == 500
    full = t["count"] > 0
    ece = (t["count"][full] / 500 * np.abs(t["accuracy"][full] - t["confidence"][full])).sum()
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(ece)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error(np.array([0.2, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(np.array([0.2, 0.3]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(np.array([[0.2, 0.3]]), np.array([0]))
    with pytest.raises(ValueError, match="at least"):
        expected_calibration_error(np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([0.2]), np.array([0]), n_bins=0)


@pytest.mark.parametrize("labels", [[5, 7], [-1, 1], ["a", "b"], [float("nan"), 1.0], [0.5, 1.0]])
def test_labels_outside_the_classes_are_refused(labels):
    """A label that is no class index is an error, not a wrong prediction (ECE was scored on it silently)."""
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array(labels))


def test_numpy_integer_n_bins_equals_int():
    # n_bins=np.int64(10) (read from a config array) was refused as "must be an int"
    rng = np.random.default_rng(4)
    p, y = rng.uniform(0, 1, 200), rng.integers(0, 2, 200)
    assert expected_calibration_error(p, y, n_bins=np.int64(10)) == expected_calibration_error(p, y, n_bins=10)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(p, y, n_bins=np.bool_(True))
