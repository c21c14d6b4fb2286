"""Emotion metrics (ABAW: F1/accuracy mixes, CCC), in-domain uncertainty metrics (NLL, RMSE,
calibration error) and ROC for out-of-domain detection: pure NumPy functions of arrays.

Inputs are checked here, at the boundary: a wrong shape or a NaN raises ValueError.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from emodistill.tasks import TASKS, Task, va_expectation, va_to_bin

PROB_CLIP = 1e-7  # probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] inside NLLs


def _array(name: str, values: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """`values` as a finite, non-empty float array of `ndim` axes, else ValueError."""
    array = np.asarray(values, dtype=np.float64)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} should have {ndim} axes, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _same_length(*named: tuple[str, np.ndarray]) -> None:
    """ValueError unless all arrays have the same number of rows."""
    lengths = {name: len(array) for name, array in named}
    if len(set(lengths.values())) > 1:
        raise ValueError("row counts differ: " + ", ".join(f"{n} {k}" for n, k in lengths.items()))


def _probabilities(name: str, prob: np.ndarray, ndim: int | None) -> np.ndarray:
    """A checked probability array in [0, 1] (float32 round-off of 1e-6 outside is clipped)."""
    array = _array(name, prob, ndim)
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(f"{name} should hold probabilities in [0, 1], got values "
                         f"from {array.min():g} to {array.max():g}")
    return np.clip(array, 0.0, 1.0)


def _class_labels(name: str, y_true: np.ndarray, n_classes: int) -> np.ndarray:
    """Checked integer class labels in 0..n_classes-1, shape (N,)."""
    array = _array(name, y_true, 1)
    if (array != np.round(array)).any() or array.min() < 0 or array.max() >= n_classes:
        raise ValueError(f"{name} should hold class indices 0..{n_classes - 1}")
    return array.astype(np.int64)


def _binary_labels(name: str, y_true: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Checked 0/1 labels of the given shape."""
    array = _array(name, y_true)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} should hold only 0 and 1")
    return array.astype(np.int64)


def _f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Binary F1 of boolean arrays; 0 when there is no positive in either (zero_division=0)."""
    true_positive = np.sum(truth & predicted)
    denominator = np.sum(truth) + np.sum(predicted)
    return 0.0 if denominator == 0 else float(2 * true_positive / denominator)


def abaw_au(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ABAW AU metric: 0.5 * mean binary F1 over the AUs + 0.5 * accuracy over all entries.

    An AU is predicted present when its probability is above 0.5.
    """
    prob = _probabilities("AU probabilities", prob, 2)
    truth = _binary_labels("AU labels", y_true, prob.shape).astype(bool)  # (N, 12)
    predicted = prob > 0.5
    f1 = np.mean([_f1(truth[:, c], predicted[:, c]) for c in range(prob.shape[1])])
    return float(0.5 * f1 + 0.5 * np.mean(truth == predicted))


def abaw_expr(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ABAW EXPR metric: 0.67 * macro F1 over the 7 classes + 0.33 * accuracy.

    A class absent from both truth and prediction counts as F1 0 in the macro mean, as in
    scikit-learn's f1_score(average="macro", labels=range(7), zero_division=0).
    """
    prob = _probabilities("EXPR probabilities", prob, 2)
    truth = _class_labels("EXPR labels", y_true, prob.shape[1])
    _same_length(("EXPR labels", truth), ("EXPR probabilities", prob))
    predicted = prob.argmax(1)
    f1 = np.mean([_f1(truth == k, predicted == k) for k in range(prob.shape[1])])
    return float(0.67 * f1 + 0.33 * np.mean(truth == predicted))


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Concordance correlation coefficient (Eq. 6) with population statistics.

    When both inputs are constant there is no covariance to measure (equal constants make
    it 0/0); that is reported as 0, as the training loss's epsilon gives.
    """
    truth, prediction = _array("CCC targets", y_true, 1), _array("CCC predictions", y_pred, 1)
    _same_length(("CCC targets", truth), ("CCC predictions", prediction))
    if np.ptp(truth) == 0 and np.ptp(prediction) == 0:
        return 0.0  # checked exactly: round-off in the means would make 0/0 look like 1
    covariance = np.mean((truth - truth.mean()) * (prediction - prediction.mean()))
    denominator = truth.var() + prediction.var() + (truth.mean() - prediction.mean()) ** 2
    return float(2 * covariance / denominator)


def nll_binary(y_true: np.ndarray, prob: np.ndarray,
               per_column: bool = False) -> float | np.ndarray:
    """Mean binary negative log-likelihood (nats); per_column=True -> one value per column."""
    prob = np.clip(_probabilities("probabilities", prob, None), PROB_CLIP, 1 - PROB_CLIP)
    truth = _binary_labels("labels", y_true, prob.shape)
    per_entry = -np.where(truth == 1, np.log(prob), np.log1p(-prob))
    return per_entry.mean(0) if per_column else float(per_entry.mean())


def nll_categorical(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of the true class; prob (N, C), y_true (N,)."""
    prob = _probabilities("probabilities", prob, 2)
    truth = _class_labels("labels", y_true, prob.shape[1])
    _same_length(("labels", truth), ("probabilities", prob))
    picked = np.clip(prob[np.arange(len(truth)), truth], PROB_CLIP, 1 - PROB_CLIP)
    return float(-np.log(picked).mean())


def nll_binned(values: np.ndarray, prob: np.ndarray) -> float:
    """NLL of the bin holding each valence (or arousal) value; prob (N, 20) over the bins."""
    values = _array("values", values, 1)
    return nll_categorical(va_to_bin(values), prob)


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Root mean squared error over all entries."""
    truth, prediction = _array("targets", y_true), _array("predictions", y_pred)
    if truth.shape != prediction.shape:
        raise ValueError(f"targets {truth.shape} and predictions {prediction.shape} differ")
    return float(np.sqrt(np.mean((truth - prediction) ** 2)))


def _confidence_and_correct(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary when shapes match (every entry a 2-class decision), categorical otherwise."""
    prob = np.asarray(prob)
    if np.shape(y_true) == prob.shape:
        prob = _probabilities("probabilities", prob, None)
        truth = _binary_labels("labels", y_true, prob.shape)
        return np.maximum(prob, 1 - prob).ravel(), ((prob > 0.5) == truth).ravel()
    prob = _probabilities("probabilities", prob, 2)
    truth = _class_labels("labels", y_true, prob.shape[1])
    _same_length(("labels", truth), ("probabilities", prob))
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


def roc_curve(is_positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of a score where higher means positive: (fpr, tpr), from (0, 0) to (1, 1).

    One point per distinct score value, so tied scores form one step (a diagonal segment).
    """
    positive = np.asarray(is_positive)
    score = _array("scores", score, 1)
    if positive.shape != score.shape:
        raise ValueError(f"is_positive {positive.shape} and scores {score.shape} differ in shape")
    positive = positive.astype(bool)
    if positive.all() or not positive.any():
        raise ValueError("ROC needs both positive and negative samples")
    order = np.argsort(-score, kind="stable")
    sorted_score, sorted_positive = score[order], positive[order]
    # last index of each run of equal scores: the curve only moves between distinct values
    ends = np.r_[np.flatnonzero(np.diff(sorted_score)), len(score) - 1]
    true_positives = np.cumsum(sorted_positive)[ends]
    false_positives = (ends + 1) - true_positives
    tpr = np.r_[0.0, true_positives / positive.sum()]
    fpr = np.r_[0.0, false_positives / (~positive).sum()]
    return fpr, tpr


def roc_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half, as in scikit-learn's roc_auc_score)."""
    fpr, tpr = roc_curve(is_positive, score)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _task_scores(task: Task, truth: np.ndarray, probs: np.ndarray) -> tuple[float, ...]:
    """The task's emotion metrics, in the order of task.metric_names."""
    if task.kind == "binary":
        return (abaw_au(truth, probs),)
    if task.kind == "categorical":
        return (abaw_expr(truth, probs),)
    prediction = va_expectation(probs)  # (n, 2)
    return tuple(ccc(truth[:, d], prediction[:, d]) for d in range(task.n_groups))


def emotion_metrics(y_true: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray],
                    masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """ABAW metrics of every task with a valid label, and their sum as "total".

    y_true in the `Split` label format, probs task -> (N, n_logits), masks task -> (N,) bool
    (a task missing from masks: every frame valid). VA is scored on the expectation.
    """
    results: dict[str, float] = {}
    for task in TASKS:
        if task.name not in y_true or task.name not in probs:
            continue
        truth, task_probs = np.asarray(y_true[task.name]), np.asarray(probs[task.name])
        _same_length((f"{task.name} labels", truth), (f"{task.name} probabilities", task_probs))
        valid = np.asarray(masks.get(task.name, np.ones(len(truth), dtype=bool)), dtype=bool)
        if valid.shape != (len(truth),):
            raise ValueError(f"{task.name} mask has shape {valid.shape}, expected ({len(truth)},)")
        if not valid.any():
            continue
        if task_probs.shape[1:] != (task.n_logits,):
            raise ValueError(f"{task.name} probabilities should have {task.n_logits} columns, "
                             f"got shape {task_probs.shape}")
        scores = _task_scores(task, truth[valid], task_probs[valid])
        results.update(zip(task.metric_names, scores, strict=True))
    results["total"] = float(sum(results.values()))
    return results
