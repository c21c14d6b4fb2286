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
from emodistill.tasks import TASKS, Task

FRAMES_PER_VIDEO = 3  # frames of one person side by side, so changes in the face show
COLUMNS = 6


def _caption(task: Task, line: str, path: Path, number: int) -> str:
    """One annotation line -> a short caption; invalid rows say so."""
    try:
        values = [float(v) for v in line.split(",")]
    except ValueError:
        raise InputError(f"{path} line {number}: expected comma-separated numbers, got {line!r}") from None
    expected = len(task.label_columns())  # EXPR: one class index
    if len(values) != expected:
        raise InputError(f"{path} line {number}: expected {expected} {task.name} values, got {len(values)}")
    if any(v == task.invalid for v in values):
        return f"{task.name} invalid"
    return task.caption(values)


def _annotations(root: Path) -> dict[str, dict[str, tuple[Path, list[str]]]]:
    """video -> task name -> (file, lines after the header), over every split folder."""
    found: dict[str, dict[str, tuple[Path, list[str]]]] = {}
    for task in TASKS:
        for path in sorted((root / "annotations" / task.annotation_dir).glob("*/*.txt")):
            found.setdefault(path.stem, {})[task.name] = (path, path.read_text().splitlines()[1:])
    return found


def contact_sheet(root: Path, out: Path, n: int = 24, seed: int = 0) -> Path:
    """Write a PNG grid of up to n crops of `root` (Aff-wild2 layout) with their labels to `out`."""
    root, out = Path(root), Path(out)
    annotations = _annotations(root)
    if not annotations:
        raise InputError(f"{root} has no annotations/<Task>_Set/<Split>/<video>.txt files (Aff-wild2 layout)")
    rng = np.random.default_rng(seed)
    videos = [v for v in sorted(annotations) if (root / "cropped_aligned" / v).is_dir()]
    rng.shuffle(videos)
    picks: list[tuple[str, int]] = []
    for video in videos:
        lines = max(len(lines) for _, lines in annotations[video].values())
        frames = [i for i in range(lines) if (root / "cropped_aligned" / video / f"{i + 1:05d}.jpg").exists()]
        chosen = rng.choice(frames, size=min(FRAMES_PER_VIDEO, len(frames), n - len(picks)), replace=False)
        picks += [(video, int(i)) for i in sorted(chosen)]
        if len(picks) >= n:
            break
    if not picks:
        raise InputError(f"{root}/cropped_aligned holds no crops of the annotated videos")
    rows = -(-len(picks) // COLUMNS)
    figure = Figure(figsize=(COLUMNS * 1.9, rows * 2.45), dpi=110)
    for k, (video, index) in enumerate(picks):
        axes = figure.add_subplot(rows, COLUMNS, k + 1)
        crop = cv2.imread(str(root / "cropped_aligned" / video / f"{index + 1:05d}.jpg"))
        axes.imshow(crop[..., ::-1])
        axes.set_xticks([])
        axes.set_yticks([])
        captions = [f"{video} #{index + 1}"]
        for task in TASKS:
            if task.name in annotations[video]:
                path, lines = annotations[video][task.name]
                if index < len(lines):
                    captions.append(_caption(task, lines[index], path, index + 2))
        axes.set_title("\n".join(captions), fontsize=6.5, loc="left")
    figure.tight_layout(pad=0.4)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(out))
    return out
