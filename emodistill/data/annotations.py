"""Aff-wild2's label files -> one split's `LabelSet`: the per-video annotation files of the
single-task tracks (every release) and the multi-task files (ABAW3's MTL_Challenge, ABAW4, ABAW7).

Per-video files: line 1 is the header, line i + 2 is frame i, crop {i + 1:05d}.jpg. Multi-task
files: one row per labelled frame, `video/00001.jpg,valence,arousal,expression,AU1,...,AU26`
(16 fields), an optional header first; -5 marks no valence/arousal, -1 no expression or AU.
"""

from __future__ import annotations

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.layout import SPLIT_FOLDERS, Layout, split_folder
from emodistill.data.manifest import LabelSet, TaskLabels, label_columns, parse_cells, read_manifest
from emodistill.tasks import Task, TaskSet

# Columns of a multi-task row after the image: task -> their positions.
MTL_COLUMNS = {"VA": (0, 1), "EXPR": (2,), "AU": tuple(range(3, 15))}
MTL_FIELDS = 16  # image, 2 VA, 1 EXPR, 12 AU


def _text_lines(path) -> list[str]:
    """A label file's lines without trailing blank ones; one sentence when it is not text."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file") from None
    while lines and not lines[-1].strip():  # trailing blank lines carry no frame
        lines.pop()
    return lines


def _checked_classes(task: Task, cells: np.ndarray, path, lines: np.ndarray, tasks: TaskSet) -> None:
    """A 2022+ label (class 7, Other) in data read with the 2021 task set gets a sentence that
    says how to read it, before the general range check would call it out of range."""
    if task.kind != "categorical" or tasks.info.expressions > len(task.names):
        return
    too_high = np.flatnonzero(np.char.strip(cells[:, 0].astype(str)) == str(task.n_classes))
    if too_high.size:
        row = too_high[0]
        raise InputError(
            f"{path}:{lines[row]}: {task.name} is {task.n_classes}, the class 'Other' of the 2022+ releases, "
            f"but this data is read as {tasks.info.label} with {task.n_classes} expressions; "
            "pass --release with the release it comes from (for example --release abaw6)"
        )


def read_annotation_file(task: Task, path, tasks: TaskSet | None = None) -> tuple[TaskLabels, bool]:
    """One per-video annotation file -> its labels, and whether line 1 looked like data."""
    lines = _text_lines(path)
    if not lines:
        raise InputError(f"{path} is empty; expected a header line then one line per frame")
    header, body = lines[0], lines[1:]
    n_columns = len(label_columns(task))
    counts = np.fromiter((line.count(",") + 1 for line in body), dtype=np.int64, count=len(body))
    wrong = np.flatnonzero(counts != n_columns)
    if wrong.size:
        row = wrong[0]
        what = (f"one {task.name} value" if n_columns == 1
                else f"{n_columns} comma-separated {task.name} values")
        raise InputError(f"{path}:{row + 2}: expected {what}, got {counts[row]}")
    cells = np.array(",".join(body).split(",") if body else [], dtype=object)
    cells = cells.reshape(len(body), n_columns)  # (n, columns) of str
    line_numbers = np.arange(2, len(body) + 2)
    if tasks is not None:
        _checked_classes(task, cells, path, line_numbers, tasks)
    values, valid = parse_cells(task, cells, str(path), line_numbers)
    header_is_data = all(_is_number(cell) for cell in header.split(","))
    return TaskLabels(np.arange(len(body), dtype=np.int64), values, valid), header_is_data


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_task_folders(layout: Layout, split: str, tasks: TaskSet) -> LabelSet:
    """Each task's `<split folder>/<video>.txt` files -> one split's labels."""
    names = "|".join(SPLIT_FOLDERS[split])
    videos: dict[str, dict[str, TaskLabels]] = {}
    notes: list[str] = []
    header_as_data = []
    for task in tasks:
        folder = split_folder(layout, task.name, split)
        if folder is None:
            where = layout.task_folders.get(task.name)
            notes.append(f"The {split} split has no {task.name} labels "
                         f"({where if where is not None else task.name + ' folder'}/{names} absent)")
            continue
        for path in sorted(folder.glob("*.txt")):
            labels, header_is_data = read_annotation_file(task, path, tasks)
            videos.setdefault(path.stem, {})[task.name] = labels
            if header_is_data:
                header_as_data.append(path)
    if header_as_data:
        notes.append(
            f"Line 1 of {len(header_as_data)} annotation file(s) (first: {header_as_data[0]}) "
            "looks like data; it was skipped as the header, as Aff-wild2 files always have one"
        )
    frames = {name: np.unique(np.concatenate([labels.frame_index for labels in per_task.values()]))
              for name, per_task in videos.items()}
    return LabelSet(videos=videos, frames=frames, source=f"{layout.annotations}/*/{names}", notes=notes)


def _image_cells(path, lines: list[str], start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a multi-task file from line `start` (0-based) -> video names, 0-based frames and
    the label cells (n, 15), each checked."""
    body = lines[start:]
    counts = np.fromiter((line.count(",") + 1 for line in body), dtype=np.int64, count=len(body))
    wrong = np.flatnonzero(counts != MTL_FIELDS)
    if wrong.size:
        raise InputError(f"{path}:{wrong[0] + start + 1}: expected {MTL_FIELDS} comma-separated fields "
                         f"(image, valence, arousal, expression, 12 AUs), got {counts[wrong[0]]}")
    cells = np.array(",".join(body).split(","), dtype=object).reshape(len(body), MTL_FIELDS) if body else \
        np.zeros((0, MTL_FIELDS), object)
    videos, frames = [], []
    for row, image in enumerate(cells[:, 0].tolist()):
        video, _, crop = image.strip().replace("\\", "/").rpartition("/")
        stem = crop.rsplit(".", 1)[0]
        if not video or not stem.isdigit() or int(stem) < 1:
            raise InputError(f"{path}:{row + start + 1}: image {image.strip()!r} is not <video>/<frame>.jpg "
                             "with a 1-based frame number")
        videos.append(video.rsplit("/", 1)[-1])
        frames.append(int(stem) - 1)
    return np.array(videos, dtype=object), np.array(frames, dtype=np.int64), cells[:, 1:]


def read_multi_task_file(path, tasks: TaskSet) -> LabelSet:
    """One multi-task file (a split) -> its labels: every listed frame carries all three tasks,
    each valid or not."""
    lines = _text_lines(path)
    if not lines:
        raise InputError(f"{path} is empty; expected one row per frame: image,valence,arousal,expression,AU1..AU26")
    start = 0 if _is_number(lines[0].split(",")[1] if "," in lines[0] else "") else 1  # a header line
    videos, frames, cells = _image_cells(path, lines, start)
    line_numbers = np.arange(start + 1, len(lines) + 1)
    per_task = {}
    for task in tasks:
        task_cells = cells[:, list(MTL_COLUMNS[task.name])]
        _checked_classes(task, task_cells, path, line_numbers, tasks)
        per_task[task.name] = parse_cells(task, task_cells, str(path), line_numbers)
    order = np.lexsort((frames, videos.astype(str)))  # by video, then frame
    videos, frames = videos[order], frames[order]
    per_task = {t: (values[order], valid[order]) for t, (values, valid) in per_task.items()}
    repeated = np.flatnonzero((videos[1:] == videos[:-1]) & (frames[1:] == frames[:-1]))
    if repeated.size:
        row = repeated[0] + 1
        raise InputError(f"{path}:{order[row] + start + 1}: frame {frames[row] + 1} of video {videos[row]!r} is "
                         "listed twice")
    starts = np.flatnonzero(np.concatenate([[True], videos[1:] != videos[:-1]])) if len(videos) else np.zeros(0, int)
    labels: dict[str, dict[str, TaskLabels]] = {}
    listed: dict[str, np.ndarray] = {}
    for first, stop in zip(starts, [*starts[1:], len(videos)], strict=True):
        name, rows = str(videos[first]), slice(first, stop)
        listed[name] = frames[rows]
        labels[name] = {t: TaskLabels(frames[rows], values[rows], valid[rows])
                        for t, (values, valid) in per_task.items()}
    return LabelSet(videos=labels, frames=listed, source=str(path))


def read_labels(layout: Layout, split: str, tasks: TaskSet) -> LabelSet:
    """One split's labels from wherever the layout keeps them: a manifest, the single-task folders,
    or the multi-task files (when there are no single-task folders, or they were asked for)."""
    if split not in SPLIT_FOLDERS:
        raise InputError(f"unknown split {split!r}; expected train or val")
    if layout.manifest is not None:
        return read_manifest(layout.manifest, split, tasks)
    if layout.labels_from == "task folders":
        return read_task_folders(layout, split, tasks)
    if split not in layout.mtl_files:
        raise InputError(f"the multi-task files of {layout.root} have no {split} file "
                         f"({', '.join(str(p) for p in layout.mtl_files.values())} found)")
    return read_multi_task_file(layout.mtl_files[split], tasks)
