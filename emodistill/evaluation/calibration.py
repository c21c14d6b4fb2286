"""The two calibration baselines the paper compares against: temperature scaling per output group
(fitted by NLL, scored by test-time cross-validation) and Monte Carlo dropout.

Both work on any model whose forward returns a logits dict; they never import a data set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from emodistill.tasks import Task, va_to_bin
from emodistill.tasks import task as task_by_name

# Search range of log T: temperatures from 0.05 to 20 cover every fit seen in practice.
LOG_TEMPERATURE_BOUNDS = (-3.0, 3.0)
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)


def _grouped_logits(task: Task, logits: np.ndarray) -> np.ndarray:
    """(N, n_logits) -> (N, n_groups, n_classes) softmax logits; an AU's logit x is the 2-class
    softmax over (0, x), whose second probability is sigmoid(x)."""
    logits = np.asarray(logits, dtype=np.float64)
    if task.kind == "binary":
        return np.stack([np.zeros_like(logits), logits], axis=-1)  # (N, 12, 2)
    return logits.reshape(len(logits), task.n_groups, task.n_classes)


def _group_targets(task: Task, labels: np.ndarray) -> np.ndarray:
    """`Split` labels -> class index per group (N, n_groups); VA values -> their bins."""
    labels = np.asarray(labels)
    if task.kind == "binary":
        return (labels > 0.5).astype(np.int64)  # (N, 12): 0 absent, 1 present
    if task.kind == "categorical":
        return labels.astype(np.int64).reshape(-1, 1)  # (N, 1)
    return va_to_bin(labels)  # (N, 2)


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


def _valid_rows(masks: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """The task's mask, or every row when the masks say nothing about the task."""
    return np.asarray(masks[name], dtype=bool) if name in masks else np.ones(n, dtype=bool)


def fit_temperatures(logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One temperature per output group, fitted by NLL on the valid rows: "AU" (12,),
    "EXPR" (1,), "VA" (2,). VA is scored as the NLL of the label's bin. A task without
    labels (or with no valid row) keeps temperature 1.
    """
    temperatures: dict[str, np.ndarray] = {}
    for name in logits:
        task = task_by_name(name)
        task_logits = np.asarray(logits[name])  # (N, n_logits)
        temperatures[name] = np.ones(task.n_groups)
        if name not in labels:
            continue
        valid = _valid_rows(masks, name, len(task_logits))
        if not valid.any():
            continue
        grouped = _grouped_logits(task, task_logits[valid])  # (n, G, K)
        targets = _group_targets(task, np.asarray(labels[name])[valid])  # (n, G)
        temperatures[name] = np.array([_fit_one(grouped[:, g], targets[:, g])
                                       for g in range(task.n_groups)])
    return temperatures


def apply_temperatures(logits: Mapping[str, np.ndarray],
                       temperatures: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Logits (N, n_logits) divided by their group's temperature -> probabilities (N, n_logits)."""
    probs = {}
    for name, task_logits in logits.items():
        task = task_by_name(name)
        per_logit = np.repeat(np.asarray(temperatures[name], dtype=np.float64),
                              task.n_logits // task.n_groups)  # (n_logits,)
        scaled = torch.from_numpy(np.asarray(task_logits, dtype=np.float64) / per_logit)
        probs[name] = task.activate(scaled).numpy()
    return probs


def temperature_scaling_cv(logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                           masks: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Test-time cross-validation (Ashukha et al. 2020): split the rows at random into two
    halves, fit on one and calibrate the other, both ways round, so every row gets
    probabilities from temperatures that never saw its label. Returns task -> (N, n_logits).
    """
    n = len(next(iter(logits.values())))
    order = np.random.default_rng(seed).permutation(n)
    halves = (order[: n // 2], order[n // 2:])
    probs = {name: np.empty((n, task_by_name(name).n_logits)) for name in logits}
    for fit_rows, score_rows in (halves, halves[::-1]):
        temperatures = fit_temperatures(
            {name: np.asarray(v)[fit_rows] for name, v in logits.items()},
            {name: np.asarray(v)[fit_rows] for name, v in labels.items()},
            {name: np.asarray(v)[fit_rows] for name, v in masks.items()},
        )
        scored = apply_temperatures({name: np.asarray(v)[score_rows] for name, v in logits.items()},
                                    temperatures)
        for name, task_probs in scored.items():
            probs[name][score_rows] = task_probs
    return probs


def _own_random_state(device: torch.device) -> contextlib.AbstractContextManager:
    """Fork the CPU random state and that of `device`, restored on exit."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[], device_type="cpu")
    index = device.index if device.index is not None else \
        torch.get_device_module(device.type).current_device()
    return torch.random.fork_rng(devices=[index], device_type=device.type)


@contextlib.contextmanager
def enable_mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode everywhere except the dropout layers, which sample; modes restored on exit.

    BatchNorm stays in eval mode, so its running statistics are neither used from the batch
    nor updated.
    """
    modes = {module: module.training for module in model.modules()}
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layer to sample for MC dropout")
    try:
        model.eval()
        for module in dropouts:
            module.train()
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def mc_dropout_probs(model: nn.Module, frames: torch.Tensor, audio: torch.Tensor | None = None,
                     passes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Probabilities averaged over `passes` forward passes with dropout on (MC dropout).

    Calls model(frames) or model(frames, audio); the logits dict's keys are task names. A
    model with `encode`/`decode` (EMENet: dropout only in the heads) runs its CNNs once and
    only the heads `passes` times, which gives the same result at a fraction of the cost.
    `seed` drives the dropout masks without touching the caller's random state.
    """
    if passes < 1:
        raise ValueError(f"MC dropout needs at least one pass, got {passes}")
    inputs = (frames,) if audio is None else (frames, audio)
    summed: dict[str, torch.Tensor] = {}
    with _own_random_state(frames.device), torch.no_grad(), enable_mc_dropout(model):
        torch.manual_seed(seed)
        if hasattr(model, "encode") and hasattr(model, "decode"):
            features = model.encode(*inputs)

            def stochastic_pass() -> dict[str, torch.Tensor]:
                return model.decode(features)[0]
        else:

            def stochastic_pass() -> dict[str, torch.Tensor]:
                return model(*inputs)

        for _ in range(passes):
            for name, task_logits in stochastic_pass().items():
                probs = task_by_name(name).activate(task_logits)
                summed[name] = summed[name] + probs if name in summed else probs
    return {name: total / passes for name, total in summed.items()}

