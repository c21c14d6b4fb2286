"""The feature-density out-of-domain score: how far a frame's visual features lie from the
training frames', as a Mahalanobis distance to class-conditional Gaussians (Lee et al. 2018, DDU).

Each member gets its own Gaussians: one mean per class and one covariance shared by the classes,
shrunk towards a scaled identity by the Ledoit-Wolf rule, so 256 or 512 feature dimensions are
estimated stably from a few thousand frames. A frame's score is its squared distance to the
nearest class mean over the number of dimensions (about 1 on training frames); an ensemble's is
the mean of its members' scores. The threshold flags a chosen share of validation faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodistill.core.checkpoints import load_arrays, save_arrays
from emodistill.core.errors import InputError

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


@dataclass(frozen=True)
class EnsembleDensity:
    """A generation's densities, one per member, and the thresholds of their mean score: the
    k-th threshold is for the mean over the first k members (so `predict --members k` flags at
    the same false-alarm rate as the whole ensemble)."""

    members: tuple[Gaussians, ...]
    thresholds: np.ndarray  # (T,)
    false_alarm: float = FALSE_ALARM

    def score(self, member_features: np.ndarray) -> np.ndarray:
        """Features of the first k members (k, N, D) -> the mean of their distances (N,)."""
        if not 1 <= len(member_features) <= len(self.members):
            raise ValueError(f"expected the features of 1 to {len(self.members)} members, got {len(member_features)}")
        return np.mean([distance(g, f) for g, f in zip(self.members, member_features, strict=False)], axis=0)

    def threshold_for(self, n_members: int) -> float:
        return float(self.thresholds[n_members - 1])

    def save(self, path: Path) -> None:
        arrays = {"thresholds": self.thresholds, "false_alarm": np.array([self.false_alarm]),
                  "shrinkage": np.array([g.shrinkage for g in self.members])}
        for m, g in enumerate(self.members):
            arrays[f"member-{m}.whiten"], arrays[f"member-{m}.means"] = g.whiten, g.means
        save_arrays(path, arrays)

    @classmethod
    def load(cls, path: Path) -> EnsembleDensity:
        """What `save` wrote; InputError naming the file for anything else."""
        arrays = load_arrays(path)
        try:
            thresholds, shrinkage = arrays["thresholds"], arrays["shrinkage"]
            members = tuple(Gaussians(arrays[f"member-{m}.whiten"], arrays[f"member-{m}.means"], float(s))
                            for m, s in enumerate(shrinkage))
            false_alarm = float(arrays["false_alarm"][0])
        except (KeyError, IndexError) as error:
            raise InputError(f"{path} is not a density this version wrote (no {error})") from None
        if len(thresholds) != len(members) or any(g.means.shape[1:] != (g.dim,) for g in members):
            raise InputError(f"{path} is not a density this version wrote (its arrays do not fit together)")
        return cls(members, thresholds, false_alarm)


def ensemble_thresholds(member_scores: np.ndarray, false_alarm: float = FALSE_ALARM) -> np.ndarray:
    """Validation distances of each member (T, N) -> the threshold of the mean over the first k
    members, for k = 1..T (T,)."""
    prefix_means = np.cumsum(member_scores, axis=0) / np.arange(1, len(member_scores) + 1)[:, None]
    return np.array([threshold(s, false_alarm) for s in prefix_means])
