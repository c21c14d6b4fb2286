"""`emodistill predict INPUT --model RUN`: the command, its summary line and its figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.frontend import DETECT_EVERY
from emodistill.data.frontend.inputs import Source, discover
from emodistill.models.speed import Levers
from emodistill.predict.columns import FramePrediction
from emodistill.predict.predictor import Predictor, count
from emodistill.predict.tables import WRITERS, read_table


class FigurePicker:
    """Keeps a few faces spread evenly over the input for Figure 1."""

    def __init__(self, n_frames: int, count: int = 4):
        if n_frames <= count:
            self.targets = list(range(n_frames))
        else:  # inner points: a video's first and last frames are often a fade or a cut
            inner = np.linspace(0, n_frames - 1, count + 2)[1:-1]
            self.targets = sorted({round(p) for p in inner})
        self.position = -1  # of the current frame; a frame with several faces has several rows
        self.frame: object = None
        self._file: object = None
        self.kept: list[FramePrediction] = []

    def offer(self, prediction: FramePrediction) -> None:
        """Keep the first face at or after each target position."""
        if prediction.row["frame"] != self.frame or prediction.row.get("file") != self._file:
            self.position += 1
        self.frame, self._file = prediction.row["frame"], prediction.row.get("file")
        due = len(self.kept) < len(self.targets) and self.position >= self.targets[len(self.kept)]
        if due and prediction.face is not None:
            self.kept.append(prediction)


def summary(source: Source, frames: int, with_face: int, people: int, found_by: str) -> str:
    """"120 frames, 118 with a face (98.3% found by mtcnn), 1 person followed, turned 90 degrees
    as the video's display matrix says"; crop folders are faces already, so they get no rate."""
    text = f"{count(frames, 'frame')}, {with_face} with a face"
    if source.kind == "crops":
        return text
    text += f" ({with_face / max(frames, 1):.1%} found by {found_by})"
    if source.is_sequence:
        text += f", {people} {'person' if people == 1 else 'people'} followed"
    if source.video is not None and source.video.rotation:
        text += f", turned {source.video.rotation} degrees as the video's display matrix says"
    return text


def _parse_members(members: str) -> int | None:
    if members == "all":
        return None
    if members.isdigit():
        return int(members)
    raise InputError(f"--members must be all or a number, got {members!r}")


def predict_command(
    input: Path,
    model: Path,
    members: str = "all",
    out: Path | None = None,
    plot: Path | None = None,
    runtime: str = "torch",
    device: str = "auto",
    progress: bool = True,
    detector: str | None = None,
    plain: bool = False,
    fp32: bool = False,
    landmarks: Path | None = None,
    max_faces: int | None = None,
    detect_every: int = DETECT_EVERY,
) -> Path:
    """`emodistill predict`: write the table, a row per face per frame (and figures); returns
    the table's path.

    `plain`: no speed levers at all; `fp32`: every lever but bf16 (outputs within 1e-4 of the
    plain path; bf16, on by default where the CPU has it, stays within `BF16_TOLERANCE`);
    `landmarks`, `max_faces`, `detect_every` as in `Predictor`."""
    input, model = Path(input), Path(model)
    stem = input.resolve().stem or "input"
    out = Path(out) if out is not None else Path.cwd() / f"{stem}.emotions.csv"
    if out.suffix.lower() not in WRITERS:
        raise InputError(f"{out}: the output must end in .csv or .parquet")
    if plot is not None and Path(plot).exists() and not Path(plot).is_dir():
        raise InputError(f"{plot}: --plot names a folder for the figures, and this is an existing file")
    source = discover(input)
    predictor = Predictor(model, members=_parse_members(members), runtime=runtime, device=device,
                          detector=detector, levers=Levers() if plain else Levers.auto(bf16=False) if fp32 else None,
                          landmarks=landmarks, max_faces=max_faces, detect_every=detect_every)
    picker = FigurePicker(source.n_frames)
    frames: set[tuple[object, object]] = set()
    with_face: set[tuple[object, object]] = set()
    people: set[object] = set()

    def each(prediction: FramePrediction) -> None:
        row = prediction.row
        frames.add((row.get("file"), row["frame"]))
        if row["face"]:
            with_face.add((row.get("file"), row["frame"]))
            people.add(row["face_id"])
        if plot is not None:
            picker.offer(prediction)

    started = time.perf_counter()
    predictions = predictor.predict_frames(source, faces=plot is not None, progress=progress)
    WRITERS[out.suffix.lower()](out, predictions, predictor.columns(source), each)
    seconds = time.perf_counter() - started
    print(f"{input}: {summary(source, len(frames), len(with_face), len(people), predictor.front.source)}, "
          f"{len(frames) / max(seconds, 1e-9):.1f} frames/s with {predictor.name}"
          f"{', bf16' if predictor.bf16 else ''} -> {out}")
    if plot is not None:
        from emodistill.predict.plots import write_plots

        written = write_plots(read_table(out), picker.kept, plot, predictor.tasks, source.is_sequence,
                              predictor.ood_threshold, predictor.name, input.stem)
        print(f"figures: {count(len(written), 'file')} in {plot}")
    return out
