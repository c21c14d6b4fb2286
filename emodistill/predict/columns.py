"""The columns of a prediction table and how a frame's member probabilities fill them:
per-task values, the normalised entropy of each task and its two parts (Eq. 14), the OOD score
(the feature density's, `evaluation.density`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emodistill.data.frontend import LANDMARK_COLUMNS, FaceCrop
from emodistill.evaluation.uncertainty import decompose_task
from emodistill.predict.sources import Frame
from emodistill.tasks import TaskSet

# Output columns that are not per-task probabilities (the task columns follow them): where the
# frame is, whether it has a face, whose it is, its box and its five landmarks in frame pixels.
FRAME_COLUMNS = ("frame", "timestamp", "face", "face_id", "x", "y", "w", "h", *LANDMARK_COLUMNS)
INTEGER_COLUMNS = ("frame", "face", "face_id", "x", "y", "w", "h")


def output_names(tasks: TaskSet) -> tuple[str, ...]:
    """One name per output distribution (its uncertainty value), in the order of the Figure 1 bars."""
    return tuple(name for t in tasks for name in t.output_names())


@dataclass(frozen=True)
class FramePrediction:
    """One output row, and for figures the face the model saw and each output's uncertainty."""

    row: dict[str, object]  # column -> value; None where there is no prediction
    face: np.ndarray | None  # (DISPLAY_SIZE, DISPLAY_SIZE, 3) uint8, when faces were asked for
    # "entropy" (total), and for an ensemble "aleatoric" and "epistemic": (len(output_names),)
    # each; None without a face
    uncertainty: dict[str, np.ndarray] | None
    # The members' own mean probabilities, task -> (n_logits,), before calibration: what the
    # decision columns show and `submit` turns into the challenge's decisions; None without a face
    probs: dict[str, np.ndarray] | None = None


PARTS = ("entropy", "aleatoric", "epistemic")  # total, and its two parts (Eq. 14)


def output_columns(tasks: TaskSet, ensemble: bool, with_ood: bool, with_file: bool) -> list[str]:
    """Every column of a prediction table, in order (EXPR_Other with an 8-expression task set)."""
    parts = PARTS if ensemble else PARTS[:1]
    columns = [*(["file"] if with_file else []), *FRAME_COLUMNS]
    columns += [c for t in tasks for c in t.output_columns()]
    columns += [f"{t.name}_{part}" for t in tasks for part in parts]
    if with_ood:
        columns += ["ood_score", "ood_flag"]
    return columns


def summarise(
    tasks: TaskSet,
    member_probs: dict[str, np.ndarray],
    decided: dict[str, np.ndarray] | None = None,
    ood: tuple[np.ndarray, float] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Members' probabilities, task -> (T, N, n_logits) -> (column -> (N,), part -> (N, outputs)).

    Uncertainty is entropy divided by its maximum, log(outputs); a task's column averages its groups
    (12 AUs, 2 VA dimensions); the second dict keeps every group for Figure 1. `decided`: the
    members' own probabilities, which the decision columns follow when `member_probs` are
    calibrated. `ood`: the feature-density score (N,) and its threshold, for the OOD columns.
    """
    columns: dict[str, np.ndarray] = {}
    groups: dict[str, list[np.ndarray]] = {part: [] for part in PARTS}
    for task in tasks:
        probs = member_probs[task.name]
        columns.update(task.output_values(probs.mean(0), None if decided is None else decided[task.name].mean(0)))
        for part, values in zip(PARTS, decompose_task(task, probs), strict=True):  # (N, G) each
            columns[f"{task.name}_{part}"] = values.mean(-1)
            groups[part].append(values)
    if ood is not None:
        columns["ood_score"], columns["ood_flag"] = ood[0], ood[0] > ood[1]
    return columns, {part: np.concatenate(values, axis=-1) for part, values in groups.items()}


def python_value(value: object) -> object:
    """NumPy scalars -> plain Python values for rows."""
    return value.item() if isinstance(value, np.generic) else value


def frame_row(frame: Frame, face: FaceCrop | None, columns: list[str]) -> dict[str, object]:
    """The row of one face of a frame (None: the frame's one row without a face), with the
    frame's and the face's own fields filled in and every prediction empty."""
    row: dict[str, object] = dict.fromkeys(columns)
    row.update(frame=frame.number, timestamp=frame.timestamp, face=int(face is not None))
    if "file" in row:
        row["file"] = frame.file
    if face is not None:
        box = face.face.box
        row.update(face_id=face.face_id, x=round(box.x), y=round(box.y), w=round(box.w), h=round(box.h))
        if face.face.landmarks is not None:
            row.update(zip(LANDMARK_COLUMNS, np.round(face.face.landmarks.ravel(), 1).tolist(), strict=True))
    return row
