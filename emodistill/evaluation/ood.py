"""Out-of-domain detection of a generation: the probe sets (validation faces, Fashion-MNIST, real
non-face pictures) and the feature-density score fitted on training frames, thresholded on validation.

The density score is what `predict` flags with; the paper's epistemic score is measured beside it
(`evaluate`), on the same probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emodistill.data.dataset import Split
from emodistill.data.ood import load_nonfaces, load_ood
from emodistill.evaluation.density import (
    EnsembleDensity,
    combine,
    ensemble_thresholds,
    fit_member,
    part_scales,
    part_sizes,
    threshold,
)
from emodistill.evaluation.metrics import roc_auc, roc_curve
from emodistill.models.inference import (
    FrozenFront,
    density_inputs,
    predict_encoded_images,
    predict_images,
)
from emodistill.tasks import TaskSet

DENSITY_FRAMES = 20_000  # training frames a density is fitted on, at most (a random subset)


class OODProbe:
    """In-domain validation frames and OOD images, both as length-1 sequences, and real non-face
    pictures. An audio-visual model hears real validation sound with every OOD image, so that
    only the picture tells the sets apart (silence alone would)."""

    def __init__(self, val: Split, size: int, directory: Path | None, limit: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        n_in = min(limit, len(val))
        self.in_index = np.sort(rng.choice(len(val), size=n_in, replace=False))
        ood = load_ood(size, directory=directory, limit=limit, seed=seed)
        self.name = ood.name
        self.in_images = np.asarray(val.frames[self.in_index])
        self.ood_images = ood.images
        nonfaces = load_nonfaces(size, seed)
        self.nonface_name, self.nonface_images = nonfaces.name, nonfaces.images
        self.in_audio = self.ood_audio = None
        if val.audio is not None:
            self.in_audio = np.asarray(val.audio[self.in_index])
            self.ood_audio = np.asarray(val.audio[np.sort(rng.choice(len(val), size=len(ood.images)))])

    @property
    def is_ood(self) -> np.ndarray:
        return np.concatenate([np.zeros(len(self.in_images), bool), np.ones(len(self.ood_images), bool)])

    def member_probs(self, models: list[torch.nn.Module], device: torch.device, task_set: TaskSet,
                     tasks: tuple[str, ...], front: FrozenFront | None = None) -> dict[str, np.ndarray]:
        """Task -> the members' probabilities (T, N, n_logits) for in-domain then OOD images."""
        member_probs = []
        for model in models:
            if front is not None:
                inside = predict_encoded_images(model, front["probe_in"], device, front.tail_blocks)
                outside = predict_encoded_images(model, front["probe_out"], device, front.tail_blocks)
            else:
                inside = predict_images(model, self.in_images, device, self.in_audio)
                outside = predict_images(model, self.ood_images, device, self.ood_audio)
            inside, outside = task_set.activate(inside, tasks), task_set.activate(outside, tasks)
            member_probs.append({t: np.concatenate([inside[t], outside[t]]) for t in inside})
        return {t: np.stack([p[t] for p in member_probs]) for t in member_probs[0]}


def shared_front(model: torch.nn.Module, tail_blocks: int, val: Split, probe: OODProbe, fit_images: np.ndarray,
                 device: torch.device) -> FrozenFront:
    """In a frozen-backbone run every member of every generation computes the same backbone below
    its own tail, so evaluation runs that part once, on the validation frames, the probes' images
    and the density's training frames, and each member only its tail and heads: the same outputs
    as full forward passes, within float rounding."""
    front = FrozenFront(model, tail_blocks, device).add("val", val.frames, statistics=True)
    return (front.add("probe_in", probe.in_images, True).add("probe_out", probe.ood_images, True)
            .add("nonfaces", probe.nonface_images, True).add("fit", fit_images, True))


def density_frames(train: Split, seed: int = 0, limit: int = DENSITY_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """The training frames a density is fitted on and their classes, (n,) each: the frames with
    a label of the run's first categorical task (the expression) and that label, as Lee et al. fit
    class means on labelled training data; one class over all frames where no such task has
    labels. At most `limit`, drawn at random."""
    labelled = [t for t in train.tasks if t.kind == "categorical" and t.name in train.tasks_present]
    if labelled:
        index = np.flatnonzero(train.masks[labelled[0].name])
        classes = np.asarray(train.labels[labelled[0].name])
    else:
        index, classes = np.arange(len(train)), np.zeros(len(train), np.int64)
    if len(index) > limit:
        index = np.sort(np.random.default_rng(seed).choice(index, size=limit, replace=False))
    return index, classes[index]


def density_scores(models: list[torch.nn.Module], train: Split, fit: tuple[np.ndarray, np.ndarray], val: Split,
                   probe: OODProbe, device: torch.device, path: Path, seed: int = 0,
                   front: FrozenFront | None = None) -> dict:
    """Fit each member's density on the training frames `fit` (index, classes), scale its parts
    and threshold the ensemble's mean score on every validation frame, save it at `path`, and
    score the probes: the report entry's density fields."""
    fit_index, classes = fit
    sets = {"fit": np.asarray(train.frames[fit_index]), "val": val.frames, "probe_in": probe.in_images,
            "probe_out": probe.ood_images, "nonfaces": probe.nonface_images}
    sizes = part_sizes(models[0].config.density_dim, models[0].config.feature_dim)
    members, parts = [], {name: [] for name in sets if name != "fit"}  # name -> per member (P, N)
    for model in models:
        inputs = {name: density_inputs(model, images, device, cached=None if front is None
                                       else front.density_cache(name)) for name, images in sets.items()}
        members.append(fit_member(inputs["fit"], classes, inputs["val"], sizes))
        for name in parts:
            parts[name].append(members[-1].distances(inputs[name]))
    distances = {name: np.stack(d) for name, d in parts.items()}  # (T, P, N)
    scales = np.stack([m.scales for m in members])  # (T, P)
    member_val = np.stack([combine(d[None], s[None]) for d, s in zip(distances["val"], scales, strict=True)])
    density = EnsembleDensity(tuple(members), ensemble_thresholds(member_val))
    density.save(path)

    def scored(name: str, count: int) -> np.ndarray:
        return combine(distances[name][:count], scales[:count])

    def flagged(count: int) -> dict:
        limit = density.threshold_for(count)
        return {"validation (held out)": held_out_flag_rate(distances["val"][:count], val.video, seed),
                probe.name: float(np.mean(scored("probe_out", count) > limit)),
                probe.nonface_name: float(np.mean(scored("nonfaces", count) > limit))}

    every = len(models)
    scores = np.concatenate([scored("probe_in", every), scored("probe_out", every)])
    single = [np.concatenate([combine(distances[n][m : m + 1], scales[m : m + 1]) for n in ("probe_in", "probe_out")])
              for m in range(every)]
    fpr, tpr = roc_curve(probe.is_ood, scores)
    return {
        "ood_auc": roc_auc(probe.is_ood, scores),
        "ood_auc_single": float(np.mean([roc_auc(probe.is_ood, s) for s in single])),
        "ood_threshold": density.threshold_for(every),
        "ood_flagged": flagged(every),
        "ood_flagged_single": flagged(1),  # the first member alone, as `predict --members 1` flags
        # each part alone, at its own 5% of validation faces: what each part catches
        "ood_flagged_by_part": {part: {label: float(np.mean(combine(distances[name][:, p : p + 1],
                                                                    scales[:, p : p + 1]) > 1))
                                       for name, label in (("probe_out", probe.name),
                                                           ("nonfaces", probe.nonface_name))}
                                for p, part in enumerate(("features", "stage statistics")[: len(sizes)])},
        "density_shrinkage": [[g.shrinkage for g in m.parts] for m in members],
        "roc": thinned_curve(fpr, tpr),
    }


def held_out_flag_rate(distances: np.ndarray, video: np.ndarray, seed: int = 0) -> float:
    """The share of validation frames flagged when the parts' scales and the threshold are set
    on the other half of the validation videos, both ways round: the false-alarm rate to expect
    on unseen faces. `distances`: the members' part distances (T, P, N), or plain scores (N,)."""
    distances = np.asarray(distances, np.float64)
    distances = distances[None, None] if distances.ndim == 1 else distances
    names = np.unique(video)
    if len(names) < 2:
        return float("nan")
    first = np.isin(video, np.random.default_rng(seed).permutation(names)[: len(names) // 2])
    flagged = []
    for part in (first, ~first):
        scores = combine(distances, part_scales(distances[..., part]))
        flagged.append(np.sum(scores[~part] > threshold(scores[part])))
    return float(np.sum(flagged) / len(video))


def thinned_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}
