"""Temperature scaling per output group (Guo et al. 2017): one temperature per AU, for the
expression and per VA dimension, fitted by NLL and scored by test-time cross-validation, so no
frame is scored with a temperature fitted on it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from emodistill.evaluation.baselines import Teachers
from emodistill.evaluation.scores import mean_scores, uncertainty_scores
from emodistill.tasks import TaskSet, valid_rows

NAME = "temperature_scaling"
LABEL = "TS"  # in the report's tables

# Search range of log T: temperatures from 0.05 to 20 cover every fit seen in practice.
LOG_TEMPERATURE_BOUNDS = (-3.0, 3.0)


def _fit_one(logits: np.ndarray, targets: np.ndarray) -> float:
    """Temperature minimising the mean NLL of softmax(logits / T) at the targets; (n, K), (n,)."""
    logits = np.ascontiguousarray(logits)
    true_logit = logits[np.arange(len(targets)), targets]
    # Dividing by T > 0 keeps the argmax, so the row maxima shift log-sum-exp once for all T.
    row_max = logits.max(axis=1)
    shifted = logits - row_max[:, None]  # (n, K), all <= 0

    def nll(log_temperature: float) -> float:
        inverse = np.exp(-log_temperature)
        log_norm = np.log(np.exp(shifted * inverse).sum(axis=1)) + row_max * inverse
        return float(np.mean(log_norm - true_logit * inverse))

    result = minimize_scalar(nll, bounds=LOG_TEMPERATURE_BOUNDS, method="bounded")
    return float(np.exp(result.x))


def fit_temperatures(tasks: TaskSet, logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One temperature per output group, fitted by NLL on the valid rows: "AU" (12,),
    "EXPR" (1,), "VA" (2,). VA is scored as the NLL of the label's bin. A task without
    labels (or with no valid row) keeps temperature 1.
    """
    temperatures: dict[str, np.ndarray] = {}
    for name in logits:
        task = tasks[name]
        task_logits = np.asarray(logits[name])  # (N, n_logits)
        temperatures[name] = np.ones(task.n_groups)
        if name not in labels:
            continue
        valid = valid_rows(masks, name, len(task_logits))
        if not valid.any():
            continue
        grouped = task.softmax_logits(task_logits[valid])  # (n, G, K)
        targets = task.group_targets(np.asarray(labels[name])[valid])  # (n, G)
        temperatures[name] = np.array([_fit_one(grouped[:, g], targets[:, g])
                                       for g in range(task.n_groups)])
    return temperatures


def apply_temperatures(tasks: TaskSet, logits: Mapping[str, np.ndarray],
                       temperatures: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Logits (N, n_logits) divided by their group's temperature -> probabilities (N, n_logits)."""
    probs = {}
    for name, task_logits in logits.items():
        task = tasks[name]
        per_logit = np.repeat(np.asarray(temperatures[name], dtype=np.float64),
                              task.n_logits // task.n_groups)  # (n_logits,)
        scaled = torch.from_numpy(np.asarray(task_logits, dtype=np.float64) / per_logit)
        probs[name] = task.activate(scaled).numpy()
    return probs


def temperature_scaling_cv(tasks: TaskSet, logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                           masks: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Test-time cross-validation (Ashukha et al. 2020): split the rows at random into two
    halves, fit on one and calibrate the other, both ways round, so every row gets
    probabilities from temperatures that never saw its label. Returns task -> (N, n_logits).
    """
    n = len(next(iter(logits.values())))
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2:])
    probs = {name: np.empty((n, tasks[name].n_logits)) for name in logits}
    for fit_rows, score_rows in (halves, halves[::-1]):
        temperatures = fit_temperatures(
            tasks,
            {name: np.asarray(v)[fit_rows] for name, v in logits.items()},
            {name: np.asarray(v)[fit_rows] for name, v in labels.items()},
            {name: np.asarray(v)[fit_rows] for name, v in masks.items()},
        )
        scored = apply_temperatures(tasks, {name: np.asarray(v)[score_rows] for name, v in logits.items()},
                                    temperatures)
        for name, task_probs in scored.items():
            probs[name][score_rows] = task_probs
    return probs


def score(teachers: Teachers) -> dict:
    """Each teacher member temperature-scaled, scored, and the scores averaged over members."""
    val = teachers.val
    probs = [temperature_scaling_cv(val.tasks, logits, val.labels, val.masks, seed=teachers.seed)
             for logits in teachers.logits]
    scores = mean_scores([uncertainty_scores(val, {t: p[t] for t in teachers.tasks if t in p}) for p in probs])
    return {"label": LABEL, "nll": scores["nll"], "ece": scores["ece"]}
