"""`emodistill predict INPUT --model RUN`: the command, its summary line and its figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from emodistill.core.errors import InputError
from emodistill.models.speed import Levers
from emodistill.predict.columns import FramePrediction
from emodistill.predict.predictor import Predictor, count
from emodistill.predict.sources import discover
from emodistill.predict.tables import WRITERS, read_table


class FigurePicker:
    """Keeps a few faces spread evenly over the input for Figure 1."""

    def __init__(self, n_frames: int, count: int = 4):
        if n_frames <= count:
            self.targets = list(range(n_frames))
        else:  # inner points: a video's first and last frames are often a fade or a cut
            inner = np.linspace(0, n_frames - 1, count + 2)[1:-1]
            self.targets = sorted({round(p) for p in inner})
        self.position = 0
        self.kept: list[FramePrediction] = []

    def offer(self, prediction: FramePrediction) -> None:
        """Keep the first face at or after each target position."""
        due = len(self.kept) < len(self.targets) and self.position >= self.targets[len(self.kept)]
        if due and prediction.face is not None:
            self.kept.append(prediction)
        self.position += 1


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
    backend: str = "torch",
    device: str = "auto",
    progress: bool = True,
    detector: str | None = None,
    plain: bool = False,
    fp32: bool = False,
) -> Path:
    """`emodistill predict`: write the per-frame table (and figures); returns the table's path.

    `plain`: no speed levers at all; `fp32`: every lever but bf16 (outputs within 1e-4 of the
    plain path; bf16, on by default where the CPU has it, stays within `BF16_TOLERANCE`)."""
    input, model = Path(input), Path(model)
    stem = input.resolve().stem or "input"
    out = Path(out) if out is not None else Path.cwd() / f"{stem}.emotions.csv"
    if out.suffix.lower() not in WRITERS:
        raise InputError(f"{out}: the output must end in .csv or .parquet")
    source = discover(input)
    predictor = Predictor(model, members=_parse_members(members), backend=backend, device=device,
                          detector=detector, levers=Levers() if plain else Levers.auto(bf16=False) if fp32 else None)
    picker = FigurePicker(source.n_frames)
    frames = faces = 0

    def each(prediction: FramePrediction) -> None:
        nonlocal frames, faces
        frames += 1
        faces += prediction.row["face"]
        if plot is not None:
            picker.offer(prediction)

    started = time.perf_counter()
    predictions = predictor.predict_frames(source, faces=plot is not None, progress=progress)
    WRITERS[out.suffix.lower()](out, predictions, predictor.columns(source), each)
    seconds = time.perf_counter() - started
    # Crop folders are faces already: no detector ran, so no detection rate is given.
    found = "" if source.kind == "crops" else (
        f" ({faces / max(frames, 1):.1%} found by {predictor.detector.name})")
    print(f"{input}: {count(frames, 'frame')}, {faces} with a face{found}, "
          f"{frames / max(seconds, 1e-9):.1f} frames/s with {predictor.name}"
          f"{', bf16' if predictor.bf16 else ''} -> {out}")
    if plot is not None:
        from emodistill.predict.plots import write_plots

        written = write_plots(read_table(out), picker.kept, plot, predictor.tasks, source.is_sequence,
                              predictor.ood_threshold, predictor.name, input.stem)
        print(f"figures: {count(len(written), 'file')} in {plot}")
    return out
