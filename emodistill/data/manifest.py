"""Per-video label records both input forms are parsed into, the value rules they share, and the
CSV manifest form.

CSV manifest format (`ROOT/labels.csv`, or any path given as `labels=` / `--labels`):

    video,frame,split,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26,expr,valence,arousal
    clip01,1,train,0,1,0,0,0,0,1,0,0,0,1,0,4,0.35,-0.10
    clip01,2,train,,,,,,,,,,,,,4,,
    clip02,1,val,0,0,0,0,0,0,0,0,0,0,0,0,,0.1,0.2

- One row per frame. `video` names a folder of face crops `ROOT/cropped_aligned/<video>/`;
  `frame` is the 1-based crop number: frame 7 is `00007.jpg`.
- For an image data set, an `image` column (a file name or path, as given to `prepare`) may
  stand instead of `video,frame`: each image is a video of one frame named by the file's stem,
  `ROOT/cropped_aligned/<image stem>/00001.jpg`, as `prepare` writes it. An image listed on
  several lines is reported once, naming the line, and only its first line is used.
- `split` is `train` or `val`. The column is optional: without it, videos are split 80/20 into
  train/val by a stable hash of their name (SHA-256; the `_left`/`_right` subjects of one raw
  video stay together), and the load summary says so.
- Frame rate and audio come from the raw video `ROOT/videos/**/<video>.mp4|avi` as for
  Aff-wild2 (30 fps is assumed without one).
- Labels as in Aff-wild2: AU columns 0/1 (order as above), `expr` an integer 0..6 (Neutral,
  Anger, Disgust, Fear, Happiness, Sadness, Surprise; with `--release` of 2022 or later also 7,
  Other), `valence`/`arousal` numbers in [-1, 1].
- An empty cell means "no label" for that task, and a task's cells on a row are all filled or
  all empty. Aff-wild2's invalid markers (-1 for AU and expr, -5 for valence/arousal) are
  accepted and mean "no label" as well. A row without any label still puts its frame in the
  split (for prediction and soft labels).
- Column names are matched ignoring case and surrounding spaces; other columns are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np

from emodistill.core.errors import InputError
from emodistill.tasks import Task, TaskSet

SPLIT_NAMES = ("train", "val")
HASH_TRAIN_PERCENT = 80  # share of videos a manifest without a split column puts in train
SUBJECT_SUFFIXES = ("_left", "_right")  # two subjects of one raw video
# `prepare` names the people of a video followed together <video>_face1, <video>_face2, ...
PREPARED_SUBJECT = re.compile(r"_face[0-9]+$")


@dataclass
class TaskLabels:
    """One task's labels for one video: the annotated frames, their values, which are valid."""

    frame_index: np.ndarray  # (n,) int64 0-based frame: crop {frame_index + 1:05d}.jpg
    values: np.ndarray  # (n, columns) float64 as written (AU 12, EXPR 1, VA 2 columns)
    valid: np.ndarray  # (n,) bool, False where the annotator wrote the invalid marker


@dataclass
class LabelSet:
    """Everything one split's label files say, whichever form they came in."""

    videos: dict[str, dict[str, TaskLabels]]  # video -> task name -> labels
    frames: dict[str, np.ndarray]  # video -> every listed frame, sorted, with a label or not
    source: str  # where the labels came from, for messages
    notes: list[str] = field(default_factory=list)  # things the user should know


def label_columns(task: Task) -> tuple[str, ...]:
    """Column names of one task: AU names, `expr`, or `valence`, `arousal` (the kind's rule)."""
    return task.label_columns()


def raw_video_name(video: str) -> str:
    """`<base>_left` / `<base>_right` (Aff-wild2) and `<base>_face1`, `<base>_face2`, ...
    (`prepare`) -> `<base>`, the raw video the subjects come from."""
    for suffix in SUBJECT_SUFFIXES:
        if video.endswith(suffix):
            return video[: -len(suffix)]
    return PREPARED_SUBJECT.sub("", video)


def hash_split(video: str) -> str:
    """`train` or `val` for a video, stable across runs and machines (80/20 by name hash)."""
    digest = hashlib.sha256(raw_video_name(video).encode("utf-8")).digest()
    return "train" if int.from_bytes(digest[:8], "big") % 100 < HASH_TRAIN_PERCENT else "val"


def _expected(task: Task) -> str:
    """What a cell of the task may hold, for error messages."""
    return f"{task.label_rule()} ({task.invalid:g} = no label)"


def parse_cells(
    task: Task, cells: np.ndarray, path: str, lines: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Text cells (n, columns) of one task (str or object array) -> values (n, columns) float64
    and valid (n,) bool.

    `lines` (n,) holds the 1-based line of each row in `path`, for the error message.
    """
    columns = label_columns(task)
    try:
        # Via Python floats: several times faster than NumPy's own text-to-float cast.
        values = np.array(cells.ravel().tolist(), dtype=np.float64).reshape(cells.shape)
    except ValueError:
        for row, col in np.ndindex(cells.shape):
            try:
                float(cells[row, col])
            except ValueError:
                raise InputError(
                    f"{path}:{lines[row]}: {columns[col]} {cells[row, col].strip()!r} is not a "
                    f"number; expected {_expected(task)}"
                ) from None
        raise
    marker = values == task.invalid
    bad = np.argwhere(~(task.allowed_labels(values) | marker))
    if bad.size:
        row, col = bad[0]
        raise InputError(
            f"{path}:{lines[row]}: {columns[col]} is {cells[row, col].strip()}; "
            f"expected {_expected(task)}"
        )
    return values, ~marker.any(axis=1)


def _read_rows(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """CSV -> header, cells (n, columns) str stripped, 1-based line of each row (n,)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if len(row) > 1 or (row and row[0].strip()):  # blank lines carry nothing
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file") from None
    except csv.Error as err:
        raise InputError(f"{path} is not a readable CSV file ({err})") from None
    if header is None:
        raise InputError(f"{path} is empty; expected a header line then one row per frame")
    header = [name.strip().lower() for name in header]
    for row, line in zip(rows, lines, strict=True):
        if len(row) != len(header):
            raise InputError(
                f"{path}:{line}: expected {len(header)} comma-separated columns as in the "
                f"header, got {len(row)}"
            )
    cells = np.char.strip(np.array(rows, dtype=str).reshape(len(rows), len(header)))
    return header, cells, np.array(lines, dtype=np.int64)


def _small_int(text: str) -> int:
    """`text` as an integer below 2**62, else 0 (which the caller reports as no frame number)."""
    try:
        value = int(text)
    except ValueError:  # also digits int() does not take, such as "²", which str.isdigit() passes
        return 0
    return value if abs(value) < 2**62 else 0


def _frame_numbers(cells: np.ndarray, path: Path, lines: np.ndarray) -> np.ndarray:
    """The `frame` column -> 1-based crop numbers (n,) int64, each a positive integer."""
    try:
        frames = cells.astype(np.int64)
    except (ValueError, OverflowError):  # a cell that is no integer, or one beyond int64
        frames = np.array([_small_int(c) for c in cells], dtype=np.int64)
    bad = np.flatnonzero(frames < 1)
    if bad.size:
        raise InputError(
            f"{path}:{lines[bad[0]]}: frame {str(cells[bad[0]])!r} is not a positive integer "
            "(the 1-based crop number)"
        )
    return frames


MAX_REPEAT_NOTES = 10  # repeated images named one by one; the rest are counted in one note


def _from_image_column(
    path: Path, header: list[str], cells: np.ndarray, lines: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Rows naming an `image` -> the same rows with `video` (the image's stem) and `frame` (1)
    columns added, each image's later lines dropped; and a note per repeated image."""
    images = cells[:, header.index("image")]
    empty = np.flatnonzero(images == "")
    if empty.size:
        raise InputError(f"{path}:{lines[empty[0]]}: the image name is empty")
    stems = np.array([PurePath(name).stem for name in images.tolist()], dtype=str)
    first_row: dict[str, int] = {}
    keep = np.ones(len(cells), dtype=bool)
    notes: list[str] = []
    repeated = 0
    for row, stem in enumerate(stems.tolist()):
        if stem not in first_row:
            first_row[stem] = row
            continue
        keep[row] = False
        if first_row[stem] < 0:  # this image was reported already
            continue
        repeated += 1
        if repeated <= MAX_REPEAT_NOTES:
            notes.append(f"{path}:{lines[row]}: image {str(images[row])!r} is listed again (first on "
                         f"line {lines[first_row[stem]]}); only its first line is used")
        first_row[stem] = -1
    if repeated > MAX_REPEAT_NOTES:
        notes.append(f"{path}: {repeated - MAX_REPEAT_NOTES} more images are listed more than "
                     "once; only their first lines are used")
    frame_ones = np.full(len(cells), "1")
    added = np.column_stack([cells, stems, frame_ones])[keep]  # (n kept, columns + 2)
    return [*header, "video", "frame"], added, lines[keep], notes


def _split_column(
    path: Path, col: dict[str, int], cells: np.ndarray, videos: np.ndarray, lines: np.ndarray,
    notes: list[str],
) -> np.ndarray:
    """The split of each row: the `split` column, checked, or else a stable hash of the video
    (which `notes` then mentions)."""
    if "split" in col:
        splits = np.char.lower(cells[:, col["split"]])
        bad = np.flatnonzero(~np.isin(splits, SPLIT_NAMES))
        if bad.size:
            raise InputError(
                f"{path}:{lines[bad[0]]}: split {str(cells[bad[0], col['split']])!r} is not "
                "train or val"
            )
        return splits
    split_of = {name: hash_split(name) for name in np.unique(videos)}
    notes.append(
        f"{path} has no split column: videos were split {HASH_TRAIN_PERCENT}/"
        f"{100 - HASH_TRAIN_PERCENT} into train/val by a stable hash of their name"
    )
    return np.array([split_of[name] for name in videos])


def _check_order(
    path: Path, order: np.ndarray, videos: np.ndarray, frames: np.ndarray, splits: np.ndarray,
    lines: np.ndarray,
) -> None:
    """InputError for a frame listed twice, or a video with rows in both splits; `order` sorts
    the rows by video, then frame."""
    by_video, by_frame, by_split = videos[order], frames[order], splits[order]
    same_video = by_video[1:] == by_video[:-1]
    repeated = same_video & (by_frame[1:] == by_frame[:-1])
    if repeated.any():
        row = order[1:][repeated].min()  # the later line of the first repeat
        raise InputError(
            f"{path}:{lines[row]}: frame {frames[row]} of video {str(videos[row])!r} is "
            "listed twice"
        )
    two_splits = same_video & (by_split[1:] != by_split[:-1])
    if two_splits.any():
        row = order[1:][two_splits].min()
        raise InputError(
            f"{path}:{lines[row]}: video {str(videos[row])!r} has rows in both train and val; "
            "a video belongs to one split"
        )


def _task_rows(
    path: Path, col: dict[str, int], cells: np.ndarray, lines: np.ndarray, order: np.ndarray, tasks: TaskSet
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Task name -> (present, values, valid) per row, in `order`.

    Parsed in file order, so an error names the first bad line; then reordered like the rows.
    """
    task_rows = {}
    for task in tasks:
        task_cells = cells[:, [col[c.lower()] for c in label_columns(task)]]  # (n, columns)
        filled = (task_cells != "").sum(axis=1)
        mixed = np.flatnonzero((filled > 0) & (filled < task_cells.shape[1]))
        if mixed.size:
            row = mixed[0]
            raise InputError(
                f"{path}:{lines[row]}: the {task.name} columns must be all filled or all empty, "
                f"got {filled[row]} of {task_cells.shape[1]} filled"
            )
        present = filled > 0
        values = np.zeros(task_cells.shape, dtype=np.float64)
        valid = np.zeros(len(cells), dtype=bool)
        values[present], valid[present] = parse_cells(
            task, task_cells[present], str(path), lines[present]
        )
        task_rows[task.name] = (present[order], values[order], valid[order])
    return task_rows


def _videos_of_split(
    split: str, by_video: np.ndarray, by_frame: np.ndarray, by_split: np.ndarray,
    task_rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[dict[str, dict[str, TaskLabels]], dict[str, np.ndarray]]:
    """Rows sorted by video -> (video -> task -> labels, video -> listed frames) of `split`."""
    starts = np.flatnonzero(np.concatenate([[True], by_video[1:] != by_video[:-1]]))
    stops = np.append(starts[1:], len(by_video))
    if not len(by_video):  # a manifest of a header alone: no video starts at row 0
        starts = stops = starts[:0]
    chosen: dict[str, dict[str, TaskLabels]] = {}
    listed: dict[str, np.ndarray] = {}
    for start, stop in zip(starts, stops, strict=True):
        if by_split[start] != split:
            continue
        listed[str(by_video[start])] = by_frame[start:stop] - 1
        labels = chosen.setdefault(str(by_video[start]), {})
        for name, (present, values, valid) in task_rows.items():
            keep = np.flatnonzero(present[start:stop]) + start
            if keep.size:
                labels[name] = TaskLabels(frame_index=by_frame[keep] - 1, values=values[keep],
                                          valid=valid[keep])
    return chosen, listed


def read_manifest(path: Path, split: str, tasks: TaskSet) -> LabelSet:
    """The rows of `split` in a CSV manifest (format in this module's docstring)."""
    if not path.is_file():
        raise InputError(f"{path} does not exist; expected a CSV manifest of per-frame labels")
    header, cells, lines = _read_rows(path)
    notes = []
    if "image" in header and "video" not in header:
        header, cells, lines, notes = _from_image_column(path, header, cells, lines)
    needed = ["video", "frame", *(c.lower() for task in tasks for c in label_columns(task))]
    missing = [name for name in needed if name not in header]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}; expected video, frame (or image), "
            "[split,] then the label columns"
        )
    col = {name: header.index(name) for name in header}  # a repeated name: the first one
    videos = cells[:, col["video"]]
    empty = np.flatnonzero(videos == "")
    if empty.size:
        raise InputError(f"{path}:{lines[empty[0]]}: the video name is empty")
    frames = _frame_numbers(cells[:, col["frame"]], path, lines)
    splits = _split_column(path, col, cells, videos, lines, notes)
    order = np.lexsort((frames, videos))  # by video, then frame; stable, so file order in ties
    _check_order(path, order, videos, frames, splits, lines)
    task_rows = _task_rows(path, col, cells, lines, order, tasks)
    chosen, listed = _videos_of_split(split, videos[order], frames[order], splits[order], task_rows)
    return LabelSet(videos=chosen, frames=listed, source=str(path), notes=notes)
