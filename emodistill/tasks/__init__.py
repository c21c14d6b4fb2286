"""The one description of the three emotion tasks: action units, expression, valence/arousal.

A run's tasks are a `TaskSet`: which tasks, the output names of each (7 expressions in the 2021
release, 8 with "Other" from 2022 on) and the release. The data reader makes it, run.json stores
it, and models, losses, metrics, prediction columns and reports loop over it instead of
repeating three blocks, asking each task for the rules of its kind: `kind.Task` lists them, and
binary.py, categorical.py and binned.py implement them. A new kind is a new file with a `Task`
subclass; a new task is an entry in `TEMPLATES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emodistill.core.errors import InputError
from emodistill.tasks.binary import BinaryTask
from emodistill.tasks.binned import VA_BINS, VA_CENTRES, VA_EDGES, BinnedTask, va_expectation, va_to_bin
from emodistill.tasks.categorical import CategoricalTask
from emodistill.tasks.kind import Task
from emodistill.tasks.releases import PAPER_RELEASE, RELEASES, Release, release
from emodistill.tasks.scoring import same_length, valid_rows

__all__ = [
    "AU", "EXPR", "OTHER", "PAPER_AU_POSITIVE_RATE", "PAPER_AU_POS_WEIGHT", "PAPER_EXPR_RATE",
    "PAPER_EXPR_WEIGHT", "PAPER_RELEASE", "PAPER_TASKS", "RELEASES", "TEMPLATES", "VA", "VA_BINS", "VA_CENTRES",
    "VA_EDGES", "Release", "Task", "TaskSet", "emotion_metrics", "release", "task_set", "va_expectation",
    "va_to_bin", "valid_rows",
]

AU = BinaryTask(
    name="AU", annotation_dir="AU_Set", invalid=-1, metric_names=("AU",), n_logits=12, n_groups=12, n_classes=2,
    names=("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"))
EXPR = CategoricalTask(
    name="EXPR", annotation_dir="EXPR_Set", invalid=-1, metric_names=("EXPR",), n_logits=7, n_groups=1, n_classes=7,
    names=("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"))
VA = BinnedTask(
    name="VA", annotation_dir="VA_Set", invalid=-5, metric_names=("valence", "arousal"), n_logits=2 * VA_BINS,
    n_groups=2, n_classes=VA_BINS, names=("valence", "arousal"))

OTHER = "Other"  # the eighth expression of the 2022+ releases, class 7
# Every task there is, with its 2021 outputs, in the order runs and tables list them.
TEMPLATES: dict[str, Task] = {task.name: task for task in (AU, EXPR, VA)}


@dataclass(frozen=True)
class TaskSet:
    """The tasks of one run, in order, each with its output names, and the release they follow."""

    tasks: tuple[Task, ...]
    release: str = PAPER_RELEASE  # a `releases.RELEASES` name

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tasks)

    def __getitem__(self, name: str | int) -> Task:
        """The task called `name`, or the one at position `name`."""
        if isinstance(name, int):
            return self.tasks[name]
        for t in self.tasks:
            if t.name == name:
                return t
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Keys of the emotion metrics, in order: AU, EXPR, valence, arousal."""
        return tuple(m for t in self.tasks for m in t.metric_names)

    @property
    def info(self) -> Release:
        return release(self.release)

    def activate(self, logits: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Logits -> probabilities of each of these tasks in `logits` (only `names`, when given), by
        the task's kind: sigmoids for AU, a softmax for EXPR and per VA dimension."""
        return {t.name: t.activate(torch.from_numpy(np.asarray(logits[t.name]))).numpy()
                for t in self.tasks if t.name in logits and (names is None or t.name in names)}

    def describe(self) -> str:
        """"AU (12), EXPR (8 classes, with Other), VA (valence, arousal)", for summaries."""
        parts = []
        for t in self.tasks:
            extra = f", with {OTHER}" if OTHER in t.names else ""
            size = f"{t.n_classes} classes{extra}" if t.kind == "categorical" else (
                ", ".join(t.names) if t.kind == "binned" else str(len(t.names)))
            parts.append(f"{t.name} ({size})")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """What run.json records: the release and each task's output names."""
        return {"release": self.release, "tasks": {t.name: list(t.names) for t in self.tasks}}

    @classmethod
    def from_dict(cls, record: Mapping[str, object]) -> TaskSet:
        """Inverse of `as_dict`; InputError for a task this version does not know."""
        tasks = []
        for name, names in dict(record["tasks"]).items():  # type: ignore[arg-type]
            if name not in TEMPLATES:
                raise InputError(f"task {name!r} is not one this version knows ({', '.join(TEMPLATES)})")
            tasks.append(TEMPLATES[name].with_names(names))
        return cls(tuple(tasks), release(str(record.get("release", PAPER_RELEASE))).name)


def task_set(release_name: str = PAPER_RELEASE) -> TaskSet:
    """Every task with the outputs a release labels: 7 expressions in 2021, 8 (with Other) after."""
    info = release(release_name)
    expr = EXPR if info.expressions == len(EXPR.names) else EXPR.with_names((*EXPR.names, OTHER))
    return TaskSet((AU, expr, VA), info.name)


# The paper's task set (the 2021 release): the default of anything made without data to read.
PAPER_TASKS = task_set(PAPER_RELEASE)

# Class weights the paper used on Aff-wild2 (Appendix A); training computes its own from the
# labels it sees (Eq. 3) unless told to use these.
PAPER_AU_POS_WEIGHT = (7.7, 24.7, 5.3, 2.9, 1.5, 1.9, 3.0, 32.3, 32.3, 32.3, 0.59, 11.5)
PAPER_EXPR_WEIGHT = (0.02, 0.2, 0.33, 0.24, 0.03, 0.05, 0.1)
# Paper's label imbalance, as frequencies the simulator reproduces: AU positive rate
# = 1 / (1 + p_c); expression class rate proportional to 1 / p_c.
PAPER_AU_POSITIVE_RATE = tuple(1.0 / (1.0 + p) for p in PAPER_AU_POS_WEIGHT)
PAPER_EXPR_RATE = tuple((1.0 / p) / sum(1.0 / q for q in PAPER_EXPR_WEIGHT) for p in PAPER_EXPR_WEIGHT)


def emotion_metrics(tasks: TaskSet, y_true: Mapping[str, np.ndarray], probs: Mapping[str, np.ndarray],
                    masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The paper's emotion metrics (the ABAW 2021 formulas) of every task with a valid label, and
    their sum as "total".

    y_true in the `Split` label format, probs task -> (N, n_logits), masks task -> (N,) bool
    (a task missing from masks: every frame valid). VA is scored on the expectation.
    """
    results: dict[str, float] = {}
    for task in tasks:
        if task.name not in y_true or task.name not in probs:
            continue
        truth, task_probs = np.asarray(y_true[task.name]), np.asarray(probs[task.name])
        same_length((f"{task.name} labels", truth), (f"{task.name} probabilities", task_probs))
        valid = valid_rows(masks, task.name, len(truth))
        if valid.shape != (len(truth),):
            raise ValueError(f"{task.name} mask has shape {valid.shape}, expected ({len(truth)},)")
        if not valid.any():
            continue
        if task_probs.shape[1:] != (task.n_logits,):
            raise ValueError(f"{task.name} probabilities should have {task.n_logits} columns, "
                             f"got shape {task_probs.shape}")
        scores = task.emotion_scores(truth[valid], task_probs[valid])
        results.update(zip(task.metric_names, scores, strict=True))
    results["total"] = float(sum(results.values()))
    return results
