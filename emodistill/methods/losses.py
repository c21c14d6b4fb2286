"""Supervision losses against ground truth (paper Eq. 1-7) and distillation losses against a
teacher ensemble's soft labels (Eq. 8-11), combined per task with balancing weights (Eq. 12-13).

Each task's own loss is a rule of its kind (`Task.supervision_loss`, `Task.distillation_loss`
in emodistill/tasks); this module weights the classes and sums the tasks.

Tensors are (B, L, ...) or (N, ...); a mask (B, L) marks the frames whose label is valid. A task
without labels, or with no valid frame in the batch, adds 0 and is left out of the logged values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from emodistill.tasks import (
    AU,
    EXPR,
    PAPER_AU_POS_WEIGHT,
    PAPER_EXPR_WEIGHT,
    TASKS,
    VA,
    Task,
    valid_rows,
)
from emodistill.tasks.binned import CCC_EPS, ccc_torch

__all__ = [
    "CCC_EPS", "MAX_CLASS_WEIGHT", "ClassWeights", "ccc_torch", "class_weights_from_labels",
    "distillation_loss", "supervision_loss", "training_class_weights",
]

# A class seen too rarely would get a huge (or infinite) weight; this bounds every weight to
# [1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT]. The paper's own weights span 0.59..32.3.
MAX_CLASS_WEIGHT = 100.0


@dataclass
class ClassWeights:
    """Weights inside each task's loss: p_c on the AU positive term (Eq. 2-3), EXPR class
    weights (Eq. 5), and the weight of a cross entropy on the valence/arousal bins beside 1 - CCC."""

    au_pos_weight: np.ndarray  # (12,) #negatives / #positives of each AU
    expr_weight: np.ndarray  # (7,) weight of each expression class in the cross entropy
    # 0: the paper's VA losses (1 - CCC alone, Eq. 7 and 11). Above 0: plus this times the cross
    # entropy of the bins against the label's bin, or the KL divergence from a teacher's bins
    # (`--va-bins`; the VA criterion of the authors' 2020 code), so the bins' shape is learned.
    va_bins: float = 0.0

    @classmethod
    def uniform(cls) -> ClassWeights:
        """No reweighting (`--no-reweight`): every weight 1."""
        return cls(np.ones(AU.n_logits), np.ones(EXPR.n_classes))

    @classmethod
    def paper(cls) -> ClassWeights:
        """The weights the paper used on Aff-wild2 (Appendix A)."""
        return cls(np.array(PAPER_AU_POS_WEIGHT), np.array(PAPER_EXPR_WEIGHT))

    def as_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON files and checkpoint metadata."""
        return {"au_pos_weight": [float(w) for w in self.au_pos_weight],
                "expr_weight": [float(w) for w in self.expr_weight], "va_bins": float(self.va_bins)}

    @classmethod
    def from_dict(cls, values: Mapping[str, list[float]]) -> ClassWeights:
        """Inverse of `as_dict`."""
        return cls(np.asarray(values["au_pos_weight"], dtype=np.float64),
                   np.asarray(values["expr_weight"], dtype=np.float64), float(values.get("va_bins", 0.0)))

    def array_for(self, task: Task) -> np.ndarray | None:
        """This task's weights; for VA the bins' weight (1,), None when it is 0."""
        weights = {AU.name: self.au_pos_weight, EXPR.name: self.expr_weight,
                   VA.name: np.array([self.va_bins]) if self.va_bins > 0 else None}.get(task.name)
        return None if weights is None else np.asarray(weights)

    def for_task(self, task: Task, like: torch.Tensor) -> torch.Tensor | None:
        """This task's weights as a tensor on `like`'s device and dtype (see `array_for`)."""
        weights = self.array_for(task)
        return None if weights is None else torch.as_tensor(weights, dtype=like.dtype, device=like.device)


def class_weights_from_labels(labels: Mapping[str, np.ndarray],
                              masks: Mapping[str, np.ndarray]) -> ClassWeights:
    """Class weights from training labels in the `Split` format, over the valid frames only.

    AU: p_c = #negatives / #positives (Eq. 3), clipped to [1/100, 100], so an AU with no
    positive frame gets 100 and one with no negative frame 1/100. EXPR: inverse class
    frequency scaled so the weights' mean over the training labels is 1; a class never seen
    gets 100. A task without any valid label keeps weights 1.
    """
    weights = ClassWeights.uniform()
    if AU.name in labels:
        au = np.asarray(labels[AU.name])[valid_rows(masks, AU.name, len(labels[AU.name]))]  # (n, 12)
        if len(au):
            positives = (au > 0.5).sum(0)
            negatives = len(au) - positives
            ratio = negatives / np.maximum(positives, 1)
            ratio[positives == 0] = MAX_CLASS_WEIGHT
            weights.au_pos_weight = np.clip(ratio, 1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT)
    if EXPR.name in labels:
        expr = np.asarray(labels[EXPR.name])[valid_rows(masks, EXPR.name, len(labels[EXPR.name]))]  # (n,)
        if len(expr):
            n_classes = EXPR.n_classes
            frequency = np.bincount(expr, minlength=n_classes)[:n_classes] / len(expr)
            seen = frequency > 0
            # sum_k f_k * w_k = 1 with w_k proportional to 1 / f_k over the classes seen
            inverse = np.full(n_classes, MAX_CLASS_WEIGHT)
            inverse[seen] = 1.0 / (seen.sum() * frequency[seen])
            weights.expr_weight = np.minimum(inverse, MAX_CLASS_WEIGHT)
    return weights


# (logits, targets, class weights) of the valid frames -> the task's loss; a task's own method.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _supervision(task: Task) -> LossFn:
    return task.supervision_loss


def _distillation(task: Task) -> LossFn:
    return task.distillation_loss


def _combine(loss_of: Callable[[Task], LossFn], logits: Mapping[str, torch.Tensor],
             targets: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
             class_weights: ClassWeights,
             task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 12-13: sum of task weight x task loss over the tasks with a valid frame."""
    total: torch.Tensor | None = None
    per_task: dict[str, float] = {}
    for task in TASKS:
        if task.name not in logits or task.name not in targets:
            continue
        task_logits = logits[task.name]  # (B, L, n_logits)
        valid = (masks or {}).get(task.name)
        if valid is None:
            valid = torch.ones(task_logits.shape[:-1], dtype=torch.bool)
        valid = valid.to(task_logits.device)  # (B, L)
        if not bool(valid.any()):
            continue
        if task.name not in task_weights:
            raise ValueError(f"task {task.name} has labels but no entry in task_weights")
        task_targets = targets[task.name].to(task_logits.device)[valid]  # (n, ...)
        loss = loss_of(task)(task_logits[valid], task_targets, class_weights.for_task(task, task_logits))
        per_task[task.name] = float(loss.detach())
        weighted = task_weights[task.name] * loss
        total = weighted if total is None else total + weighted
    if total is None:
        # Still part of the graph, so a batch without labels can go through backward().
        total = sum((t.sum() * 0.0 for t in logits.values()), torch.zeros(()))
    return total, per_task


def supervision_loss(logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                     masks: Mapping[str, torch.Tensor], class_weights: ClassWeights,
                     task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher loss (Eq. 12) against ground truth; returns (loss, {task: its unweighted loss}).

    labels: "AU" (B, L, 12) 0/1, "EXPR" (B, L) int, "VA" (B, L, 2) in [-1, 1];
    masks: task -> (B, L) bool, True where the label is valid (a missing task: all valid).
    """
    return _combine(_supervision, logits, labels, masks, class_weights, task_weights)


def distillation_loss(logits: Mapping[str, torch.Tensor], soft_labels: Mapping[str, torch.Tensor],
                      masks: Mapping[str, torch.Tensor] | None, class_weights: ClassWeights,
                      task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Student loss (Eq. 13) against a teacher ensemble's mean probabilities.

    soft_labels: "AU" (B, L, 12), "EXPR" (B, L, 7), "VA" (B, L, 40) probabilities;
    masks: optional, as in `supervision_loss` (None: every frame counts).
    """
    return _combine(_distillation, logits, soft_labels, masks, class_weights, task_weights)


def training_class_weights(labels: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                           reweight: bool, va_bins: float = 0.0) -> ClassWeights:
    """The weights training uses: the classes' from the labels (Eq. 3) when reweighting, else
    all ones; the VA bins' weight as given."""
    weights = class_weights_from_labels(labels, masks) if reweight else ClassWeights.uniform()
    weights.va_bins = float(va_bins)
    return weights
