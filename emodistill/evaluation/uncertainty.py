"""Ensemble uncertainty: total = aleatoric + epistemic (paper Eq. 14), each an entropy over
log(number of classes) so it lies in 0..1, and the out-of-domain score from the epistemic part.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.special import entr

from emodistill.tasks import Task, TaskSet


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis` (0 log 0 = 0)."""
    return entr(np.asarray(p, dtype=np.float64)).sum(axis=axis)


def decompose(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Members' class distributions (T, N, C) -> (total, aleatoric, epistemic), each (N,).

    Eq. 14: total = H(mean p), aleatoric = mean H(p), epistemic = total - aleatoric (the mutual
    information, clipped at 0 against round-off); all divided by log C. Extra axes between T
    and C are kept: (T, N, G, C) -> (N, G).
    """
    member_probs = np.asarray(member_probs, dtype=np.float64)
    if member_probs.ndim < 3 or member_probs.shape[-1] < 2:
        raise ValueError(f"member probabilities should be (T, N, C) with C >= 2, "
                         f"got shape {member_probs.shape}")
    if not np.isfinite(member_probs).all():
        raise ValueError("member probabilities contain NaN or infinite values")
    scale = np.log(member_probs.shape[-1])
    total = entropy(member_probs.mean(0)) / scale
    aleatoric = entropy(member_probs).mean(0) / scale
    return total, aleatoric, np.maximum(total - aleatoric, 0.0)


def decompose_task(task: Task, member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task's member probabilities (T, N, n_logits) -> (total, aleatoric, epistemic),
    each (N, n_groups): per AU, for the expression, per valence/arousal dimension."""
    return decompose(task.distributions(member_probs))  # (T, N, G, K) -> (N, G)


def task_epistemic(tasks: TaskSet, member_probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each task's epistemic uncertainty (N,), averaged over its groups (the 12 AUs, valence and
    arousal), for the tasks given (task name -> (T, N, n_logits)), in the task set's order."""
    names = [t.name for t in tasks if t.name in member_probs]
    unknown = set(member_probs) - set(names)
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(sorted(unknown))} in member probabilities")
    if not names:
        raise ValueError("epistemic uncertainty needs the member probabilities of at least one task")
    return {name: decompose_task(tasks[name], member_probs[name])[2].mean(-1) for name in names}


def ood_score(tasks: TaskSet, member_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Out-of-domain score (N,): epistemic uncertainty averaged over each task's groups, then
    over the tasks given (task name -> (T, N, n_logits)), as the paper does (Sec. 5.2)."""
    return np.mean(list(task_epistemic(tasks, member_probs).values()), axis=0)
