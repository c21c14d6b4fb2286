"""The in-domain uncertainty scores of one predictor, the same for the models, the baselines, the
class prior and the oracle: NLL per AU and EXPR, RMSE of valence and arousal, ECE."""

from __future__ import annotations

import numpy as np

from emodistill.data.dataset import Split

Probs = dict[str, np.ndarray]  # task -> (N, n_logits) probabilities


def uncertainty_scores(split: Split, probs: Probs) -> dict:
    """In-domain uncertainty of one predictor: NLL per AU and EXPR, RMSE of V/A, ECE (Tables 3-4)."""
    scores: dict = {"nll": {}, "rmse": {}, "ece": {}}
    for task in split.tasks:
        mask = split.masks.get(task.name)
        if mask is None or not mask.any() or task.name not in probs:
            continue
        task_scores = task.uncertainty_scores(split.labels[task.name][mask], probs[task.name][mask])
        for group, values in task_scores.items():
            scores[group].update(values)
    return scores


def mean_scores(all_scores: list[dict]) -> dict:
    """Average nested score dicts (lists element-wise) over members."""
    first = all_scores[0]
    if isinstance(first, dict):
        return {k: mean_scores([s[k] for s in all_scores]) for k in first}
    if isinstance(first, list):
        return [float(v) for v in np.mean(np.asarray(all_scores, dtype=float), axis=0)]
    return float(np.mean(all_scores))
