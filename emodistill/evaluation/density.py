"""The feature-density out-of-domain score: how far a frame lies from the training frames, as
Mahalanobis distances to class-conditional Gaussians (Lee et al. 2018, DDU), in two parts:

- the visual features, what the face model makes of the frame;
- the stage statistics, each channel's mean and log spread at the end of every resolution stage
  of the backbone (`mobilefacenet.stage_statistics`), how the image looks to the network on its
  way (Lee et al. score several layers too). The features alone let non-face photographs and
  textures pass (30% of them flagged on the demo); the statistics catch them.

Each part of each member gets its own Gaussians: one mean per class and one covariance shared by
the classes, shrunk towards a scaled identity by the Ledoit-Wolf rule, so a few hundred
dimensions are estimated stably from a few thousand frames. A part's distance is the squared
distance to the nearest class mean over the number of dimensions; it is divided by its value at
the false-alarm quantile of the validation faces, so that 1 means "this part alone would flag
it". A member's score is the larger of its parts', an ensemble's the mean of its members'. The
threshold flags a chosen share of validation faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from emodistill.core.checkpoints import load_arrays, save_arrays
from emodistill.core.errors import InputError
from emodistill.models.mobilefacenet import STATISTICS_VERSION

FALSE_ALARM = 0.05  # the stored threshold flags this share of the validation faces


@dataclass(frozen=True)
class Gaussians:
    """One member's density: class means and the shared covariance, both whitened.

    `whiten` (D, D) is W with W W^T = the shrunk covariance's inverse, so the squared Mahalanobis
    distance of x to mean m is ||x W - m W||^2; `means` (C, D) holds the class means times W.
    """

    whiten: np.ndarray  # (D, D) float64
    means: np.ndarray  # (C, D) float64, already times `whiten`
    shrinkage: float  # Ledoit-Wolf weight of the scaled identity in the covariance (0..1)

    @property
    def dim(self) -> int:
        return int(self.whiten.shape[0])


def fit_gaussians(features: np.ndarray, classes: np.ndarray) -> Gaussians:
    """Class means and one shrunk covariance of the features around them.

    features (N, D), classes (N,) any integer labels; a class with no frame has no mean.
    """
    from sklearn.covariance import ledoit_wolf  # fitting only: predicting needs NumPy alone

    features = np.asarray(features, np.float64)
    classes = np.asarray(classes)
    if features.ndim != 2 or len(features) != len(classes):
        raise ValueError(f"expected features (N, D) and classes (N,), got {features.shape} and {classes.shape}")
    if len(features) < 2:
        raise ValueError("a density needs at least two frames")
    present, which = np.unique(classes, return_inverse=True)
    means = np.stack([features[which == c].mean(0) for c in range(len(present))])  # (C, D)
    covariance, shrinkage = ledoit_wolf(features - means[which], assume_centered=True)
    # The inverse's Cholesky factor: P = L L^T with L lower, so ||(x - m) L||^2 is the distance.
    precision = np.linalg.inv(covariance)
    whiten = np.linalg.cholesky((precision + precision.T) / 2)
    return Gaussians(whiten, means @ whiten, float(shrinkage))


def distance(gaussians: Gaussians, features: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean over the dimensions: (N, D) -> (N,)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != gaussians.dim:
        raise ValueError(f"expected features (N, {gaussians.dim}), got {features.shape}")
    projected = features @ gaussians.whiten  # (N, D)
    # ||a - b||^2 = |a|^2 - 2 a.b + |b|^2 for every frame and class at once: (N, C)
    squared = ((projected**2).sum(1)[:, None] - 2 * projected @ gaussians.means.T
               + (gaussians.means**2).sum(1)[None])
    return np.maximum(squared.min(1), 0.0) / gaussians.dim


def threshold(scores: np.ndarray, false_alarm: float = FALSE_ALARM) -> float:
    """The score above which `false_alarm` of the in-domain `scores` lie."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or not len(scores):
        raise ValueError(f"expected in-domain scores (N,), got shape {scores.shape}")
    return float(np.quantile(scores, 1.0 - false_alarm))


def part_sizes(density_dim: int, feature_dim: int) -> tuple[int, ...]:
    """The parts of a density input: the visual features, then the stage statistics."""
    return (feature_dim, density_dim - feature_dim) if density_dim > feature_dim else (feature_dim,)


def split_parts(inputs: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """(N, >= sum(sizes)) density inputs -> one (N, size) array per part; columns past the
    parts are left out (a density fitted on the features alone reads only them)."""
    if inputs.ndim != 2 or inputs.shape[1] < sum(sizes):
        raise ValueError(f"expected density inputs (N, >= {sum(sizes)}), got {inputs.shape}")
    edges = np.cumsum((0, *sizes))
    return [inputs[:, a:b] for a, b in pairwise(edges)]


@dataclass(frozen=True)
class MemberDensity:
    """One member's density: Gaussians per part and each part's validation scale."""

    parts: tuple[Gaussians, ...]
    scales: np.ndarray  # (P,) each part's distance at the false-alarm quantile of validation faces

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(g.dim for g in self.parts)

    def distances(self, inputs: np.ndarray) -> np.ndarray:
        """Density inputs (N, D) -> each part's distance, unscaled (P, N)."""
        return np.stack([distance(g, x) for g, x in zip(self.parts, split_parts(inputs, self.sizes), strict=True)])

    def score(self, inputs: np.ndarray) -> np.ndarray:
        """Density inputs (N, D) -> the largest scaled part distance (N,)."""
        return combine(self.distances(inputs)[None], self.scales[None])


def combine(distances: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Part distances of T members (T, P, N) and their scales (T, P) -> the ensemble's score
    (N,): per member the largest of distance / scale, then the mean over members."""
    return np.mean((distances / scales[..., None]).max(axis=1), axis=0)


def part_scales(val_distances: np.ndarray, false_alarm: float = FALSE_ALARM) -> np.ndarray:
    """Part distances on validation faces (..., P, N) -> each part's scale (..., P): its
    threshold, were it flagging alone."""
    return np.quantile(np.asarray(val_distances, np.float64), 1.0 - false_alarm, axis=-1)


def fit_member(fit_inputs: np.ndarray, classes: np.ndarray, val_inputs: np.ndarray, sizes: tuple[int, ...],
               false_alarm: float = FALSE_ALARM) -> MemberDensity:
    """Gaussians per part on training density inputs (N, D) of `classes`, scaled on validation
    density inputs (M, D)."""
    parts = tuple(fit_gaussians(x, classes) for x in split_parts(fit_inputs, sizes))
    unscaled = MemberDensity(parts, np.ones(len(parts)))
    return MemberDensity(parts, part_scales(unscaled.distances(val_inputs), false_alarm))


@dataclass(frozen=True)
class EnsembleDensity:
    """A generation's densities, one per member, and the thresholds of their mean score: the
    k-th threshold is for the mean over the first k members (so `predict --members k` flags at
    the same false-alarm rate as the whole ensemble)."""

    members: tuple[MemberDensity, ...]
    thresholds: np.ndarray  # (T,)
    false_alarm: float = FALSE_ALARM

    def score(self, member_inputs: np.ndarray) -> np.ndarray:
        """Density inputs of the first k members (k, N, D) -> the mean of their scores (N,)."""
        if not 1 <= len(member_inputs) <= len(self.members):
            raise ValueError(f"expected the inputs of 1 to {len(self.members)} members, got {len(member_inputs)}")
        return np.mean([m.score(x) for m, x in zip(self.members, member_inputs, strict=False)], axis=0)

    def threshold_for(self, n_members: int) -> float:
        return float(self.thresholds[n_members - 1])

    def save(self, path: Path) -> None:
        arrays = {"thresholds": self.thresholds, "false_alarm": np.array([self.false_alarm]),
                  "statistics_version": np.array([STATISTICS_VERSION]),
                  "scales": np.stack([m.scales for m in self.members]),
                  "shrinkage": np.array([[g.shrinkage for g in m.parts] for m in self.members])}
        for m, member in enumerate(self.members):
            for p, g in enumerate(member.parts):
                arrays[f"member-{m}.part-{p}.whiten"], arrays[f"member-{m}.part-{p}.means"] = g.whiten, g.means
        save_arrays(path, arrays)

    @classmethod
    def load(cls, path: Path) -> EnsembleDensity:
        """What `save` wrote, or a features-only density of an earlier version (one part, scale
        1: the same scores as then); InputError naming the file for anything else, a density
        fitted on another version's stage statistics too."""
        arrays = load_arrays(path)
        try:
            thresholds, shrinkage = arrays["thresholds"], np.asarray(arrays["shrinkage"])
            false_alarm = float(arrays["false_alarm"][0])
            if "scales" not in arrays:  # features only, keys "member-<m>.whiten"
                members = tuple(MemberDensity((Gaussians(arrays[f"member-{m}.whiten"], arrays[f"member-{m}.means"],
                                                         float(s)),), np.ones(1)) for m, s in enumerate(shrinkage))
            else:
                members = tuple(
                    MemberDensity(tuple(Gaussians(arrays[f"member-{m}.part-{p}.whiten"],
                                                  arrays[f"member-{m}.part-{p}.means"], float(s))
                                        for p, s in enumerate(row)), np.asarray(arrays["scales"][m], np.float64))
                    for m, row in enumerate(shrinkage))
        except (KeyError, IndexError, TypeError) as error:
            raise InputError(f"{path} is not a density this version wrote (no {error})") from None
        version = int(arrays["statistics_version"][0]) if "statistics_version" in arrays else 1
        if any(len(m.parts) > 1 for m in members) and version != STATISTICS_VERSION:
            raise InputError(f"{path} was fitted on the stage statistics of an earlier version (version {version}, "
                             f"this one reads version {STATISTICS_VERSION}); run `emodistill evaluate` to refit it")
        if len(thresholds) != len(members) or any(len(m.scales) != len(m.parts) or
                                                  any(g.means.shape[1:] != (g.dim,) for g in m.parts)
                                                  for m in members):
            raise InputError(f"{path} is not a density this version wrote (its arrays do not fit together)")
        return cls(members, thresholds, false_alarm)


def ensemble_thresholds(member_scores: np.ndarray, false_alarm: float = FALSE_ALARM) -> np.ndarray:
    """Validation scores of each member (T, N) -> the threshold of the mean over the first k
    members, for k = 1..T (T,)."""
    prefix_means = np.cumsum(member_scores, axis=0) / np.arange(1, len(member_scores) + 1)[:, None]
    return np.array([threshold(s, false_alarm) for s in prefix_means])
