"""Contact sheet of an Aff-wild2-layout folder: face crops captioned with their labels.

A quick look at data before training: a few frames of several videos, each with its present
AUs, expression and valence/arousal read straight from the annotation files.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emodistill.core.errors import InputError
from emodistill.data.annotations import read_labels
from emodistill.data.layout import crop_folders, find_layout
from emodistill.data.manifest import TaskLabels
from emodistill.tasks import Task, task_set

FRAMES_PER_VIDEO = 3  # frames of one person side by side, so changes in the face show
COLUMNS = 6


def _caption(task: Task, labels: TaskLabels, frame: int) -> str | None:
    """The label of one 0-based frame as a short caption, "<task> invalid", or None (unlabelled)."""
    at = np.flatnonzero(labels.frame_index == frame)
    if not at.size:
        return None
    if not labels.valid[at[0]]:
        return f"{task.name} invalid"
    return task.caption(labels.values[at[0]].tolist())


def contact_sheet(root: Path, out: Path, n: int = 24, seed: int = 0, release: str | None = None) -> Path:
    """Write a PNG grid of up to n crops of `root` (any Aff-wild2 layout) with their labels to `out`."""
    root, out = Path(root), Path(out)
    layout = find_layout(root, release)
    tasks = task_set(layout.release.name)
    annotations: dict[str, dict[str, TaskLabels]] = {}
    for split in ("train", "val"):
        for video, per_task in read_labels(layout, split, tasks).videos.items():
            annotations.setdefault(video, {}).update(per_task)
    folders = crop_folders(layout.crop_dirs, sorted(annotations))
    rng = np.random.default_rng(seed)
    videos = [v for v in sorted(annotations) if v in folders]
    rng.shuffle(videos)
    picks: list[tuple[str, int]] = []
    for video in videos:
        listed = np.unique(np.concatenate([labels.frame_index for labels in annotations[video].values()]))
        frames = [int(i) for i in listed if (folders[video] / f"{i + 1:05d}.jpg").exists()]
        if not frames:
            continue
        chosen = rng.choice(frames, size=min(FRAMES_PER_VIDEO, len(frames), n - len(picks)), replace=False)
        picks += [(video, int(i)) for i in sorted(chosen)]
        if len(picks) >= n:
            break
    if not picks:
        raise InputError(f"{root}: no crop of an annotated video was found in {', '.join(map(str, layout.crop_dirs))}")
    rows = -(-len(picks) // COLUMNS)
    figure = Figure(figsize=(COLUMNS * 1.9, rows * 2.45), dpi=110)
    for k, (video, index) in enumerate(picks):
        axes = figure.add_subplot(rows, COLUMNS, k + 1)
        crop = cv2.imread(str(folders[video] / f"{index + 1:05d}.jpg"))
        axes.imshow(crop[..., ::-1])
        axes.set_xticks([])
        axes.set_yticks([])
        captions = [f"{video} #{index + 1}"]
        for task in tasks:
            if task.name in annotations[video]:
                caption = _caption(task, annotations[video][task.name], index)
                if caption is not None:
                    captions.append(caption)
        axes.set_title("\n".join(captions), fontsize=6.5, loc="left")
    figure.tight_layout(pad=0.4)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(out))
    return out
