"""Multitask loss weights from validation progress: paper Appendix B, Algorithm 1.

A task that has not improved for m epochs gets weight max(1, log2 m), normalised to sum 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class TaskBalancer:
    """Keeps m (epochs without improvement) and the best validation score of each task.

    `fixed=True` (`--no-balance`) keeps equal weights forever but still tracks m and the best.
    """

    def __init__(self, tasks: Sequence[str], fixed: bool = False) -> None:
        if not tasks:
            raise ValueError("TaskBalancer needs at least one task")
        self.tasks = tuple(tasks)
        self.fixed = fixed
        self.stalled = dict.fromkeys(self.tasks, 1)  # Algorithm 1, line 3: m = 1
        # None until the first validation, which therefore always counts as an improvement.
        self.best: dict[str, float | None] = dict.fromkeys(self.tasks)
        self._weights = dict.fromkeys(self.tasks, 1.0 / len(self.tasks))  # line 4: 1 / n

    @property
    def weights(self) -> dict[str, float]:
        """Current loss weight of each task (sums to 1)."""
        return dict(self._weights)

    def update(self, scores: Mapping[str, float]) -> dict[str, float]:
        """After an epoch: validation score of each task (higher is better) -> new weights.

        A score strictly above the task's best so far is an improvement (lines 9-13). A task
        without a score (no validation labels) keeps its m: there is no evidence either way.
        """
        unknown = sorted(set(scores) - set(self.tasks))
        if unknown:
            raise ValueError(f"validation score for task(s) {', '.join(unknown)} that this "
                             f"balancer does not weigh ({', '.join(self.tasks)})")
        for name in self.tasks:
            if name not in scores:
                continue
            score = float(scores[name])
            best = self.best[name]
            if best is None or score > best:
                self.best[name] = score
                self.stalled[name] = 1
            else:
                self.stalled[name] += 1
        if not self.fixed:
            raw = {name: max(1.0, math.log2(self.stalled[name])) for name in self.tasks}  # line 15
            total = sum(raw.values())
            self._weights = {name: value / total for name, value in raw.items()}  # line 17
        return self.weights

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-able state for resuming training."""
        return {"tasks": list(self.tasks), "fixed": self.fixed, "stalled": dict(self.stalled),
                "best": dict(self.best), "weights": dict(self._weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; its tasks must be this balancer's tasks."""
        if list(state["tasks"]) != list(self.tasks):
            raise ValueError(
                f"saved balancer state is for tasks {state['tasks']}, not {list(self.tasks)}"
            )
        self.fixed = bool(state["fixed"])
        self.stalled = {name: int(state["stalled"][name]) for name in self.tasks}
        self.best = {name: None if state["best"][name] is None else float(state["best"][name])
                     for name in self.tasks}
        self._weights = {name: float(state["weights"][name]) for name in self.tasks}
