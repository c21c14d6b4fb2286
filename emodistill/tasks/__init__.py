"""The one description of the three emotion tasks: action units, expression, valence/arousal.

Everything else (models, losses, metrics, readers, reports) loops over `TASKS` instead of
repeating three blocks, and asks each task for the rules of its kind: `kind.Task` lists them,
and binary.py, categorical.py and binned.py implement them. A new kind is a new file with a
`Task` subclass and an entry in the table below.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from emodistill.tasks.binary import BinaryTask
from emodistill.tasks.binned import VA_BINS, VA_CENTRES, VA_EDGES, BinnedTask, va_expectation, va_to_bin
from emodistill.tasks.categorical import CategoricalTask
from emodistill.tasks.kind import Task
from emodistill.tasks.scoring import same_length

__all__ = [
    "AU", "EXPR", "METRIC_NAMES", "PAPER_AU_POSITIVE_RATE", "PAPER_AU_POS_WEIGHT", "PAPER_EXPR_RATE",
    "PAPER_EXPR_WEIGHT", "TASKS", "TASK_BY_NAME", "VA", "VA_BINS", "VA_CENTRES", "VA_EDGES", "Task",
    "emotion_metrics", "task", "va_expectation", "va_to_bin", "valid_rows",
]

AU = BinaryTask(
    name="AU", annotation_dir="AU_Set", invalid=-1, metric_names=("AU",), n_logits=12, n_groups=12, n_classes=2,
    names=("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"))
EXPR = CategoricalTask(
    name="EXPR", annotation_dir="EXPR_Set", invalid=-1, metric_names=("EXPR",), n_logits=7, n_groups=1, n_classes=7,
    names=("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"))
VA = BinnedTask(
    name="VA", annotation_dir="VA_Set", invalid=-5, metric_names=("valence", "arousal"), n_logits=2 * VA_BINS,
    n_groups=2, n_classes=VA_BINS, names=("valence", "arousal"))

TASKS: tuple[Task, ...] = (AU, EXPR, VA)
TASK_BY_NAME: dict[str, Task] = {task.name: task for task in TASKS}
METRIC_NAMES: tuple[str, ...] = tuple(m for task in TASKS for m in task.metric_names)

# Class weights the paper used on Aff-wild2 (Appendix A); training computes its own from the
# labels it sees (Eq. 3) unless told to use these.
PAPER_AU_POS_WEIGHT = (7.7, 24.7, 5.3, 2.9, 1.5, 1.9, 3.0, 32.3, 32.3, 32.3, 0.59, 11.5)
PAPER_EXPR_WEIGHT = (0.02, 0.2, 0.33, 0.24, 0.03, 0.05, 0.1)
# Paper's label imbalance, as frequencies the simulator reproduces: AU positive rate
# = 1 / (1 + p_c); expression class rate proportional to 1 / p_c.
PAPER_AU_POSITIVE_RATE = tuple(1.0 / (1.0 + p) for p in PAPER_AU_POS_WEIGHT)
PAPER_EXPR_RATE = tuple((1.0 / p) / sum(1.0 / q for q in PAPER_EXPR_WEIGHT) for p in PAPER_EXPR_WEIGHT)


def task(name: str) -> Task:
    """The task called `name` (AU, EXPR or VA); a clear error for anything else."""
    try:
        return TASK_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASK_BY_NAME)}") from None


def valid_rows(masks: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """The task's mask as bools, or every one of the n rows when the masks say nothing about the
    task (losses, calibration and metrics all read a missing mask so)."""
    return np.asarray(masks[name], dtype=bool) if name in masks else np.ones(n, dtype=bool)


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
        same_length((f"{task.name} labels", truth), (f"{task.name} probabilities", task_probs))
        valid = valid_rows(masks, task.name, len(truth))
        if valid.shape != (len(truth),):
            raise ValueError(f"{task.name} mask has shape {valid.shape}, expected ({len(truth)},)")
        if not valid.any():
            continue
        if task_probs.shape[1:] != (task.n_logits,):
            raise ValueError(f"{task.name} probabilities should have {task.n_logits} columns, "
                             f"got shape {task_probs.shape}")
        scores = task.emotion_scores(truth[valid], task_probs[valid])
        results.update(zip(task.metric_names, scores, strict=True))
    results["total"] = float(sum(results.values()))
    return results
