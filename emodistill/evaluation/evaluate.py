"""Scoring a run generation by generation: emotion metrics, in-domain uncertainty, OOD detection.

Every baseline of `evaluation.baselines` (temperature scaling, MC dropout) is scored on the
teacher members; on simulator
data the Bayes-optimal predictor from `truth/` is scored the same way (Tables 1, 3, 4; Fig. 4-5).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emodistill.core.checkpoints import read_json
from emodistill.core.errors import InputError
from emodistill.data.affwild import load_splits
from emodistill.data.dataset import Split
from emodistill.data.ood import OOD_LIMIT
from emodistill.evaluation.baselines import Teachers, baselines
from emodistill.evaluation.calibration import calibrate, generation_shift
from emodistill.evaluation.metrics import emotion_metrics, reliability, roc_auc, roc_curve
from emodistill.evaluation.ood import OODProbe, density_frames, density_scores, shared_front, thinned_curve
from emodistill.evaluation.scores import Probs, mean_scores, uncertainty_scores
from emodistill.evaluation.uncertainty import decompose_task, ood_score, task_epistemic
from emodistill.methods.distillation import backbone_provenance
from emodistill.methods.losses import ClassWeights
from emodistill.models import PRESETS
from emodistill.models.inference import FrozenFront, predict_features, predict_split
from emodistill.models.members import ensemble_mean
from emodistill.run import Ensemble, Run, RunConfig, generation_name
from emodistill.tasks import TaskSet
from emodistill.tasks.challenge import challenge_scores, decisions_of


def skill_scores(tasks: TaskSet) -> dict[str, tuple[str, str]]:
    """The lower-is-better score of each task that skill is measured on: (group, key) in a score
    dict; {"AU": ("nll", "AU_mean"), "EXPR": ("nll", "EXPR"), "valence": ("rmse", "valence"), ...}."""
    return {metric: score for task in tasks for metric, score in task.skill_scores().items()}


def emotion_summary(split: Split, member_probs: list[Probs], ensemble: Probs) -> dict:
    """Ensemble metrics and single members' mean and std (Table 1, Figure 4)."""
    singles = [emotion_metrics(split.tasks, split.labels, p, split.masks) for p in member_probs]
    keys = singles[0].keys()
    return {
        "ensemble": emotion_metrics(split.tasks, split.labels, ensemble, split.masks),
        "single_mean": {k: float(np.mean([s[k] for s in singles])) for k in keys},
        "single_std": {k: float(np.std([s[k] for s in singles])) for k in keys},
        "single": singles,
    }


def stack_members(member_probs: list[Probs]) -> dict[str, np.ndarray]:
    """List over members of task -> (N, n) into task -> (T, N, n)."""
    return {t: np.stack([p[t] for p in member_probs]) for t in member_probs[0]}


def aleatoric_vs_truth(split: Split, member_probs: list[Probs]) -> dict[str, float]:
    """Mean absolute gap between the ensemble's aleatoric and the true normalised entropy, per task."""
    if split.truth is None:
        return {}
    stacked = stack_members(member_probs)
    gaps = {}
    for task in split.tasks:
        if task.name in stacked and task.name in split.truth:
            _, aleatoric, _ = decompose_task(task, stacked[task.name])
            true_entropy, _, _ = decompose_task(task, split.truth[task.name][None])
            gaps[task.name] = float(np.mean(np.abs(aleatoric - true_entropy)))
    return gaps


def reliability_data(split: Split, member_probs: list[Probs]) -> dict:
    """Reliability diagram bins of the pooled single members, for AU and EXPR."""
    out = {}
    for task in split.tasks:
        mask = split.masks.get(task.name)
        if mask is None or not mask.any() or task.name not in member_probs[0]:
            continue
        y = task.reliability_labels(split.labels[task.name][mask])
        if y is None:  # VA: no classes to be confident about
            continue
        pooled_y = np.concatenate([y] * len(member_probs))
        pooled_p = np.concatenate([p[task.name][mask] for p in member_probs])
        confidence, accuracy, count = reliability(pooled_y, pooled_p)
        used = count > 0  # empty bins have no confidence or accuracy (NaN is not JSON)
        out[task.name] = {"confidence": confidence[used].tolist(), "accuracy": accuracy[used].tolist(),
                          "count": count[used].tolist()}
    return out


@dataclass(frozen=True)
class Scoring:
    """What every generation is scored with: the splits, probes and the run's settings."""

    run: Run
    config: RunConfig
    train: Split
    val: Split
    probe: OODProbe
    fit: tuple[np.ndarray, np.ndarray]  # the density's training frames and their classes
    weights: ClassWeights  # the members' class weights, whose prior shift calibration undoes
    device: torch.device
    tasks: tuple[str, ...]  # tasks with validation labels
    seed: int


def calibrated_scores(scoring: Scoring, generation: int, member_logits: list[dict[str, np.ndarray]]) -> dict:
    """Fit and store the generation's calibration, and score its cross-fitted probabilities:
    single members (mean), their ensemble, and the challenge with the calibrated decisions."""
    val, tasks = scoring.val, scoring.tasks
    shifts = {t.name: generation_shift(t, scoring.weights.array_for(t), generation)
              for t in val.tasks if t.calibrated and t.name in tasks}
    calibration, crossed = calibrate(val.tasks, member_logits, val.labels, val.masks, shifts, val.video,
                                     scoring.seed)
    calibration.save(scoring.run.calibration_path(generation))
    member_probs = [val.tasks.activate(logits, tasks) for logits in crossed]
    ensemble = ensemble_mean(member_probs)
    return {"calibrated": mean_scores([uncertainty_scores(val, p) for p in member_probs]),
            "ensemble_calibrated": uncertainty_scores(val, ensemble),
            "challenge_calibrated": challenge_scores(val.tasks, val.tasks.info.scoring, val.labels,
                                                     decisions_of(val.tasks, ensemble), val.masks)}


def evaluate_generation(
    generation: int, models: list[torch.nn.Module], scoring: Scoring, front: FrozenFront | None = None,
) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """All scores of one generation, plus its members' logits on the validation split; with a
    `front` that covers the members, only their tails and heads run. Stores the generation's
    calibration and feature densities in the run."""
    val, probe, device, config, tasks = scoring.val, scoring.probe, scoring.device, scoring.config, scoring.tasks
    use_audio = config.modality == "va"
    length, batch = config.train.clip_length, config.train.eval_batch_clips
    member_logits = [
        predict_features(m, front["val"], val, device, length, batch, front.tail_blocks) if front is not None
        else predict_split(m, val, device, length, batch, use_audio)
        for m in models
    ]
    member_probs = [val.tasks.activate(logits, tasks) for logits in member_logits]
    ensemble = ensemble_mean(member_probs)
    entry: dict = {"name": generation_name(generation)}
    emotion = emotion_summary(val, member_probs, ensemble)
    entry.update({k: emotion[k] for k in ("ensemble", "single_mean", "single_std")})
    entry["challenge"] = challenge_scores(val.tasks, val.tasks.info.scoring, val.labels,
                                          decisions_of(val.tasks, ensemble), val.masks)
    entry.update(mean_scores([uncertainty_scores(val, p) for p in member_probs]))
    entry["ensemble_uncertainty"] = uncertainty_scores(val, ensemble)
    entry.update(calibrated_scores(scoring, generation, member_logits))
    entry.update(density_scores(models, scoring.train, scoring.fit, val, probe, device,
                                scoring.run.density_path(generation), scoring.seed, front))
    # The paper's OOD score (Fig. 5), beside the density score that `predict` flags with.
    probe_probs = probe.member_probs(models, device, val.tasks, tasks, front)
    scores = ood_score(val.tasks, probe_probs)
    entry["ood_auc_epistemic"] = roc_auc(probe.is_ood, scores)
    # Diagnostic, not the score: how well each task's epistemic part alone separates the sets.
    entry["ood_auc_by_task"] = {name: roc_auc(probe.is_ood, epistemic)
                                for name, epistemic in task_epistemic(val.tasks, probe_probs).items()}
    entry["roc_epistemic"] = thinned_curve(*roc_curve(probe.is_ood, scores))
    entry["reliability"] = reliability_data(val, member_probs)
    gaps = aleatoric_vs_truth(val, member_probs)
    if gaps:
        entry["aleatoric_gap"] = gaps
    return entry, member_logits


def class_prior(train: Split, n: int, tasks: tuple[str, ...]) -> Probs:
    """What a model that learned nothing predicts: the training labels' frequencies, every frame."""
    prior = {}
    for task in train.tasks:
        if task.name in tasks and task.name in train.tasks_present:
            mask = train.masks[task.name]
            rate = task.label_frequencies(train.labels[task.name][mask])
            prior[task.name] = np.broadcast_to(rate.astype(np.float32), (n, task.n_logits)).copy()
    return prior


def scored_predictor(val: Split, probs: Probs) -> dict:
    """A fixed predictor (the prior, the oracle) scored exactly as the models are."""
    entry = uncertainty_scores(val, probs)
    entry["emotion"] = emotion_metrics(val.tasks, val.labels, probs, val.masks)
    entry["challenge"] = challenge_scores(val.tasks, val.tasks.info.scoring, val.labels,
                                          decisions_of(val.tasks, probs), val.masks)
    return entry


def skill(scores: dict, prior: dict, oracle_scores: dict | None, tasks: TaskSet) -> dict[str, float]:
    """Per task, the share of the gap from the class prior to the best possible score that a
    model closes: (prior - model) / (prior - oracle); without an oracle (real data),
    (prior - model) / prior. 0 is no better than the prior, negative is worse."""
    out = {}
    for name, (group, key) in skill_scores(tasks).items():
        model, base = scores.get(group, {}).get(key), prior.get(group, {}).get(key)
        if model is None or base is None:
            continue
        best = 0.0 if oracle_scores is None else oracle_scores.get(group, {}).get(key)
        if best is not None and base - best > 1e-12:
            out[name] = float((base - model) / (base - best))
    return out


def oracle(val: Split) -> dict:
    """The Bayes-optimal predictor (the simulator's true label distributions), scored alike."""
    assert val.truth is not None
    return scored_predictor(val, {t.name: val.truth[t.name] for t in val.tasks if t.name in val.truth})


def add_skill(report: dict, tasks: TaskSet) -> None:
    """Skill against the prior (and the oracle on simulator data) of every scored predictor."""
    prior, best = report["prior"], report.get("oracle")
    for entry in report["generations"]:
        entry["skill"] = {"single": skill(entry, prior, best, tasks),
                          "ensemble": skill(entry["ensemble_uncertainty"], prior, best, tasks)}
        if best is not None and best["emotion"].get("total"):
            entry["total_vs_oracle"] = float(entry["ensemble"]["total"] / best["emotion"]["total"])
    for baseline in report.get("baselines", {}).values():
        baseline["skill"] = skill(baseline, prior, best, tasks)


def evaluate_run(
    root: Path,
    device: torch.device,
    ood_dir: Path | None = None,
    ood_limit: int = OOD_LIMIT,
    mc_passes: int = 10,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data: Path | None = None,
) -> dict:
    """Score every finished generation of a run; returns the report dict (see report.json).

    `data` scores the run on another (or a moved) copy of its data, whose task set must be the
    run's."""
    run = Run(root)
    config = run.config()
    finished = run.finished_generations()
    if 0 not in finished:
        raise InputError(f"{run.root} has no finished teacher ensemble yet; run `emodistill train` first")
    generations = [g for g in finished if g == 0 or g - 1 in finished]
    size = PRESETS[config.preset].input_size
    root_dir = run.data_root(data)
    train, val, summaries = load_splits(root_dir, size, config.modality == "va", progress, config.release)
    log(f"val: {summaries[1]}")
    check_task_sets(run, config.task_set, val.tasks, root_dir)
    tasks = val.tasks_present
    probe = OODProbe(val, size, ood_dir, ood_limit, seed)
    log(f"out-of-domain set: {probe.name} ({len(probe.ood_images)} images) "
        f"against {len(probe.in_images)} validation frames; {len(probe.nonface_images)} {probe.nonface_name}")
    weights = (ClassWeights.from_dict(read_json(run.class_weights_path)) if run.class_weights_path.exists()
               else ClassWeights.uniform(val.tasks))
    scoring = Scoring(run, config, train, val, probe, density_frames(train, seed), weights, device, tasks, seed)
    report: dict = {"run": str(run.root), "data": str(root_dir), "preset": config.preset,
                    "modality": config.modality, "members": config.members, "tasks": list(tasks),
                    "task_set": val.tasks.as_dict(), "release": val.tasks.info.label,
                    "scoring": val.tasks.info.scoring, "ood_set": probe.name,
                    "nonface_set": probe.nonface_name,
                    "losses": {"reweight": config.train.reweight, "balance": config.train.balance,
                               "va_bins": config.train.va_bins},
                    "backbone": read_json(run.backbone_path) if run.backbone_path.exists()
                    else backbone_provenance(config),
                    "prior": scored_predictor(val, class_prior(train, len(val), tasks)),
                    "generations": []}
    front: FrozenFront | None = None
    for generation in generations:
        models = Ensemble(run, generation).models(device)
        if front is None and config.train.freeze_backbone:
            started = time.perf_counter()
            front = shared_front(models[0], config.train.tail_blocks, val, probe,
                                np.asarray(train.frames[scoring.fit[0]]), device)
            log(f"frozen backbone: computed once for the {len(val):,} validation frames, "
                f"{len(probe.is_ood) + len(probe.nonface_images):,} probe images and {len(scoring.fit[0]):,} "
                f"training frames ({time.perf_counter() - started:.1f} s)")
        shared = front if front is not None and front.covers(models) else None
        entry, member_logits = evaluate_generation(generation, models, scoring, shared)
        report["generations"].append(entry)
        log(f"{entry['name']}: ensemble total {entry['ensemble'].get('total', float('nan')):.3f}, "
            f"single {entry['single_mean'].get('total', float('nan')):.3f}, OOD AUC {entry['ood_auc']:.3f} "
            f"(epistemic {entry['ood_auc_epistemic']:.3f})")
        if generation == 0:
            teachers = Teachers(models, member_logits, val, device, config, tasks, mc_passes, seed,
                                None if shared is None else shared["val"], config.train.tail_blocks)
            report["baselines"] = {b.NAME: b.score(teachers) for b in baselines()}
    if val.truth is not None:
        report["oracle"] = oracle(val)
    add_skill(report, val.tasks)
    return report


def check_task_sets(run: Run, trained: TaskSet, read: TaskSet, data: Path) -> None:
    """One sentence when the data would be scored with other tasks or classes than the run learnt."""
    if trained.as_dict()["tasks"] != read.as_dict()["tasks"]:
        raise InputError(
            f"{data} reads as {read.info.label} with tasks {read.describe()}, but {run.root} was trained on "
            f"{trained.info.label} with {trained.describe()}; score it on data of the release it was trained on"
        )
