"""The one description of the three emotion tasks: action units, expression, valence/arousal.

Everything else (models, losses, metrics, readers, reports) loops over `TASKS` instead of
repeating three blocks. Binning follows REFERENCE.md Sec. 2: 20 equal bins over [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Valence/arousal binning: bin k covers [-1 + k/10, -1 + (k+1)/10); 1.0 goes to the last bin.
VA_BINS = 20
VA_EDGES = np.linspace(-1.0, 1.0, VA_BINS + 1)
VA_CENTRES = (VA_EDGES[:-1] + VA_EDGES[1:]) / 2  # -0.95, -0.85, ..., 0.95


@dataclass(frozen=True)
class Task:
    """One emotion task: its outputs, their activation and the Aff-wild2 file conventions."""

    name: str  # "AU" | "EXPR" | "VA"
    kind: str  # "binary": independent sigmoids; "categorical": one softmax; "binned": softmax per dimension
    names: tuple[str, ...]  # AU names, expression classes, or ("valence", "arousal")
    n_logits: int  # width of the model's output for this task
    n_groups: int  # distributions per frame: 12 AUs, 1 expression, 2 VA dimensions
    n_classes: int  # classes of each distribution: 2, 7, 20
    annotation_dir: str  # Aff-wild2 folder under annotations/
    invalid: float  # the marker an annotator wrote for "no label"
    metric_names: tuple[str, ...]  # keys this task contributes to the emotion metrics

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (..., n_logits) -> probabilities of the same shape."""
        if self.kind == "binary":
            return torch.sigmoid(logits)
        if self.kind == "categorical":
            return torch.softmax(logits, dim=-1)
        grouped = logits.unflatten(-1, (self.n_groups, self.n_classes))
        return torch.softmax(grouped, dim=-1).flatten(-2)

    def log_activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities as distributions (..., n_groups, n_classes), numerically stable."""
        if self.kind == "binary":
            return torch.stack([torch.nn.functional.logsigmoid(-logits),
                                torch.nn.functional.logsigmoid(logits)], dim=-1)
        grouped = logits.unflatten(-1, (self.n_groups, self.n_classes))
        return torch.log_softmax(grouped, dim=-1)

    def label_frequencies(self, labels: np.ndarray) -> np.ndarray:
        """Valid labels of this task -> the class-prior prediction (n_logits,): AU positive rates,
        expression class frequencies, or each VA dimension's histogram over the 20 bins."""
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise ValueError(f"no valid {self.name} label to take frequencies from")
        if self.kind == "binary":
            return labels.astype(np.float64).mean(0)
        if self.kind == "categorical":
            return np.bincount(labels.astype(np.int64), minlength=self.n_classes) / len(labels)
        bins = va_to_bin(labels)  # (N, 2)
        return np.concatenate([np.bincount(bins[:, d], minlength=self.n_classes) / len(labels)
                               for d in range(self.n_groups)])

    def distributions(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities (..., n_logits) -> one distribution per group (..., n_groups, n_classes).

        For AUs the two classes are (absent, present).
        """
        probs = np.asarray(probs)
        if probs.shape[-1] != self.n_logits:
            raise ValueError(
                f"expected {self.n_logits} {self.name} outputs in the last axis, got {probs.shape[-1]}"
            )
        if self.kind == "binary":
            return np.stack([1.0 - probs, probs], axis=-1)
        return probs.reshape(*probs.shape[:-1], self.n_groups, self.n_classes)


AU = Task(
    name="AU",
    kind="binary",
    names=("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"),
    n_logits=12,
    n_groups=12,
    n_classes=2,
    annotation_dir="AU_Set",
    invalid=-1,
    metric_names=("AU",),
)

EXPR = Task(
    name="EXPR",
    kind="categorical",
    names=("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"),
    n_logits=7,
    n_groups=1,
    n_classes=7,
    annotation_dir="EXPR_Set",
    invalid=-1,
    metric_names=("EXPR",),
)

VA = Task(
    name="VA",
    kind="binned",
    names=("valence", "arousal"),
    n_logits=2 * VA_BINS,
    n_groups=2,
    n_classes=VA_BINS,
    annotation_dir="VA_Set",
    invalid=-5,
    metric_names=("valence", "arousal"),
)

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


def va_to_bin(values: np.ndarray) -> np.ndarray:
    """Valence/arousal values in [-1, 1] -> bin indices 0..19 (1.0 goes to bin 19)."""
    values = np.asarray(values, dtype=np.float64)
    bins = np.floor((values + 1.0) * (VA_BINS / 2.0)).astype(np.int64)
    return np.clip(bins, 0, VA_BINS - 1)


def va_expectation(probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """VA probabilities (..., 40) -> expected (valence, arousal) (..., 2) over the bin centres."""
    if isinstance(probs, torch.Tensor):
        grouped = probs.unflatten(-1, (2, VA_BINS))
        centres = torch.as_tensor(VA_CENTRES, dtype=probs.dtype, device=probs.device)
        return (grouped * centres).sum(-1)
    grouped = np.asarray(probs).reshape(*np.shape(probs)[:-1], 2, VA_BINS)
    return (grouped * VA_CENTRES).sum(-1)
