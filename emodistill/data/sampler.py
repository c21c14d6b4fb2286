"""Clips of consecutive frames: training batches with an equal number of clips per task (paper
Sec. 3.4), batch arrays gathered from a `Split`, and every frame once for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.dataset import Split


def _windows(split: Split, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every run of `length` rows inside one video: (starts (M,), lasts (M,)) int64.

    A video shorter than `length` gives one window, its whole self; `last` is the video's final
    row, so a clip repeats it to fill `length`.
    """
    starts, lasts = [], []
    for start, stop in split.video_ranges():
        if stop - start >= length:
            first = np.arange(start, stop - length + 1, dtype=np.int64)
            starts.append(first)
            lasts.append(first + length - 1)
        else:
            starts.append(np.array([start], dtype=np.int64))
            lasts.append(np.array([stop - 1], dtype=np.int64))
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lasts)


def _clips(starts: np.ndarray, lasts: np.ndarray, length: int) -> np.ndarray:
    """Windows -> row indices (M, length), the last row repeated past a short video's end."""
    return np.minimum(starts[:, None] + np.arange(length), lasts[:, None])


class ClipSampler:
    """Draws training batches holding exactly `clips_per_task` clips for each task present.

    A clip for a task is a run of `length` consecutive rows of one video with at least one valid
    label of that task; clips are drawn uniformly from those runs, without repeats inside a batch
    when there are enough. Successive calls to `batches` continue one random stream, so epochs
    differ while the whole sequence is fixed by `seed`.
    """

    def __init__(
        self,
        split: Split,
        length: int = 16,
        clips_per_task: int = 5,
        tasks: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if length < 1 or clips_per_task < 1:
            raise ValueError(f"length and clips_per_task must be >= 1, got {length} and "
                             f"{clips_per_task}")
        names = tasks if tasks is not None else split.tasks.names
        asked = tuple(split.tasks[name].name for name in names)
        self.length = length
        self.clips_per_task = clips_per_task
        starts, lasts = _windows(split, length)
        self.candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (starts, lasts)
        for name in asked:
            mask = split.masks.get(name)
            if mask is None:
                continue
            valid_before = np.concatenate([[0], np.cumsum(mask)])  # valid labels in rows [0, i)
            labelled = valid_before[lasts + 1] - valid_before[starts] > 0
            if labelled.any():
                self.candidates[name] = (starts[labelled], lasts[labelled])
        self.tasks: tuple[str, ...] = tuple(self.candidates)  # tasks the batches hold, in order
        self.skipped: tuple[str, ...] = tuple(n for n in asked if n not in self.candidates)
        if not self.tasks:
            raise InputError(
                f"the {split.name} split has no valid label for {', '.join(asked)}, so no clip "
                "can be sampled"
            )
        # Row b of every batch holds a clip drawn for this task.
        self.batch_tasks: tuple[str, ...] = tuple(np.repeat(self.tasks, clips_per_task).tolist())
        self._rng = np.random.default_rng(seed)

    def batches(self, n_batches: int) -> Iterator[np.ndarray]:
        """`n_batches` index arrays (len(tasks) * clips_per_task, length) int64 into the split."""
        for _ in range(n_batches):
            clips = []
            for name in self.tasks:
                starts, lasts = self.candidates[name]
                pick = self._rng.choice(
                    len(starts), size=self.clips_per_task, replace=len(starts) < self.clips_per_task
                )
                clips.append(_clips(starts[pick], lasts[pick], self.length))  # (clips, L)
            yield np.concatenate(clips)  # (B, L)


def gather(split: Split, index: np.ndarray, frames: bool = True) -> dict:
    """Index (B, L) -> batch arrays: "frames" (B, L, S, S, 3) uint8 (unless `frames` is False),
    "labels" and "masks" (task -> (B, L, ...)), "index" (B, L), and "audio" (B, L, 64, 64) /
    "truth" when present.
    """
    index = np.asarray(index, dtype=np.int64)
    batch = {
        "index": index,
        "labels": {name: values[index] for name, values in split.labels.items()},
        "masks": {name: mask[index] for name, mask in split.masks.items()},
    }
    if frames:
        batch["frames"] = np.asarray(split.frames[index])  # (B, L, S, S, 3)
    if split.audio is not None:
        batch["audio"] = np.asarray(split.audio[index])  # (B, L, 64, 64)
    if split.truth is not None:
        batch["truth"] = {name: values[index] for name, values in split.truth.items()}
    return batch


def sequential_clips(split: Split, length: int) -> list[np.ndarray]:
    """Every row exactly once, in order, as clips of up to `length` rows of one video each.

    A video's last clip is shorter when its frame count is not a multiple of `length`.
    """
    return [
        np.arange(first, min(first + length, stop), dtype=np.int64)
        for start, stop in split.video_ranges()
        for first in range(start, stop, length)
    ]
