"""Probabilities that are never worse than knowing nothing: class reweighting's prior shift undone
(logit adjustment, Menon et al. 2021), then what the validation videos show pays off on new ones.

After the shift, each member and task gets one of four families, chosen by cross-validation over
the fitting frames' videos: nothing more; a temperature per output group; that temperature with
a share of the fitting frames' base rates mixed into its probabilities ("shrunk": what a member
that is confidently wrong on whole videos needs, since no temperature bounds its worst frames); or
a scale and a bias per logit (vector scaling for the expression's softmax, Platt scaling per AU;
Kull et al. 2019), whose bias per class is what one temperature lacks to move a base rate. Each
member gets its own, fitted on the validation frames, so any subset of members (`predict
--members 1`) is calibrated; the report scores them by cross-fitting over validation videos, so no
frame is scored by a fit (or a choice of family) that saw its label. Class decisions (AU present,
the expression) stay the members' own, reweighted outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emodistill.core.checkpoints import load_arrays, save_arrays
from emodistill.core.errors import InputError
from emodistill.models.speed import torch_threads
from emodistill.tasks import Task, TaskSet, valid_rows

FOLDS = 5  # cross-fitting folds over the validation videos
INNER_FOLDS = 3  # folds over the fitting frames' videos that choose a family
# What may be fitted after the prior shift, simplest first: nothing, a temperature per output
# group, that temperature with a share of the fitting frames' base rates mixed in, or a scale and
# a bias per logit (vector scaling; Platt scaling per AU).
FAMILIES = ("shift", "temperature", "shrunk", "affine")
# Weight of a standard normal prior on each scale (around 1) and bias (around 0), against the
# summed NLL: negligible for thousands of frames, and it keeps the bias of a class that the
# fitting frames never show finite.
PRIOR_WEIGHT = 0.5
START_MIX = 0.05  # the base rates' share where the "shrunk" fit starts


@dataclass(frozen=True)
class Fit:
    """One member's calibration of one task's shifted logits z:
    p = (1 - mix) * activate(scale * z + bias) + mix * rates."""

    scale: np.ndarray  # (n_logits,)
    bias: np.ndarray  # (n_logits,)
    mix: float = 0.0  # the base rates' share
    rates: np.ndarray | None = None  # (n_groups, n_classes): the fitting frames' label frequencies

    @classmethod
    def identity(cls, task: Task) -> Fit:
        return cls(np.ones(task.n_logits), np.zeros(task.n_logits), 0.0, uniform_rates(task))

    def log_probs(self, task: Task, z: np.ndarray) -> torch.Tensor:
        """Calibrated log-probabilities (n, n_groups, n_classes), float64."""
        with torch_threads(1):
            z = torch.from_numpy(np.asarray(z, np.float64))
            log_probs = task.log_activate(z * torch.from_numpy(self.scale) + torch.from_numpy(self.bias))
            if not self.mix or self.rates is None:
                return log_probs
            return mixed(log_probs, torch.logit(torch.tensor(self.mix, dtype=torch.float64)), self.rates)

    def logits(self, task: Task, z: np.ndarray) -> np.ndarray:
        """Calibrated logits (n, n_logits), float32: what `task.activate` turns into `log_probs`."""
        if not self.mix:  # the same numbers, without a round trip through log-probabilities
            return (self.scale * np.asarray(z, np.float64) + self.bias).astype(np.float32)
        return task.logits_from_log_probs(self.log_probs(task, z)).numpy().astype(np.float32)


def uniform_rates(task: Task) -> np.ndarray:
    return np.full((task.n_groups, task.n_classes), 1.0 / task.n_classes)


def base_rates(task: Task, labels: np.ndarray) -> np.ndarray:
    """Each group's label frequencies (n_groups, n_classes), with half a count added to every
    class so that none is impossible."""
    targets = task.group_targets(labels)  # (n, G)
    counts = np.stack([np.bincount(targets[:, g], minlength=task.n_classes) for g in range(task.n_groups)])
    return (counts + 0.5) / (counts + 0.5).sum(-1, keepdims=True)


def mixed(log_probs: torch.Tensor, mix_logit: torch.Tensor, rates: np.ndarray) -> torch.Tensor:
    """log((1 - mix) * exp(log_probs) + mix * rates) with mix = sigmoid(mix_logit), stable for any
    `mix_logit` (a share of 0 or 1 included); `log_probs` (n, G, K)."""
    return torch.logaddexp(torch.nn.functional.logsigmoid(-mix_logit) + log_probs,
                           torch.nn.functional.logsigmoid(mix_logit) + torch.from_numpy(np.log(rates)))


def generation_shift(task: Task, weights: np.ndarray | None, generation: int) -> np.ndarray:
    """The prior shift in a generation's outputs (n_logits,): the teachers' loss shifts once, and
    every student generation adds its distillation loss's shift to the soft labels it copies."""
    first, later = task.prior_shift(weights, False), task.prior_shift(weights, True)
    shift = np.zeros(task.n_logits) if first is None else first
    return shift + (0.0 if later is None else generation * later)


def fit_affine(task: Task, logits: np.ndarray, labels: np.ndarray, family: str = "affine") -> Fit:
    """The `Fit` of `family` minimising the NLL of the valid `labels` (`Split` format), with a weak
    prior around the identity: "affine" a scale and bias per logit; "temperature" one scale per
    output group and no bias (temperature scaling); "shrunk" that temperature and the share of
    the frames' base rates to mix in."""
    z = torch.from_numpy(np.asarray(logits, np.float64))  # (n, n_logits)
    targets = torch.from_numpy(task.group_targets(labels)).long()  # (n, G)
    tied, shrunk = family in ("temperature", "shrunk"), family == "shrunk"
    rates = base_rates(task, labels) if shrunk else None
    scale = torch.ones(task.n_groups if tied else task.n_logits, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(task.n_logits, dtype=torch.float64, requires_grad=not tied)
    # The share is sigmoid(mix_logit), in (0, 1).
    mix_logit = torch.tensor(np.log(START_MIX / (1 - START_MIX)), dtype=torch.float64, requires_grad=shrunk)
    per_group = task.n_logits // task.n_groups
    fitted = [scale, mix_logit] if shrunk else [scale] if tied else [scale, bias]

    def expanded() -> torch.Tensor:
        return scale.repeat_interleave(per_group) if tied else scale  # (n_logits,)

    optimiser = torch.optim.LBFGS(fitted, lr=1.0, max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        log_probs = task.log_activate(z * expanded() + bias)
        if rates is not None:
            log_probs = mixed(log_probs, mix_logit, rates)
        nll = -log_probs.gather(-1, targets[..., None]).sum()
        loss = (nll + PRIOR_WEIGHT * (((scale - 1) ** 2).sum() + (bias**2).sum())) / max(len(z), 1)
        loss.backward()
        return loss

    # One thread: on these small tensors two OpenMP threads on a busy 2-core machine took 15 s a
    # fit instead of 0.09 s (the same 9 evaluations).
    with torch.enable_grad(), torch_threads(1):
        optimiser.step(objective)
        mix = float(torch.sigmoid(mix_logit.detach())) if shrunk else 0.0
        return Fit(expanded().detach().numpy().copy(), bias.detach().numpy().copy(), mix,
                   uniform_rates(task) if rates is None else rates)


def frame_nll(task: Task, log_probs: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """The NLL of each frame's `labels` (`Split` format) under `log_probs` (n, G, K), summed over
    its output groups: (n,)."""
    targets = torch.from_numpy(task.group_targets(labels)).long()
    return -log_probs.gather(-1, targets[..., None])[..., 0].sum(-1).numpy()


def fit_family(task: Task, logits: np.ndarray, labels: np.ndarray, family: str) -> Fit:
    """The `Fit` of one of `FAMILIES` on these frames: "shift" fits nothing."""
    if family == "shift":
        return Fit.identity(task)
    return fit_affine(task, logits, labels, family)


def choose_family(task: Task, logits: np.ndarray, labels: np.ndarray, video: np.ndarray) -> str:
    """The simplest family of `FAMILIES` whose fits score, on videos they were not fitted on
    (`INNER_FOLDS`-fold cross-validation by video, inside the frames given), within one standard
    error of the best one's NLL (the one-standard-error rule, over the videos' summed NLLs).

    Frames of one video are alike, so a fit's gain on its own frames says little about new faces:
    measured on the demo's teachers, a scale and bias per logit lowered the EXPR NLL from 1.36 to
    1.22 on the frames it was fitted on and raised it to 1.40 on other videos; and on 26 photos
    any fit is mostly noise."""
    fold = folds_by_video(video, INNER_FOLDS)
    if len(np.unique(fold)) < 2:
        return "shift"
    names, which = np.unique(video, return_inverse=True)
    per_video = np.zeros((len(FAMILIES), len(names)))  # each family's held-out NLL of each video
    for k in np.unique(fold):
        inside = fold != k
        for f, family in enumerate(FAMILIES):
            fit = fit_family(task, logits[inside], labels[inside], family)
            nll = frame_nll(task, fit.log_probs(task, logits[~inside]), labels[~inside])
            per_video[f] += np.bincount(which[~inside], weights=nll, minlength=len(names))
    totals = per_video.sum(1)
    if not np.isfinite(totals).any():
        return "shift"
    best = per_video[np.nanargmin(np.where(np.isfinite(totals), totals, np.nan))]
    within = [bool((per_video[f] - best).sum() <= np.std(per_video[f] - best) * np.sqrt(len(names)))
              for f in range(len(FAMILIES))]  # the best one always is; a fit that fails never
    return FAMILIES[within.index(True)]  # simplest first


def fit_member(tasks: TaskSet, logits: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
               masks: Mapping[str, np.ndarray], shifts: Mapping[str, np.ndarray], video: np.ndarray,
               rows: np.ndarray) -> dict[str, Fit]:
    """One member's `Fit` per calibrated task, of the family `choose_family` picks on the valid
    frames among `rows` and fitted on them; the identity for a task without one."""
    fitted = {}
    for name, shift in shifts.items():
        task = tasks[name]
        valid = rows[valid_rows(masks, name, len(logits[name]))[rows]] if name in labels else rows[:0]
        if not len(valid):
            fitted[name] = Fit.identity(task)
            continue
        shifted, truth = np.asarray(logits[name])[valid] - shift, np.asarray(labels[name])[valid]
        fitted[name] = fit_family(task, shifted, truth, choose_family(task, shifted, truth, video[valid]))
    return fitted


def folds_by_video(video: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number per frame (N,), every video's frames in one fold; a single video is cut into
    contiguous blocks instead, the best that one video allows."""
    video = np.asarray(video)
    names = np.unique(video)
    if len(names) < 2:
        return np.minimum(np.arange(len(video)) * folds // max(len(video), 1), folds - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of_video = np.empty(len(names), np.int64)
    fold_of_video[order] = np.arange(len(names)) % min(folds, len(names))
    return fold_of_video[np.searchsorted(names, video)]


@dataclass(frozen=True)
class TaskCalibration:
    """One task's calibration of T members: member m's logits -> fit m's of (logits - shift)."""

    task: Task
    shift: np.ndarray  # (n_logits,) what the members' losses added to the true log-odds
    scale: np.ndarray  # (T, n_logits)
    bias: np.ndarray  # (T, n_logits)
    mix: np.ndarray  # (T,) the base rates' share
    rates: np.ndarray  # (T, n_groups, n_classes)

    @classmethod
    def of(cls, task: Task, shift: np.ndarray, fits: list[Fit]) -> TaskCalibration:
        return cls(task, np.asarray(shift, np.float64), np.stack([f.scale for f in fits]),
                   np.stack([f.bias for f in fits]), np.array([f.mix for f in fits], np.float64),
                   np.stack([uniform_rates(task) if f.rates is None else f.rates for f in fits]))

    def fit(self, member: int) -> Fit:
        return Fit(self.scale[member], self.bias[member], float(self.mix[member]), self.rates[member])

    def logits(self, member: int, logits: np.ndarray) -> np.ndarray:
        """Member `member`'s logits (..., n_logits) -> calibrated logits, float32."""
        logits = np.asarray(logits, np.float64)
        flat = self.fit(member).logits(self.task, logits.reshape(-1, logits.shape[-1]) - self.shift)
        return flat.reshape(logits.shape)


@dataclass(frozen=True)
class Calibration:
    """A generation's calibration: per calibrated task, every member's fit."""

    tasks: dict[str, TaskCalibration]

    def apply(self, member_logits: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The first members' logits, task -> (k, ..., n_logits), calibrated where there is a fit."""
        return {name: np.stack([self.tasks[name].logits(m, v) for m, v in enumerate(value)])
                if name in self.tasks else value for name, value in member_logits.items()}

    def save(self, path: Path) -> None:
        arrays = {}
        for name, fit in self.tasks.items():
            arrays |= {f"{name}.{key}": getattr(fit, key) for key in ("shift", "scale", "bias", "mix", "rates")}
        save_arrays(path, arrays)

    @classmethod
    def load(cls, path: Path, tasks: TaskSet) -> Calibration:
        """What `save` wrote for a run of `tasks` (one written before the base rates' share reads
        as a share of 0); InputError naming the file for anything else."""
        arrays = load_arrays(path)
        fits = {}
        for name in {key.split(".")[0] for key in arrays}:
            try:
                task = tasks[name]
                scale = arrays[f"{name}.scale"]
                fit = TaskCalibration(task, arrays[f"{name}.shift"], scale, arrays[f"{name}.bias"],
                                      arrays.get(f"{name}.mix", np.zeros(len(scale))),
                                      arrays.get(f"{name}.rates", np.stack([uniform_rates(task)] * len(scale))))
            except (KeyError, ValueError, TypeError) as error:
                raise InputError(f"{path} is not a calibration of this run ({error})") from None
            T = len(fit.scale)
            shapes = (fit.shift.shape, fit.scale.shape, fit.bias.shape, fit.mix.shape, fit.rates.shape)
            if shapes != ((task.n_logits,), (T, task.n_logits), (T, task.n_logits), (T,),
                          (T, task.n_groups, task.n_classes)):
                raise InputError(f"{path} is not a calibration of this run ({name} has the wrong shape)")
            fits[name] = fit
        return cls(fits)


def calibrate(tasks: TaskSet, member_logits: list[Mapping[str, np.ndarray]], labels: Mapping[str, np.ndarray],
              masks: Mapping[str, np.ndarray], shifts: Mapping[str, np.ndarray], video: np.ndarray,
              seed: int = 0) -> tuple[Calibration, list[dict[str, np.ndarray]]]:
    """Fit every member on all validation frames (the calibration `predict` applies), and give
    every member's cross-fitted calibrated logits: each frame's from a fit on the other folds'
    videos (what the report scores). `shifts`: task -> prior shift, for the tasks to calibrate."""
    n = len(video)
    fold = folds_by_video(video, seed=seed)
    everything = np.arange(n)
    fits: dict[str, list[Fit]] = {name: [] for name in shifts}
    crossed = []
    for logits in member_logits:
        for name, fit in fit_member(tasks, logits, labels, masks, shifts, video, everything).items():
            fits[name].append(fit)
        out = {name: np.array(value, copy=True) for name, value in logits.items()}
        for k in np.unique(fold):
            held_out = fold == k
            for name, fit in fit_member(tasks, logits, labels, masks, shifts, video, everything[~held_out]).items():
                out[name][held_out] = fit.logits(tasks[name], logits[name][held_out] - shifts[name])
        crossed.append(out)
    return Calibration({name: TaskCalibration.of(tasks[name], shifts[name], pairs)
                        for name, pairs in fits.items()}), crossed
