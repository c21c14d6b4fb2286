"""Landmarks the user already has, read from a CSV file, standing in for the detector.

Format (a `predict` table is one, so its landmarks can be fed back):

    frame,face_id,eye_left_x,eye_left_y,eye_right_x,eye_right_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y
    1,1,201.5,100.9,246.9,103.5,224.5,129.0,201.1,139.7,245.3,141.9

- `frame`: 1-based, as `predict` numbers frames (a video's frame, an image's position in its
  folder). The ten landmark columns are in pixels of the (upright) frame, "left" as seen in the
  image. A frame with no row, or with its landmark cells empty, has no face.
- `face_id` (optional): the person; without it the faces of a frame are numbered from the left.
- `video` (optional, for `prepare`): the input's file stem the row belongs to; rows without it
  belong to every input.
- Other columns are ignored; names are matched ignoring case and surrounding spaces.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.frontend.align import box_from_landmarks
from emodistill.data.frontend.face import LANDMARK_COLUMNS, Face
from emodistill.data.frontend.track import TrackedFace

Points = tuple[int | None, np.ndarray]  # (face_id or None, (5, 2) landmarks)


@dataclass(frozen=True)
class GivenLandmarks:
    """The faces of each frame of one input, as the file gives them."""

    path: Path
    frames: dict[int, list[Points]]  # 1-based frame -> its faces

    def faces(self, number: int) -> list[TrackedFace]:
        """The faces of frame `number` (1-based), by face_id."""
        given = self.frames.get(number, [])
        if given and given[0][0] is None:  # no face_id column: numbered from the left
            given = [(i, points) for i, (_, points) in enumerate(sorted(given, key=lambda g: g[1][0, 0]), 1)]
        return sorted((TrackedFace(face_id, Face(box_from_landmarks(points), points)) for face_id, points in given),
                      key=lambda tracked: tracked.face_id)


def _number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise InputError(f"{path}:{line}: {column} must be a number, got {cell!r}") from None
    if not np.isfinite(value):
        raise InputError(f"{path}:{line}: {column} must be finite, got {cell!r}")
    return value


def read_landmarks_file(path: Path | str, video: str | None = None) -> GivenLandmarks:
    """Read a landmarks CSV (format above) for the input whose file stem is `video` (None: the
    rows without a `video` cell, or all rows when there is no such column). Every mistake is an
    InputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such landmarks file")
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise InputError(f"{path}: the landmarks file could not be read ({error.strerror})") from None
    frames: dict[int, list[Points]] = defaultdict(list)
    with handle:
        try:
            reader = csv.reader(handle)
            header = [cell.strip().lower() for cell in next(reader, [])]
            needed = ("frame", *LANDMARK_COLUMNS)
            missing = [name for name in needed if name not in header]
            if missing:
                raise InputError(f"{path}:1: the landmarks file lacks the column(s) {', '.join(missing)}; "
                                 f"expected frame, face_id (optional) and {', '.join(LANDMARK_COLUMNS)}")
            at = {name: header.index(name) for name in (*needed, "face_id", "video") if name in header}
            seen: dict[tuple[int, int], int] = {}
            for line, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < len(header):
                    raise InputError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
                if "video" in at and row[at["video"]].strip() not in ("", video):
                    continue
                cells = [row[at[name]].strip() for name in LANDMARK_COLUMNS]
                if not any(cells):
                    continue  # a frame without a face (a `predict` table has such rows)
                frame = _number(row[at["frame"]], path, line, "frame")
                if frame != int(frame) or frame < 1:
                    raise InputError(f"{path}:{line}: frame must be a whole number from 1, got {row[at['frame']]!r}")
                if not all(cells):
                    raise InputError(f"{path}:{line}: a face needs all ten landmark cells; some are empty")
                points = np.array([_number(c, path, line, n) for c, n in zip(cells, LANDMARK_COLUMNS, strict=True)])
                if np.ptp(points.reshape(5, 2), axis=0).max() < 1e-3:
                    raise InputError(f"{path}:{line}: the five points coincide, so no face can be aligned")
                face_id = None
                if "face_id" in at:
                    cell = row[at["face_id"]].strip()
                    if not cell.isdigit() or int(cell) < 1:
                        raise InputError(f"{path}:{line}: face_id must be a whole number from 1, got {cell!r}")
                    face_id = int(cell)
                    if (int(frame), face_id) in seen:
                        raise InputError(f"{path}:{line}: frame {int(frame)} face {face_id} is given again "
                                         f"(first on line {seen[(int(frame), face_id)]})")
                    seen[(int(frame), face_id)] = line
                frames[int(frame)].append((face_id, points.reshape(5, 2)))
        except (UnicodeDecodeError, csv.Error) as error:
            raise InputError(f"{path}: not a readable CSV text file ({error})") from None
    return GivenLandmarks(path, dict(frames))
