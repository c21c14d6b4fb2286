"""Binary tasks (the action units): one independent sigmoid per output, labels 0/1.

Each output is a two-class distribution (absent, present); the ABAW AU metric scores them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from emodistill.tasks.kind import MAX_CLASS_WEIGHT, ColumnValues, Scores, Span, Task
from emodistill.tasks.scoring import (
    binary_f1,
    checked_binary_labels,
    checked_probabilities,
    ece,
    nll_binary,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

PRESENT = 0.5  # the ABAW threshold: an output above it is predicted present


def au_parts(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Mean binary F1 over the AUs and the accuracy over all N x 12 entries of 0/1 decisions."""
    predicted = checked_binary_labels("AU decisions", predicted, np.shape(predicted)).astype(bool)  # (N, 12)
    truth = checked_binary_labels("AU labels", y_true, predicted.shape).astype(bool)
    f1 = np.mean([binary_f1(truth[:, c], predicted[:, c]) for c in range(predicted.shape[1])])
    return {"F1": float(f1), "accuracy": float(np.mean(truth == predicted))}


def abaw_au(y_true: np.ndarray, prob: np.ndarray) -> float:
    """ABAW 2021 AU metric: 0.5 * mean binary F1 over the AUs + 0.5 * accuracy over all entries;
    an AU is predicted present when its probability is above 0.5."""
    prob = checked_probabilities("AU probabilities", prob, 2)
    parts = au_parts(y_true, (prob > PRESENT).astype(np.int64))
    return 0.5 * parts["F1"] + 0.5 * parts["accuracy"]


class BinaryTask(Task):
    """Independent sigmoids, one per output; written labels are 0 or 1."""

    kind: ClassVar[str] = "binary"
    panel_height: ClassVar[float] = 2.2

    @staticmethod
    def shape_for(n_names: int) -> tuple[int, int, int]:
        return n_names, n_names, 2

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def loss_weights(self, labels: np.ndarray, reweight: bool, bins_weight: float) -> np.ndarray:
        """p_c = #negatives / #positives of each output (Eq. 3), clipped to [1/100, 100]: an output
        never positive gets 100, one never negative 1/100; ones without labels or reweighting."""
        labels = np.asarray(labels)
        if not reweight or len(labels) == 0:
            return np.ones(self.n_logits)
        positives = (labels > 0.5).sum(0)
        ratio = (len(labels) - positives) / np.maximum(positives, 1)
        ratio[positives == 0] = MAX_CLASS_WEIGHT
        return np.clip(ratio, 1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT)

    def start_logits(self, frequencies: np.ndarray, weights: np.ndarray | None, distilled: bool) -> np.ndarray:
        """Log-odds of w q / (w q + 1 - q), the best constant under BCE with weight w on the
        positive term (both losses): the rate q itself without reweighting."""
        q = np.asarray(frequencies, np.float64)
        w = 1.0 if weights is None else np.asarray(weights, np.float64)
        p = np.clip(w * q / (w * q + 1 - q), 1e-4, 1 - 1e-4)
        return np.log(p) - np.log1p(-p)

    def prior_shift(self, weights: np.ndarray | None, distilled: bool) -> np.ndarray | None:
        """log w: with weight w on the positive term the optimum is w q / (w q + 1 - q), whose
        log-odds are those of q plus log w, against labels and soft labels alike (Eq. 2, 9)."""
        return None if weights is None else np.log(np.asarray(weights, np.float64))

    def log_activate(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., n, 2): log P(absent), log P(present), stable for large logits."""
        return torch.stack([torch.nn.functional.logsigmoid(-logits),
                            torch.nn.functional.logsigmoid(logits)], dim=-1)

    def logits_from_log_probs(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(..., n, 2) -> (..., n): the log-odds of presence."""
        return log_probs[..., 1] - log_probs[..., 0]

    def distributions(self, probs: np.ndarray) -> np.ndarray:
        """P(present) (..., n) -> (..., n, 2) over (absent, present)."""
        probs = self._outputs(probs)
        return np.stack([1.0 - probs, probs], axis=-1)

    def label_frequencies(self, labels: np.ndarray) -> np.ndarray:
        """Each output's positive rate."""
        return self._some_labels(labels).astype(np.float64).mean(0)

    def label_rule(self) -> str:
        return "0 or 1"

    def allowed_labels(self, values: np.ndarray) -> np.ndarray:
        return (values == 0) | (values == 1)

    def caption(self, values: list[float]) -> str:
        """The outputs present, e.g. "AU2 AU12", or "no AU"."""
        present = [name for name, v in zip(self.names, values, strict=True) if v > PRESENT]
        return " ".join(present) if present else f"no {self.name}"

    def label_marginals(self, labels: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Positive rate of each output in the labels and in the truth."""
        return {"label_rate": labels.mean(0), "truth_rate": truth.mean(0)}

    def supervision_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor | None) -> torch.Tensor:
        """Eq. 1-2 and 8-9: BCE with p_c on the positive term, mean over outputs and frames.

        Targets may be 0/1 labels or a teacher's probabilities.
        """
        log_probs = self.log_activate(logits)  # (n, 12, 2): log P(absent), log P(present)
        pos_weight = 1.0 if weights is None else weights
        per_entry = -(pos_weight * targets * log_probs[..., 1] + (1 - targets) * log_probs[..., 0])
        return per_entry.mean()

    def emotion_scores(self, truth: np.ndarray, probs: np.ndarray) -> tuple[float, ...]:
        return (abaw_au(truth, probs),)

    def challenge_parts(self, truth: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        return au_parts(truth, decisions)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return (self._outputs(probs) > PRESENT).astype(np.float32)

    def reliability_labels(self, labels: np.ndarray) -> np.ndarray:
        return labels.astype(int)

    def uncertainty_scores(self, labels: np.ndarray, probs: np.ndarray) -> Scores:
        """NLL of each output and their mean, and the ECE of all entries."""
        y = self.reliability_labels(labels)
        per_output = nll_binary(y, probs, per_column=True)
        return {"nll": {self.name: [float(v) for v in per_output],
                        f"{self.name}_mean": float(np.mean(per_output))},
                "ece": {self.name: ece(y, probs)}}

    def skill_scores(self) -> dict[str, tuple[str, str]]:
        return dict.fromkeys(self.metric_names, ("nll", f"{self.name}_mean"))

    def softmax_logits(self, logits: np.ndarray) -> np.ndarray:
        """An output's logit x is the 2-class softmax over (0, x), whose second probability is
        sigmoid(x)."""
        logits = np.asarray(logits, dtype=np.float64)
        return np.stack([np.zeros_like(logits), logits], axis=-1)  # (N, 12, 2)

    def group_targets(self, labels: np.ndarray) -> np.ndarray:
        return (np.asarray(labels) > PRESENT).astype(np.int64)  # (N, 12): 0 absent, 1 present

    def output_columns(self) -> list[str]:
        """P(present) of each output, then its 0/1 decision."""
        return [*self.names, *(f"{name}_present" for name in self.names)]

    def output_values(self, probs: np.ndarray, decided: np.ndarray | None = None) -> dict[str, np.ndarray]:
        present = ((probs if decided is None else decided) >= PRESENT).astype(np.int64)
        return {**dict(zip(self.names, probs.T, strict=True)),
                **{f"{n}_present": p for n, p in zip(self.names, present.T, strict=True)}}

    def output_labels(self, row: dict[str, object]) -> list[str]:
        return [f"{name}  {row[f'{name}_present']}" for name in self.names]

    def draw_timeline(self, ax: Axes, values: ColumnValues, x: np.ndarray, step: float,
                      cmap: Colormap, no_face: list[Span]) -> None:
        """A heatmap of P(present), one row per output."""
        self._draw_heatmap(ax, list(self.names), values, x, step, cmap)
