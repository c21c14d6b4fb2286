"""2D face landmarks per frame for pretraining the backbone on face alignment (paper Sec. 3.2).

Two sources: the simulator's `truth/<video>.npz` (27 drawn points), or a user's
`ROOT/landmarks.csv` with 68 points in the iBUG/300-W order, in pixels of the crop.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from emodistill.core.checkpoints import read_npz
from emodistill.core.errors import InputError
from emodistill.data.dataset import Split
from emodistill.data.layout import crop_folders, find_crop_dirs

LANDMARKS_CSV = "landmarks.csv"
IBUG_POINTS = 68  # iBUG/300-W: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67


def _csv_header(points: int) -> list[str]:
    return ["video", "frame", *(f"{axis}{i}" for i in range(1, points + 1) for axis in ("x", "y"))]


def _crop_side(root: Path, video: str, frame: int, cache: dict[str, int]) -> int:
    """Side in pixels of one video's crops, read from its first labelled crop."""
    if video not in cache:
        folder = crop_folders(find_crop_dirs(root), [video]).get(video, root / "cropped_aligned" / video)
        path = folder / f"{frame:05d}.jpg"
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputError(f"{path} is missing or not an image; landmarks.csv names its frame")
        cache[video] = int(image.shape[1])
    return cache[video]


def read_landmarks_csv(root: Path) -> dict[tuple[str, int], np.ndarray]:
    """`ROOT/landmarks.csv` -> (video, 0-based frame) -> (68, 2) in 0..1 of the crop.

    Columns: video, frame (1-based crop number, as labels.csv), then x1, y1, ..., x68, y68 in
    pixels of that crop; an empty row part means no landmarks for the frame.
    """
    path = root / LANDMARKS_CSV
    expected = _csv_header(IBUG_POINTS)
    sides: dict[str, int] = {}
    out: dict[tuple[str, int], np.ndarray] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != expected:
            raise InputError(f"{path}:1: expected the header video,frame,x1,y1,...,x68,y68 (iBUG/300-W order)")
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row[2:]):
                continue
            if len(row) != len(expected):
                raise InputError(f"{path}:{line}: expected {len(expected)} columns, got {len(row)}")
            try:
                frame = int(row[1])
                values = np.asarray([float(cell) for cell in row[2:]], dtype=np.float32)
            except ValueError:
                raise InputError(f"{path}:{line}: frame must be an integer and coordinates numbers") from None
            if frame < 1 or not np.isfinite(values).all():
                raise InputError(f"{path}:{line}: frame must be 1 or more and coordinates finite")
            side = _crop_side(root, row[0], frame, sides)
            out[(row[0], frame - 1)] = values.reshape(IBUG_POINTS, 2) / side
    return out


def split_landmarks(root: Path, split: Split) -> tuple[np.ndarray, np.ndarray, str]:
    """Landmarks of every row of `split`: (N, K, 2) float32 in 0..1, a (N,) mask, and the source.

    The simulator's truth/ wins when present; otherwise ROOT/landmarks.csv; otherwise a clear error.
    """
    root = Path(root)
    n = len(split)
    if (root / "truth").is_dir():
        chunks, points = [], None
        for start, stop in split.video_ranges():
            name = split.video_names[int(split.video[start])]
            path = root / "truth" / f"{name}.npz"
            drawn = read_npz(path).get("landmarks")
            if drawn is None:
                raise InputError(f"{path} has no landmarks; simulate the data again with this version")
            frames = split.frame_index[start:stop]
            if drawn.ndim != 3 or drawn.shape[0] <= frames[-1] or drawn.shape[2] != 2:
                raise InputError(f"{path} holds landmarks of shape {drawn.shape}; expected (F, K, 2)")
            points = drawn.shape[1]
            chunks.append(drawn[frames])
        landmarks = np.concatenate(chunks) if chunks else np.zeros((0, points or 1, 2), np.float32)
        return landmarks.astype(np.float32), np.ones(n, bool), f"{root / 'truth'} ({landmarks.shape[1]} points)"
    if not (root / LANDMARKS_CSV).exists():
        raise InputError(
            f"{root} has neither truth/ (simulator data) nor {LANDMARKS_CSV} (68 iBUG points per frame); "
            "pretraining needs landmarks"
        )
    table = read_landmarks_csv(root)
    landmarks = np.zeros((n, IBUG_POINTS, 2), np.float32)
    mask = np.zeros(n, bool)
    for row in range(n):
        key = (split.video_names[int(split.video[row])], int(split.frame_index[row]))
        if key in table:
            landmarks[row], mask[row] = table[key], True
    return landmarks, mask, f"{root / LANDMARKS_CSV} ({IBUG_POINTS} points)"
