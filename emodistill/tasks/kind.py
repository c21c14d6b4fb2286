"""What a task kind decides, in one interface: `Task`, which each kind's file subclasses.

A task is an instance of its kind's class (binary.py, categorical.py, binned.py), so the rules
of a kind (activation, label columns and values, loss, metric, uncertainty scores, prediction
columns, timeline panel) are its methods, and every stage loops over the run's `TaskSet` asking the task
instead of branching on its kind. A new kind is one new file and one entry in the task table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

if TYPE_CHECKING:  # the timeline panels draw on matplotlib axes, which predict hands over
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

# A class seen too rarely would get a huge (or infinite) weight; this bounds every class weight
# to [1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT]. The paper's own weights span 0.59..32.3.
MAX_CLASS_WEIGHT = 100.0
# Column names -> their values (frames, columns) as floats, NaN where a frame has none.
ColumnValues = Callable[[list[str]], np.ndarray]
Span = tuple[float, float]  # (start, stop) on a timeline's x axis
Scores = dict[str, dict[str, object]]  # score group ("nll", "rmse", "ece") -> key -> value


@dataclass(frozen=True)
class Task(ABC):
    """One emotion task: its outputs, their activation and the Aff-wild2 file conventions.

    Methods take and return arrays in the task's own layout: logits and probabilities
    (..., n_logits), labels in the `Split` format (AU (N, 12) 0/1, EXPR (N,) class index,
    VA (N, 2) values).
    """

    kind: ClassVar[str]  # "binary": independent sigmoids; "categorical": one softmax; "binned": softmax per dimension
    panel_height: ClassVar[float]  # inches of the task's panel in a prediction timeline
    # Whether `evaluation.calibration` fits this kind a scale and bias per logit: kinds scored by
    # the NLL of their classes are; a kind read out otherwise keeps its probabilities.
    calibrated: ClassVar[bool] = True

    name: str  # "AU" | "EXPR" | "VA"
    names: tuple[str, ...]  # AU names, expression classes, or ("valence", "arousal")
    n_logits: int  # width of the model's output for this task
    n_groups: int  # distributions per frame: 12 AUs, 1 expression, 2 VA dimensions
    n_classes: int  # classes of each distribution: 2, 7, 20
    annotation_dir: str  # Aff-wild2 folder under annotations/
    invalid: float  # the marker an annotator wrote for "no label"
    metric_names: tuple[str, ...]  # keys this task contributes to the emotion metrics

    # --- shape ---------------------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def shape_for(n_names: int) -> tuple[int, int, int]:
        """(n_logits, n_groups, n_classes) of a task of this kind with `n_names` names."""

    def with_names(self, names: Sequence[str]) -> Task:
        """This task with other output names (the 8 expressions of a 2022+ release, say), its
        sizes following from the kind."""
        n_logits, n_groups, n_classes = self.shape_for(len(names))
        return replace(self, names=tuple(names), n_logits=n_logits, n_groups=n_groups, n_classes=n_classes)

    # --- model outputs -------------------------------------------------------------------------

    @abstractmethod
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (..., n_logits) -> probabilities of the same shape."""

    def log_activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities as distributions (..., n_groups, n_classes), numerically stable."""
        grouped = logits.unflatten(-1, (self.n_groups, self.n_classes))
        return torch.log_softmax(grouped, dim=-1)

    def logits_from_log_probs(self, log_probs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (..., n_groups, n_classes) -> logits (..., n_logits) that
        `log_activate` turns back into them."""
        return log_probs.flatten(-2)

    def distributions(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities (..., n_logits) -> one distribution per group (..., n_groups, n_classes)."""
        probs = self._outputs(probs)
        return probs.reshape(*probs.shape[:-1], self.n_groups, self.n_classes)

    @abstractmethod
    def label_frequencies(self, labels: np.ndarray) -> np.ndarray:
        """Valid labels of this task -> the class-prior prediction (n_logits,)."""

    def _outputs(self, probs: np.ndarray) -> np.ndarray:
        """`probs` as an array with n_logits in the last axis, else ValueError."""
        probs = np.asarray(probs)
        if probs.shape[-1] != self.n_logits:
            raise ValueError(
                f"expected {self.n_logits} {self.name} outputs in the last axis, got {probs.shape[-1]}"
            )
        return probs

    def _some_labels(self, labels: np.ndarray) -> np.ndarray:
        """`labels` as an array, else ValueError when there is none to learn from."""
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise ValueError(f"no valid {self.name} label to take frequencies from")
        return labels

    # --- labels as written (annotation files, CSV manifests) ----------------------------------

    def label_columns(self) -> tuple[str, ...]:
        """Column names of the task's labels in a manifest or annotation file."""
        return self.names

    @abstractmethod
    def label_rule(self) -> str:
        """What a written label cell may hold, for error messages: "0 or 1", ..."""

    @abstractmethod
    def allowed_labels(self, values: np.ndarray) -> np.ndarray:
        """Written values (n, columns) -> True where the value is a label of this task."""

    @abstractmethod
    def caption(self, values: list[float]) -> str:
        """One frame's valid written values -> a short caption for a contact sheet."""

    def annotation_line(self, row: np.ndarray) -> str:
        """One frame's labels -> its line in an Aff-wild2 annotation file (integers)."""
        return ",".join(str(int(v)) for v in np.atleast_1d(row))

    def empty_labels(self, n: int) -> np.ndarray:
        """Zeros in the `Split` label format for n frames."""
        return np.zeros((n, len(self.label_columns())), np.float32)

    def labels_from_columns(self, values: np.ndarray) -> np.ndarray:
        """Written values (n, columns) -> the `Split` label format (cast when stored)."""
        return values

    @abstractmethod
    def label_marginals(self, labels: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Summary of sampled labels and their true distributions, one value per name."""

    # --- losses (paper Eq. 1-11) ---------------------------------------------------------------

    @abstractmethod
    def supervision_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                         weights: torch.Tensor | None) -> torch.Tensor:
        """The loss against ground-truth labels of the valid frames (n, ...)."""

    def distillation_loss(self, logits: torch.Tensor, targets: torch.Tensor,
                          weights: torch.Tensor | None) -> torch.Tensor:
        """The loss against a teacher ensemble's mean probabilities; the supervision loss
        unless the kind needs another."""
        return self.supervision_loss(logits, targets, weights)

    @abstractmethod
    def loss_weights(self, labels: np.ndarray, reweight: bool, bins_weight: float) -> np.ndarray | None:
        """The weights inside this task's loss from its valid training labels (`Split` format):
        class weights when `reweight` (Eq. 3, 5), else ones; `bins_weight` is for the kinds whose
        loss can add a term on the bins' shape. None: the loss takes no weights."""

    @abstractmethod
    def start_logits(self, frequencies: np.ndarray, weights: np.ndarray | None, distilled: bool) -> np.ndarray | None:
        """The output bias a member starts from: the logits of the best constant prediction under
        this kind's loss, given the training targets' mean `frequencies` (n_logits,) and the
        class `weights` that loss uses (supervision, or `distilled` from soft labels); None
        where a constant has no best value (keep the initialisation)."""

    def prior_shift(self, weights: np.ndarray | None, distilled: bool) -> np.ndarray | None:
        """How far this kind's loss with class `weights` (supervision, or `distilled` from soft
        labels) moves each logit's optimum from the labels' true log-odds, (n_logits,): subtracting
        it undoes the base-rate shift of class reweighting (logit adjustment, Menon et al. 2021).
        None: the loss has no class weights."""
        return None

    # --- scores --------------------------------------------------------------------------------

    @abstractmethod
    def emotion_scores(self, truth: np.ndarray, probs: np.ndarray) -> tuple[float, ...]:
        """The task's ABAW metrics on valid frames, in the order of `metric_names`."""

    @abstractmethod
    def challenge_parts(self, truth: np.ndarray, decisions: np.ndarray) -> dict[str, float]:
        """The parts the ABAW challenges build their scores from, of `decide`'s decisions on valid
        frames: "F1" and "accuracy", or one "CCC_<name>" per dimension."""

    @abstractmethod
    def decide(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities (N, n_logits) -> the label a submission writes, in the `Split` label
        format: AU 0/1 (N, 12), EXPR the class index (N,), VA the expected values (N, 2)."""

    @abstractmethod
    def uncertainty_scores(self, labels: np.ndarray, probs: np.ndarray) -> Scores:
        """In-domain uncertainty on valid frames (Tables 3-4): group -> key -> value."""

    @abstractmethod
    def skill_scores(self) -> dict[str, tuple[str, str]]:
        """Metric name -> (group, key) of the lower-is-better score skill is measured on."""

    def reliability_labels(self, labels: np.ndarray) -> np.ndarray | None:
        """Labels as `reliability` and `ece` take them; None: the task has no reliability diagram."""
        return None

    # --- temperature scaling -------------------------------------------------------------------

    def softmax_logits(self, logits: np.ndarray) -> np.ndarray:
        """(N, n_logits) -> (N, n_groups, n_classes) logits of one softmax per group."""
        logits = np.asarray(logits, dtype=np.float64)
        return logits.reshape(len(logits), self.n_groups, self.n_classes)

    @abstractmethod
    def group_targets(self, labels: np.ndarray) -> np.ndarray:
        """`Split` labels -> class index per group (N, n_groups)."""

    # --- prediction tables and figures ---------------------------------------------------------

    @abstractmethod
    def output_columns(self) -> list[str]:
        """The task's columns in a prediction table."""

    @abstractmethod
    def output_values(self, probs: np.ndarray, decided: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Ensemble-mean probabilities (N, n_logits) -> the task's columns, (N,) each; the
        decision columns (an AU present, the expression) decide on `decided` when given: the
        members' own outputs, when `probs` are calibrated."""

    def output_names(self) -> tuple[str, ...]:
        """One name per output distribution (its uncertainty bar in Figure 1)."""
        return self.names

    @abstractmethod
    def output_labels(self, row: dict[str, object]) -> list[str]:
        """A prediction row -> the label beside each output's bar: "AU12  1", ..."""

    @abstractmethod
    def draw_timeline(self, ax: Axes, values: ColumnValues, x: np.ndarray, step: float,
                      cmap: Colormap, no_face: list[Span]) -> None:
        """The task's panel of a prediction timeline; `no_face` spans frames without a face."""

    def _draw_heatmap(self, ax: Axes, columns: list[str], values: ColumnValues, x: np.ndarray,
                      step: float, cmap: Colormap) -> None:
        """Probabilities as an image, one row per output; frames without a face are NaN, which
        `cmap` shows in its 'bad' colour."""
        image_values = values(columns).T  # (outputs, frames)
        extent = (x[0] - step / 2, x[-1] + step / 2, len(columns) - 0.5, -0.5)
        image = ax.imshow(image_values, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0,
                          vmax=1, extent=extent)
        ax.set_yticks(np.arange(len(self.names)), self.names, fontsize="x-small")
        ax.set_ylabel(self.name)
        ax.figure.colorbar(image, ax=ax, pad=0.01, fraction=0.02, label="probability")
