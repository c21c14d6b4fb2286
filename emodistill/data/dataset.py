"""In-memory form of one data split: frames, per-task labels with masks, and where they came from.

Readers (Aff-wild2 layout, CSV manifest) produce a `Split`; training and evaluation consume it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emodistill.tasks import PAPER_TASKS, TaskSet


@dataclass
class Split:
    """Frames of one split, index-aligned arrays sorted by (video, frame_index).

    Frames of one video are contiguous, so a clip is a run of consecutive indices.
    """

    name: str  # "train" | "val"
    frames: np.ndarray  # (N, S, S, 3) uint8 RGB, usually a read-only memory map of the cache
    # "AU": (N, 12) float32 0/1, "EXPR": (N,) int64, "VA": (N, 2) float32
    labels: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]  # task name -> (N,) bool, True where that task's label is valid
    video: np.ndarray  # (N,) int32 index into video_names
    frame_index: np.ndarray  # (N,) int32 0-based annotation line: line i is crop {i+1:05d}.jpg
    video_names: list[str]
    audio: np.ndarray | None = None  # (N, 64, 64) float32 log-mel per frame, or None (visual only)
    fps: dict[str, float] = field(default_factory=dict)  # video name -> frames per second
    # Simulator data only: the true per-frame label distributions, "AU" (N, 12) P(present),
    # "EXPR" (N, 7), "VA" (N, 40) (20 valence bins then 20 arousal bins).
    truth: dict[str, np.ndarray] | None = None
    tasks: TaskSet = PAPER_TASKS  # the tasks and output names the labels follow (the release's)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def tasks_present(self) -> tuple[str, ...]:
        """Names of the tasks with at least one valid label in this split."""
        masks = self.masks
        return tuple(t.name for t in self.tasks if t.name in masks and bool(masks[t.name].any()))

    def video_ranges(self) -> list[tuple[int, int]]:
        """(start, stop) index range of each video's frames, in order."""
        if len(self) == 0:
            return []
        change = np.flatnonzero(np.diff(self.video)) + 1
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [len(self)]])
        return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]
