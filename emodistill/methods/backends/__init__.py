"""Where members train. A backend does two jobs for `distillation.distil`, the one loop over
generations: train the given members of a generation, and make a finished generation's soft
labels for the next one. Both write only through `Run`, so every backend resumes alike.

`local.py` trains here, one member after another; `ray.py` sends each member to a Ray
cluster. A new backend is one new file with these two methods and a `where` for the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Backend(Protocol):
    where: str  # appended to the run's closing log line: "" here, " on Ray"

    def soft_labels(self, generation: int) -> None:
        """Write RUN/<generation>/soft_labels.safetensors, unless it is there already."""

    def train_members(self, generation: int, members: Sequence[int]) -> None:
        """Train these unfinished members of `generation`, writing each one's weights and
        record, and log one summary line per member."""
