"""Supervision losses against ground truth (paper Eq. 1-7) and distillation losses against a
teacher ensemble's soft labels (Eq. 8-11), combined per task with balancing weights (Eq. 12-13).

Tensors are (B, L, ...) or (N, ...); a mask (B, L) marks the frames whose label is valid. A task
without labels, or with no valid frame in the batch, adds 0 and is left out of the logged values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from emodistill.tasks import (
    PAPER_AU_POS_WEIGHT,
    PAPER_EXPR_WEIGHT,
    TASKS,
    Task,
    va_expectation,
)

# A class seen too rarely would get a huge (or infinite) weight; this bounds every weight to
# [1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT]. The paper's own weights span 0.59..32.3.
MAX_CLASS_WEIGHT = 100.0
# Keeps CCC finite (and its gradient finite) when predictions or targets are constant.
CCC_EPS = 1e-8


@dataclass
class ClassWeights:
    """Per-class loss weights: p_c on the AU positive term (Eq. 2-3), EXPR class weights (Eq. 5)."""

    au_pos_weight: np.ndarray  # (12,) #negatives / #positives of each AU
    expr_weight: np.ndarray  # (7,) weight of each expression class in the cross entropy

    @classmethod
    def uniform(cls) -> ClassWeights:
        """No reweighting (`--no-reweight`): every weight 1."""
        return cls(np.ones(12), np.ones(7))

    @classmethod
    def paper(cls) -> ClassWeights:
        """The weights the paper used on Aff-wild2 (Appendix A)."""
        return cls(np.array(PAPER_AU_POS_WEIGHT), np.array(PAPER_EXPR_WEIGHT))

    def as_dict(self) -> dict[str, list[float]]:
        """Plain lists, for JSON files and checkpoint metadata."""
        return {"au_pos_weight": [float(w) for w in self.au_pos_weight],
                "expr_weight": [float(w) for w in self.expr_weight]}

    @classmethod
    def from_dict(cls, values: Mapping[str, list[float]]) -> ClassWeights:
        """Inverse of `as_dict`."""
        return cls(np.asarray(values["au_pos_weight"], dtype=np.float64),
                   np.asarray(values["expr_weight"], dtype=np.float64))

    def for_task(self, task: Task, like: torch.Tensor) -> torch.Tensor | None:
        """This task's weights as a tensor on `like`'s device and dtype (None for VA)."""
        weights = {"binary": self.au_pos_weight, "categorical": self.expr_weight}.get(task.kind)
        if weights is None:
            return None
        return torch.as_tensor(np.asarray(weights), dtype=like.dtype, device=like.device)


def class_weights_from_labels(labels: Mapping[str, np.ndarray],
                              masks: Mapping[str, np.ndarray]) -> ClassWeights:
    """Class weights from training labels in the `Split` format, over the valid frames only.

    AU: p_c = #negatives / #positives (Eq. 3), clipped to [1/100, 100], so an AU with no
    positive frame gets 100 and one with no negative frame 1/100. EXPR: inverse class
    frequency scaled so the weights' mean over the training labels is 1; a class never seen
    gets 100. A task without any valid label keeps weights 1.
    """
    weights = ClassWeights.uniform()
    if "AU" in labels:
        au = np.asarray(labels["AU"])[_valid(masks, "AU", len(labels["AU"]))]  # (n, 12)
        if len(au):
            positives = (au > 0.5).sum(0)
            negatives = len(au) - positives
            ratio = negatives / np.maximum(positives, 1)
            ratio[positives == 0] = MAX_CLASS_WEIGHT
            weights.au_pos_weight = np.clip(ratio, 1 / MAX_CLASS_WEIGHT, MAX_CLASS_WEIGHT)
    if "EXPR" in labels:
        expr = np.asarray(labels["EXPR"])[_valid(masks, "EXPR", len(labels["EXPR"]))]  # (n,)
        if len(expr):
            frequency = np.bincount(expr, minlength=7)[:7] / len(expr)
            seen = frequency > 0
            # sum_k f_k * w_k = 1 with w_k proportional to 1 / f_k over the classes seen
            inverse = np.full(7, MAX_CLASS_WEIGHT)
            inverse[seen] = 1.0 / (seen.sum() * frequency[seen])
            weights.expr_weight = np.minimum(inverse, MAX_CLASS_WEIGHT)
    return weights


def _valid(masks: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """The task's mask, or every frame when the masks say nothing about the task."""
    if name in masks:
        return np.asarray(masks[name], dtype=bool)
    return np.ones(n, dtype=bool)


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


def _bce(task: Task, logits: torch.Tensor, targets: torch.Tensor,
         weights: torch.Tensor | None) -> torch.Tensor:
    """Eq. 1-2 and 8-9: BCE with p_c on the positive term, mean over AUs and frames.

    Targets may be 0/1 labels or a teacher's probabilities.
    """
    log_probs = task.log_activate(logits)  # (n, 12, 2): log P(absent), log P(present)
    pos_weight = 1.0 if weights is None else weights
    per_entry = -(pos_weight * targets * log_probs[..., 1] + (1 - targets) * log_probs[..., 0])
    return per_entry.mean()


def _weighted_ce(task: Task, logits: torch.Tensor, targets: torch.Tensor,
                 weights: torch.Tensor | None) -> torch.Tensor:
    """Eq. 4-5: class-weighted cross entropy, averaged with the valid frames' class weights."""
    log_probs = task.log_activate(logits)[..., 0, :]  # (n, 7)
    return F.nll_loss(log_probs, targets.long(), weight=weights)


def _kl(task: Task, logits: torch.Tensor, targets: torch.Tensor,
        weights: torch.Tensor | None) -> torch.Tensor:
    """Eq. 10: KL(teacher || student) summed over classes, mean over frames (unweighted)."""
    log_probs = task.log_activate(logits)[..., 0, :]  # (n, 7)
    per_frame = (torch.special.xlogy(targets, targets) - targets * log_probs).sum(-1)  # (n,)
    return per_frame.mean()


def _ccc_loss(task: Task, logits: torch.Tensor, targets: torch.Tensor,
              weights: torch.Tensor | None) -> torch.Tensor:
    """Eq. 7: sum over valence and arousal of 1 - CCC between the expectation and the targets.

    Targets are (n, 2) values (ground truth) or (n, 40) bin probabilities (a teacher, Eq. 11).
    """
    prediction = va_expectation(task.activate(logits))  # (n, 2)
    if targets.shape[-1] != prediction.shape[-1]:
        targets = va_expectation(targets)  # (n, 40) -> (n, 2)
    return (1 - ccc_torch(targets.to(prediction.dtype), prediction)).sum()


LossFn = Callable[[Task, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
_SUPERVISION: dict[str, LossFn] = {"binary": _bce, "categorical": _weighted_ce, "binned": _ccc_loss}
_DISTILLATION: dict[str, LossFn] = {"binary": _bce, "categorical": _kl, "binned": _ccc_loss}


def _combine(losses: Mapping[str, LossFn], logits: Mapping[str, torch.Tensor],
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
        loss = losses[task.kind](task, task_logits[valid], task_targets,
                                 class_weights.for_task(task, task_logits))
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
    return _combine(_SUPERVISION, logits, labels, masks, class_weights, task_weights)


def distillation_loss(logits: Mapping[str, torch.Tensor], soft_labels: Mapping[str, torch.Tensor],
                      masks: Mapping[str, torch.Tensor] | None, class_weights: ClassWeights,
                      task_weights: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Student loss (Eq. 13) against a teacher ensemble's mean probabilities.

    soft_labels: "AU" (B, L, 12), "EXPR" (B, L, 7), "VA" (B, L, 40) probabilities;
    masks: optional, as in `supervision_loss` (None: every frame counts).
    """
    return _combine(_DISTILLATION, logits, soft_labels, masks, class_weights, task_weights)


def training_class_weights(labels: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                           reweight: bool) -> ClassWeights:
    """The weights training uses: from the labels (Eq. 3) when reweighting, else all ones."""
    return class_weights_from_labels(labels, masks) if reweight else ClassWeights.uniform()
