"""Emotion metrics (ABAW: F1/accuracy mixes, CCC), in-domain uncertainty metrics (NLL, RMSE,
calibration error) and ROC for out-of-domain detection: pure NumPy functions of arrays.

Each task kind defines its own metric next to the task table (tasks.binary.abaw_au, ...), on
the checked measures of tasks.scoring, and `tasks.emotion_metrics` sums them (training picks
its best epoch by it); they are re-exported here, where evaluation looks for them. Inputs are
checked at the boundary: a wrong shape or a NaN raises ValueError.
"""

from __future__ import annotations

import numpy as np

from emodistill.tasks import emotion_metrics, va_to_bin
from emodistill.tasks.binary import abaw_au
from emodistill.tasks.categorical import abaw_expr
from emodistill.tasks.scoring import (
    PROB_CLIP,
    ccc,
    checked_array,
    ece,
    nll_binary,
    nll_categorical,
    reliability,
    rmse,
)

__all__ = [
    "PROB_CLIP", "abaw_au", "abaw_expr", "ccc", "ece", "emotion_metrics", "nll_binary", "nll_binned",
    "nll_categorical", "reliability", "rmse", "roc_auc", "roc_curve",
]


def nll_binned(values: np.ndarray, prob: np.ndarray) -> float:
    """NLL of the bin holding each valence (or arousal) value; prob (N, 20) over the bins."""
    values = checked_array("values", values, 1)
    return nll_categorical(va_to_bin(values), prob)


def roc_curve(is_positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of a score where higher means positive: (fpr, tpr), from (0, 0) to (1, 1).

    One point per distinct score value, so tied scores form one step (a diagonal segment).
    """
    positive = np.asarray(is_positive)
    score = checked_array("scores", score, 1)
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
