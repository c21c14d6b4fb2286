"""The ABAW challenges' own scores, as each year's track names them: P_AU, P_EXPR, P_VA and, from
2022 on, the multi-task P_MTL (their sum).

2021: P_EXPR = 0.67 F1 + 0.33 accuracy (macro F1 over the 7 classes), P_AU = 0.5 F1 + 0.5
accuracy (mean F1 over the 12 AUs; accuracy over all frame x AU entries), P_VA = the mean CCC of
valence and arousal. 2022 onwards: P_EXPR = macro F1 over the 8 classes, P_AU = mean F1 over
the 12 AUs, P_VA as before, P_MTL = P_AU + P_EXPR + P_VA. Each is a weighted sum of the parts a
task kind reports of its decisions (`Task.decide`, `Task.challenge_parts`): what a submission
file holds, so the scores of predictions and of submission files are one computation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from emodistill.tasks.kind import Task
from emodistill.tasks.scoring import valid_rows

# scoring year -> task -> (score name, weight of each part)
FORMULAS: dict[str, dict[str, tuple[str, dict[str, float]]]] = {
    "2021": {
        "AU": ("P_AU", {"F1": 0.5, "accuracy": 0.5}),
        "EXPR": ("P_EXPR", {"F1": 0.67, "accuracy": 0.33}),
        "VA": ("P_VA", {"CCC_valence": 0.5, "CCC_arousal": 0.5}),
    },
    "2022": {
        "AU": ("P_AU", {"F1": 1.0}),
        "EXPR": ("P_EXPR", {"F1": 1.0}),
        "VA": ("P_VA", {"CCC_valence": 0.5, "CCC_arousal": 0.5}),
    },
}
MULTI_TASK = "P_MTL"  # 2022 onwards, when all three tracks are scored


def challenge_scores(tasks: Iterable[Task], scoring: str, labels: Mapping[str, np.ndarray],
                     decisions: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """{"scores": {"P_AU": .., "P_EXPR": .., "P_VA": .., ["P_MTL": ..]}, "parts": {task: parts}}
    over the valid frames of each task with labels and decisions (`Task.decide`'s format)."""
    formulas = FORMULAS[scoring]
    scores: dict[str, float] = {}
    parts: dict[str, dict[str, float]] = {}
    for task in tasks:
        if task.name not in labels or task.name not in decisions or task.name not in formulas:
            continue
        valid = valid_rows(masks, task.name, len(labels[task.name]))
        if not valid.any():
            continue
        truth, predicted = np.asarray(labels[task.name])[valid], np.asarray(decisions[task.name])[valid]
        parts[task.name] = task.challenge_parts(truth, predicted)
        name, weights = formulas[task.name]
        scores[name] = float(sum(w * parts[task.name][part] for part, w in weights.items()))
    if scoring != "2021" and all(name in scores for name, _ in formulas.values()):
        scores[MULTI_TASK] = float(sum(scores[name] for name, _ in formulas.values()))
    return {"scores": scores, "parts": parts}


def decisions_of(tasks: Iterable[Task], probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each task's decisions (`Task.decide`) from its probabilities (N, n_logits)."""
    return {task.name: task.decide(probs[task.name]) for task in tasks if task.name in probs}
