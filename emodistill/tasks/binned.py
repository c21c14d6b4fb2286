"""Binned tasks (valence/arousal): values in [-1, 1], predicted as a softmax over 20 bins per
dimension and read out as the expectation over the bin centres.

Binning: 20 equal bins over [-1, 1], the value 1.0 in the last. Losses and metrics compare
the expectation with the values by CCC (Eq. 6-7, 11).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from emodistill.tasks.kind import ColumnValues, Scores, Span, Task
from emodistill.tasks.scoring import ccc, rmse

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

# Valence/arousal binning: bin k covers [-1 + k/10, -1 + (k+1)/10); 1.0 goes to the last bin.
VA_BINS = 20
VA_EDGES = np.linspace(-1.0, 1.0, VA_BINS + 1)
VA_CENTRES = (VA_EDGES[:-1] + VA_EDGES[1:]) / 2  # -0.95, -0.85, ..., 0.95
# Keeps CCC finite (and its gradient finite) when predictions or targets are constant.
CCC_EPS = 1e-8
LINE_COLOURS = ("#c44e52", "#4c72b0")  # of each dimension in a prediction timeline


def va_to_bin(values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Valence/arousal values in [-1, 1] -> bin indices 0..19 (1.0 goes to bin 19), int64."""
    if isinstance(values, torch.Tensor):
        return torch.floor((values + 1.0) * (VA_BINS / 2.0)).long().clamp(0, VA_BINS - 1)
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


def ccc_torch(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient (Eq. 6) over the first axis, population statistics.

    target, prediction: (N, D) -> (D,). CCC_EPS in the denominator makes constant inputs give
    CCC 0 with finite gradients instead of 0/0.
    """
    target_mean, prediction_mean = target.mean(0), prediction.mean(0)
    covariance = ((target - target_mean) * (prediction - prediction_mean)).mean(0)
    denominator = (target.var(0, unbiased=False) + prediction.var(0, unbiased=False)
                   + (target_mean - prediction_mean) ** 2 + CCC_EPS)
    return 2 * covariance / denominator


class BinnedTask(Task):
    """One softmax over the bins of each dimension; a written label is one value per dimension."""

    kind: ClassVar[str] = "binned"
    panel_height: ClassVar[float] = 1.5
    # Valence and arousal are read out and scored as expectations (RMSE, CCC): a bias per bin
    # would pull every expectation towards the histogram's mean and shrink the spread CCC rewards.
    calibrated: ClassVar[bool] = False

    @staticmethod
    def shape_for(n_names: int) -> tuple[int, int, int]:
        return n_names * VA_BINS, n_names, VA_BINS

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        grouped = logits.unflatten(-1, (self.n_groups, self.n_classes))
        return torch.softmax(grouped, dim=-1).flatten(-2)

    def label_frequencies(self, labels: np.ndarray) -> np.ndarray:
        """Each dimension's histogram over the bins."""
        labels = self._some_labels(labels)
        bins = va_to_bin(labels)  # (N, 2)
        return np.concatenate([np.bincount(bins[:, d], minlength=self.n_classes) / len(labels)
                               for d in range(self.n_groups)])

    def label_rule(self) -> str:
        return "a number in [-1, 1]"

    def allowed_labels(self, values: np.ndarray) -> np.ndarray:
        return (values >= -1) & (values <= 1)

    def caption(self, values: list[float]) -> str:
        """Each dimension's initial and value: "V +0.50  A -0.25"."""
        return "  ".join(f"{name[0].upper()} {v:+.2f}" for name, v in zip(self.names, values, strict=True))

    def annotation_line(self, row: np.ndarray) -> str:
        """Values with 4 decimals."""
        return ",".join(f"{v:.4f}" for v in row)

    def label_marginals(self, labels: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Mean and spread of each dimension's sampled values."""
        return {"mean": labels.mean(0), "std": labels.std(0)}

    def supervision_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor | None) -> torch.Tensor:
        """Eq. 7 and 11: sum over the dimensions of 1 - CCC between the expectation and the targets.

        Targets are (n, 2) values (ground truth) or (n, 40) bin probabilities (a teacher).
        `weights` (1,), when given, adds that much of a loss on the bins' shape, summed over the
        dimensions and averaged over the frames: the cross entropy against each value's bin, or
        the KL divergence from a teacher's bins (None: the paper's 1 - CCC alone).
        """
        prediction = va_expectation(self.activate(logits))  # (n, 2)
        teacher = targets.shape[-1] != prediction.shape[-1]
        values = va_expectation(targets) if teacher else targets  # (n, 2)
        loss = (1 - ccc_torch(values.to(prediction.dtype), prediction)).sum()
        if weights is None:
            return loss
        log_probs = self.log_activate(logits)  # (n, 2, 20)
        if teacher:
            soft = targets.to(log_probs.dtype).unflatten(-1, (self.n_groups, self.n_classes))
            bins = (torch.special.xlogy(soft, soft) - soft * log_probs).sum(-1)  # (n, 2)
        else:
            bins = -log_probs.gather(-1, va_to_bin(targets).unsqueeze(-1)).squeeze(-1)  # (n, 2)
        return loss + weights[0] * bins.sum(-1).mean()

    def loss_weights(self, labels: np.ndarray, reweight: bool, bins_weight: float) -> np.ndarray | None:
        """(bins_weight,) when the loss on the bins' shape is on (`--va-bins`), else None: the
        paper's 1 - CCC has no class weights."""
        return np.array([bins_weight]) if bins_weight > 0 else None

    def start_logits(self, frequencies: np.ndarray, weights: np.ndarray | None, distilled: bool) -> None:
        """None: 1 - CCC has no best constant (every constant scores CCC 0), and a bias at the
        label histogram would saturate the empty bins' softmax and slow the start."""
        return None

    def emotion_scores(self, truth: np.ndarray, probs: np.ndarray) -> tuple[float, ...]:
        """CCC of each dimension's expectation."""
        prediction = va_expectation(probs)  # (n, 2)
        return tuple(ccc(truth[:, d], prediction[:, d]) for d in range(self.n_groups))

    def challenge_parts(self, truth: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        """CCC of each dimension's predicted values: "CCC_valence", "CCC_arousal"."""
        return {f"CCC_{name}": ccc(truth[:, d], decisions[:, d]) for d, name in enumerate(self.names)}

    def decide(self, probs: np.ndarray) -> np.ndarray:
        return va_expectation(self._outputs(probs)).astype(np.float32)

    def uncertainty_scores(self, labels: np.ndarray, probs: np.ndarray) -> Scores:
        """RMSE of each dimension's expectation."""
        predicted = va_expectation(probs)
        return {"rmse": {name: rmse(labels[:, d], predicted[:, d]) for d, name in enumerate(self.names)}}

    def skill_scores(self) -> dict[str, tuple[str, str]]:
        return {metric: ("rmse", name) for metric, name in zip(self.metric_names, self.names, strict=True)}

    def group_targets(self, labels: np.ndarray) -> np.ndarray:
        return va_to_bin(np.asarray(labels))  # (N, 2)

    def output_columns(self) -> list[str]:
        """The expectation of each dimension, then its standard deviation."""
        return [*self.names, *(f"{name}_sd" for name in self.names)]

    def output_values(self, probs: np.ndarray, decided: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The expectation and spread of `probs`: valence and arousal are never calibrated, so
        there is no other decision to show."""
        mean = va_expectation(probs)  # (N, 2)
        second_moment = self.distributions(probs) @ VA_CENTRES**2  # (N, 2)
        sd = np.sqrt(np.maximum(second_moment - mean**2, 0.0))  # spread of the predicted bins
        return {**dict(zip(self.names, mean.T, strict=True)),
                **{f"{n}_sd": s for n, s in zip(self.names, sd.T, strict=True)}}

    def output_labels(self, row: dict[str, object]) -> list[str]:
        return [f"{name.capitalize()}  {row[name]:+.2f}" for name in self.names]

    def draw_timeline(self, ax: Axes, values: ColumnValues, x: np.ndarray, step: float,
                      cmap: Colormap, no_face: list[Span]) -> None:
        """Each dimension's expectation with a band of one standard deviation; frames without a
        face are shaded grey, since a line has no 'bad' colour to show them."""
        for name, colour in zip(self.names, LINE_COLOURS, strict=True):
            both = values([name, f"{name}_sd"])
            mean, sd = both[:, 0], both[:, 1]
            ax.plot(x, mean, color=colour, lw=1.2, label=name)
            ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1, 1)
        ax.set_ylabel(f"{self.name} (± 1 sd)")
        ax.legend(loc="upper right", fontsize="x-small", ncols=2)
        for start, stop in no_face:  # in the colour the heatmaps show missing frames in
            ax.axvspan(start, stop, color=cmap.get_bad(), lw=0, zorder=0)
