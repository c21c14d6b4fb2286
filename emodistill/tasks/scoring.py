"""The checked NumPy measures the task kinds score with: F1, NLL, RMSE, CCC, calibration error.

They sit here, below every stage, because each task kind names its own metric and its own
uncertainty scores; `evaluation.metrics` re-exports them. Inputs are checked at this boundary:
a wrong shape or a NaN raises ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PROB_CLIP = 1e-7  # probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] inside NLLs


def checked_array(name: str, values: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """`values` as a finite, non-empty float array of `ndim` axes, else ValueError."""
    array = np.asarray(values, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} should have {ndim} axes, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def same_length(*named: tuple[str, np.ndarray]) -> None:
    """ValueError unless all arrays have the same number of rows."""
    lengths = {name: len(array) for name, array in named}
    if len(set(lengths.values())) > 1:
        raise ValueError("row counts differ: " + ", ".join(f"{n} {k}" for n, k in lengths.items()))


def checked_probabilities(name: str, prob: np.ndarray, ndim: int | None) -> np.ndarray:
    """A checked probability array in [0, 1] (float32 round-off of 1e-6 outside is clipped)."""
    array = checked_array(name, prob, ndim)
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(f"{name} should hold probabilities in [0, 1], got values "
                         f"from {array.min():g} to {array.max():g}")
    return np.clip(array, 0.0, 1.0)


def checked_class_labels(name: str, y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """Checked integer class labels in 0..n_classes-1, shape (N,)."""
    array = checked_array(name, y_true, 1)
    if (array != np.round(array)).any() or array.min() < 0 or array.max() >= n_classes:
        raise ValueError(f"{name} should hold class indices 0..{n_classes - 1}")
    return array.astype(np.int64)


def checked_binary_labels(name: str, y_true: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Checked 0/1 labels of the given shape."""
    array = checked_array(name, y_true)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} should hold only 0 and 1")
    return array.astype(np.int64)


def valid_rows(masks: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """The task's mask as bools, or every one of the n rows when the masks say nothing about the
    task (losses, calibration and metrics all read a missing mask so)."""
    return np.asarray(masks[name], dtype=bool) if name in masks else np.ones(n, dtype=bool)


def binary_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Binary F1 of boolean arrays; 0 when there is no positive in either (zero_division=0)."""
    true_positive = np.sum(truth & predicted)
    denominator = np.sum(truth) + np.sum(predicted)
    return 0.0 if denominator == 0 else float(2 * true_positive / denominator)


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Concordance correlation coefficient (Eq. 6) with population statistics.

    When both inputs are constant there is no covariance to measure (equal constants make
    it 0/0); that is reported as 0, as the training loss's epsilon gives.
    """
    truth = checked_array("CCC targets", y_true, 1)
    prediction = checked_array("CCC predictions", y_pred, 1)
    same_length(("CCC targets", truth), ("CCC predictions", prediction))
    if np.ptp(truth) == 0 and np.ptp(prediction) == 0:
        return 0.0  # checked exactly: round-off in the means would make 0/0 look like 1
    covariance = np.mean((truth - truth.mean()) * (prediction - prediction.mean()))
    denominator = truth.var() + prediction.var() + (truth.mean() - prediction.mean()) ** 2
    return float(2 * covariance / denominator)


def nll_binary(y_true: np.ndarray, prob: np.ndarray,
               per_column: bool = False) -> float | np.ndarray:
    """Mean binary negative log-likelihood (nats); per_column=True -> one value per column."""
    prob = np.clip(checked_probabilities("probabilities", prob, None), PROB_CLIP, 1 - PROB_CLIP)
    truth = checked_binary_labels("labels", y_true, prob.shape)
    per_entry = -np.where(truth == 1, np.log(prob), np.log1p(-prob))
    return per_entry.mean(0) if per_column else float(per_entry.mean())


def nll_categorical(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of the true class; prob (N, C), y_true (N,)."""
    prob = checked_probabilities("probabilities", prob, 2)
    truth = checked_class_labels("labels", y_true, prob.shape[1])
    same_length(("labels", truth), ("probabilities", prob))
    picked = np.clip(prob[np.arange(len(truth)), truth], PROB_CLIP, 1 - PROB_CLIP)
    return float(-np.log(picked).mean())


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over all entries."""
    truth, prediction = checked_array("targets", y_true), checked_array("predictions", y_pred)
    if truth.shape != prediction.shape:
        raise ValueError(f"targets {truth.shape} and predictions {prediction.shape} differ")
    return float(np.sqrt(np.mean((truth - prediction) ** 2)))


def _confidence_and_correct(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary when shapes match (every entry a 2-class decision), categorical otherwise."""
    prob = np.asarray(prob)
    if np.shape(y_true) == prob.shape:
        prob = checked_probabilities("probabilities", prob, None)
        truth = checked_binary_labels("labels", y_true, prob.shape)
        return np.maximum(prob, 1 - prob).ravel(), ((prob > 0.5) == truth).ravel()
    prob = checked_probabilities("probabilities", prob, 2)
    truth = checked_class_labels("labels", y_true, prob.shape[1])
    same_length(("labels", truth), ("probabilities", prob))
    return prob.max(1), prob.argmax(1) == truth


def reliability(y_true: np.ndarray, prob: np.ndarray,
                n_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability diagram: mean confidence, accuracy and count per confidence bin.

    Bin k holds confidences in (k/n_bins, (k+1)/n_bins] (0 goes to bin 0); an empty bin has
    NaN confidence and accuracy. Binary/categorical as in `ece`.
    """
    confidence, correct = _confidence_and_correct(y_true, prob)
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        bin_accuracy = np.bincount(bins, weights=correct.astype(float), minlength=n_bins) / count
    return bin_confidence, bin_accuracy, count


def ece(y_true: np.ndarray, prob: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: sum over bins of (share of samples) x |accuracy - confidence|.

    Binary when y_true.shape == prob.shape (each entry's confidence is max(p, 1 - p)),
    categorical otherwise (the top class's probability, correct when it is the label).
    """
    bin_confidence, bin_accuracy, count = reliability(y_true, prob, n_bins)
    filled = count > 0
    gaps = np.abs(bin_accuracy[filled] - bin_confidence[filled])
    return float(np.sum(count[filled] * gaps) / count.sum())
