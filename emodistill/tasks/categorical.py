"""Categorical tasks (the expression): one softmax over the classes, a class index per frame.

Ground truth is scored with a class-weighted cross entropy, a teacher's soft labels with KL,
and predictions with the ABAW EXPR metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from emodistill.tasks.kind import MAX_CLASS_WEIGHT, ColumnValues, Scores, Span, Task
from emodistill.tasks.scoring import (
    binary_f1,
    checked_class_labels,
    checked_probabilities,
    ece,
    nll_categorical,
    same_length,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

# The prediction table's column of the most likely class. EXPR is the one categorical task,
# and tables have always called its class "expression".
CLASS_COLUMN = "expression"


def expr_parts(y_true: np.ndarray, predicted: np.ndarray, n_classes: int) -> dict[str, float]:
    """Macro F1 over all `n_classes` classes and the accuracy of predicted class indices.

    A class absent from both truth and prediction counts as F1 0 in the macro mean, as in
    scikit-learn's f1_score(average="macro", labels=range(C), zero_division=0).
    """
    predicted = checked_class_labels("EXPR decisions", predicted, n_classes)
    truth = checked_class_labels("EXPR labels", y_true, n_classes)
    same_length(("EXPR labels", truth), ("EXPR decisions", predicted))
    f1 = np.mean([binary_f1(truth == k, predicted == k) for k in range(n_classes)])
    return {"F1": float(f1), "accuracy": float(np.mean(truth == predicted))}


def abaw_expr(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ABAW 2021 EXPR metric: 0.67 * macro F1 over the classes + 0.33 * accuracy of the most
    likely class."""
    prob = checked_probabilities("EXPR probabilities", prob, 2)
    parts = expr_parts(y_true, prob.argmax(1), prob.shape[1])
    return 0.67 * parts["F1"] + 0.33 * parts["accuracy"]


class CategoricalTask(Task):
    """One softmax over n_classes; a written label is one integer class index."""

    kind: ClassVar[str] = "categorical"
    panel_height: ClassVar[float] = 1.5

    @staticmethod
    def shape_for(n_names: int) -> tuple[int, int, int]:
        return n_names, 1, n_names

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)

    def label_frequencies(self, labels: np.ndarray) -> np.ndarray:
        """Each class's frequency."""
        labels = self._some_labels(labels)
        return np.bincount(labels.astype(np.int64), minlength=self.n_classes) / len(labels)

    def label_columns(self) -> tuple[str, ...]:
        """One column, the task's name in lower case: `expr`."""
        return (self.name.lower(),)

    def label_rule(self) -> str:
        return f"an integer 0..{self.n_classes - 1}"

    def allowed_labels(self, values: np.ndarray) -> np.ndarray:
        return (values == np.round(values)) & (values >= 0) & (values < self.n_classes)

    def caption(self, values: list[float]) -> str:
        """The class name, or the unknown index with a question mark."""
        known = 0 <= values[0] < self.n_classes
        return self.names[int(values[0])] if known else f"{self.name} {values[0]:g}?"

    def empty_labels(self, n: int) -> np.ndarray:
        return np.zeros(n, np.int64)

    def labels_from_columns(self, values: np.ndarray) -> np.ndarray:
        return values[:, 0]

    def label_marginals(self, labels: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Frequency of each class in the labels and in the truth."""
        return {"label_rate": np.bincount(labels, minlength=self.n_classes) / len(labels),
                "truth_rate": truth.mean(0)}

    def supervision_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor | None) -> torch.Tensor:
        """Eq. 4-5: class-weighted cross entropy, averaged with the valid frames' class weights."""
        log_probs = self.log_activate(logits)[..., 0, :]  # (n, 7)
        return F.nll_loss(log_probs, targets.long(), weight=weights)

    def distillation_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                          weights: torch.Tensor | None) -> torch.Tensor:
        """Eq. 10: KL(teacher || student) summed over classes, mean over frames (unweighted)."""
        log_probs = self.log_activate(logits)[..., 0, :]  # (n, 7)
        per_frame = (torch.special.xlogy(targets, targets) - targets * log_probs).sum(-1)  # (n,)
        return per_frame.mean()

    def loss_weights(self, labels: np.ndarray, reweight: bool, bins_weight: float) -> np.ndarray:
        """Inverse class frequency scaled so that the weights' mean over the training labels is 1
        (Eq. 5); a class never seen gets 100; ones without labels or reweighting."""
        labels = np.asarray(labels)
        if not reweight or len(labels) == 0:
            return np.ones(self.n_classes)
        frequency = np.bincount(labels.astype(np.int64), minlength=self.n_classes)[: self.n_classes] / len(labels)
        seen = frequency > 0
        # sum_k f_k * w_k = 1 with w_k proportional to 1 / f_k over the classes seen
        inverse = np.full(self.n_classes, MAX_CLASS_WEIGHT)
        inverse[seen] = 1.0 / (seen.sum() * frequency[seen])
        return np.minimum(inverse, MAX_CLASS_WEIGHT)

    def start_logits(self, frequencies: np.ndarray, weights: np.ndarray | None, distilled: bool) -> np.ndarray:
        """Log of p_c proportional to w_c q_c, the best constant under the class-weighted cross
        entropy; the frequencies q themselves for the unweighted KL of a student."""
        p = np.asarray(frequencies, np.float64)
        if weights is not None and not distilled:
            p = p * np.asarray(weights, np.float64)
        return np.log(np.clip(p / p.sum(), 1e-4, 1.0))

    def prior_shift(self, weights: np.ndarray | None, distilled: bool) -> np.ndarray | None:
        """log w for the class-weighted cross entropy (its optimum is proportional to w_c q_c; a
        softmax ignores the constant); none for a student's unweighted KL (Eq. 10)."""
        if weights is None:
            return None
        return np.zeros(self.n_logits) if distilled else np.log(np.asarray(weights, np.float64))

    def emotion_scores(self, truth: np.ndarray, probs: np.ndarray) -> tuple[float, ...]:
        return (abaw_expr(truth, probs),)

    def challenge_parts(self, truth: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        return expr_parts(truth, decisions, self.n_classes)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return self._outputs(probs).argmax(-1).astype(np.int64)

    def reliability_labels(self, labels: np.ndarray) -> np.ndarray:
        return labels

    def uncertainty_scores(self, labels: np.ndarray, probs: np.ndarray) -> Scores:
        """NLL of the true class and the ECE of the top class."""
        return {"nll": {self.name: nll_categorical(labels, probs)}, "ece": {self.name: ece(labels, probs)}}

    def skill_scores(self) -> dict[str, tuple[str, str]]:
        return dict.fromkeys(self.metric_names, ("nll", self.name))

    def group_targets(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(labels).astype(np.int64).reshape(-1, 1)  # (N, 1)

    def output_columns(self) -> list[str]:
        """The probability of each class, then the most likely class's name."""
        return [*(f"{self.name}_{name}" for name in self.names), CLASS_COLUMN]

    def output_values(self, probs: np.ndarray, decided: np.ndarray | None = None) -> dict[str, np.ndarray]:
        label = np.asarray(self.names, dtype=object)[(probs if decided is None else decided).argmax(-1)]
        return {**{f"{self.name}_{n}": p for n, p in zip(self.names, probs.T, strict=True)},
                CLASS_COLUMN: label}

    def output_names(self) -> tuple[str, ...]:
        return (CLASS_COLUMN,)

    def output_labels(self, row: dict[str, object]) -> list[str]:
        return [f"{CLASS_COLUMN.capitalize()}  {row[CLASS_COLUMN]}"]

    def draw_timeline(self, ax: Axes, values: ColumnValues, x: np.ndarray, step: float,
                      cmap: Colormap, no_face: list[Span]) -> None:
        """A heatmap of the class probabilities, one row per class."""
        self._draw_heatmap(ax, [f"{self.name}_{name}" for name in self.names], values, x, step, cmap)
