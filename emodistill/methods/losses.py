"""Supervision losses against ground truth (paper Eq. 1-7) and distillation losses against a
teacher ensemble's soft labels (Eq. 8-11), combined per task with balancing weights (Eq. 12-13).

Each task's own loss is a rule of its kind (`Task.supervision_loss`, `Task.distillation_loss`
in emodistill/tasks); this module weights the classes and sums the tasks.

Tensors are (B, L, ...) or (N, ...); a mask (B, L) marks the frames whose label is valid. A task
without labels, or with no valid frame in the batch, adds 0 and is left out of the logged values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from emodistill.tasks import Task, TaskSet, valid_rows
from emodistill.tasks.binned import CCC_EPS, ccc_torch
from emodistill.tasks.kind import MAX_CLASS_WEIGHT

__all__ = [
    "CCC_EPS", "MAX_CLASS_WEIGHT", "ClassWeights", "ccc_torch", "distillation_loss", "supervision_loss",
    "training_class_weights",
]

# class_weights.json as written before the weights were keyed by task: its keys -> the task's.
_OLD_KEYS = {"au_pos_weight": "AU", "expr_weight": "EXPR"}


@dataclass
class ClassWeights:
    """The weights inside each task's loss, by task name (`Task.loss_weights`): p_c on each
    AU's positive term (Eq. 2-3), each expression class's weight (Eq. 5), and for VA the weight
    of a loss on the bins' shape beside 1 - CCC (absent: the paper's loss)."""

    by_task: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def uniform(cls, tasks: TaskSet) -> ClassWeights:
        """No reweighting (`--no-reweight`): every class weight 1, no loss on the VA bins."""
        return training_class_weights(tasks, {}, {}, reweight=False)

    def as_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON files and Ray's object store."""
        return {name: [float(w) for w in weights] for name, weights in self.by_task.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> ClassWeights:
        """Inverse of `as_dict`; also reads the fixed keys of runs saved before (au_pos_weight,
        expr_weight, va_bins)."""
        by_task = {_OLD_KEYS.get(k, k): np.asarray(v, dtype=np.float64) for k, v in values.items() if k != "va_bins"}
        if float(values.get("va_bins", 0.0)) > 0:  # type: ignore[arg-type]
            by_task["VA"] = np.array([float(values["va_bins"])])  # type: ignore[arg-type]
        return cls(by_task)

    def array_for(self, task: Task) -> np.ndarray | None:
        """This task's weights, None when its loss takes none."""
        return self.by_task.get(task.name)

    def for_task(self, task: Task, like: torch.Tensor) -> torch.Tensor | None:
        """This task's weights as a tensor on `like`'s device and dtype (see `array_for`)."""
        weights = self.array_for(task)
        return None if weights is None else torch.as_tensor(weights, dtype=like.dtype, device=like.device)


def training_class_weights(tasks: TaskSet, labels: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                           reweight: bool, va_bins: float = 0.0) -> ClassWeights:
    """The weights training uses, from the valid training labels in the `Split` format: each
    task's class weights when reweighting (Eq. 3, 5), else ones; the VA bins' weight as given.
    A task without labels keeps weights 1."""
    by_task = {}
    for task in tasks:
        values = np.asarray(labels[task.name])[valid_rows(masks, task.name, len(labels[task.name]))] \
            if task.name in labels else np.zeros((0,))
        weights = task.loss_weights(values, reweight, va_bins)
        if weights is not None:
            by_task[task.name] = weights
    return ClassWeights(by_task)


# (logits, targets, class weights) of the valid frames -> the task's loss; a task's own method.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _supervision(task: Task) -> LossFn:
    return task.supervision_loss


def _distillation(task: Task) -> LossFn:
    return task.distillation_loss


def _combine(loss_of: Callable[[Task], LossFn], tasks: TaskSet, logits: Mapping[str, torch.Tensor],
             targets: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
             class_weights: ClassWeights,
             task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 12-13: sum of task weight x task loss over the tasks with a valid frame."""
    total: torch.Tensor | None = None
    per_task: dict[str, float] = {}
    for task in tasks:
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


def supervision_loss(tasks: TaskSet, logits: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor],
                     masks: Mapping[str, torch.Tensor], class_weights: ClassWeights,
                     task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher loss (Eq. 12) against ground truth; returns (loss, {task: its unweighted loss}).

    labels: "AU" (B, L, 12) 0/1, "EXPR" (B, L) int, "VA" (B, L, 2) in [-1, 1];
    masks: task -> (B, L) bool, True where the label is valid (a missing task: all valid).
    """
    return _combine(_supervision, tasks, logits, labels, masks, class_weights, task_weights)


def distillation_loss(tasks: TaskSet, logits: Mapping[str, torch.Tensor],
                      soft_labels: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None,
                      class_weights: ClassWeights,
                      task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Student loss (Eq. 13) against a teacher ensemble's mean probabilities.

    soft_labels: "AU" (B, L, 12), "EXPR" (B, L, 7), "VA" (B, L, 40) probabilities;
    masks: optional, as in `supervision_loss` (None: every frame counts).
    """
    return _combine(_distillation, tasks, logits, soft_labels, masks, class_weights, task_weights)
