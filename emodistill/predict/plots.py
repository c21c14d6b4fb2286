"""Figures of `predict --plot`: the paper's Figure 1 for chosen frames (the face, its labels and a
bar of uncertainty per output) and, for a video, a timeline of every output with its uncertainty.

Drawn on matplotlib `Figure` objects (the Agg canvas), never through pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from emodistill.core.atomic import disk_full_guard
from emodistill.predict.columns import FramePrediction, output_names
from emodistill.tasks import TaskSet

MAX_TIMELINES = 8  # timelines written for an input of many videos (a cropped_aligned folder)
ALEATORIC_COLOUR = "#4c72b0"  # noise in the data: more data of the same kind will not lower it
EPISTEMIC_COLOUR = "#dd8452"  # the members disagree: the face is unlike the training data
NO_FACE_COLOUR = "#d9d9d9"
TASK_COLOURS = ("#55a868", "#c44e52", "#8172b2", "#937860")  # of the tasks, in their order


def _output_labels(tasks: TaskSet, row: dict[str, object]) -> list[str]:
    """The prediction of each output, in `output_names` order: "AU12  1", "Expression  Happiness"."""
    return [label for task in tasks for label in task.output_labels(row)]


def _frame_title(row: dict[str, object]) -> str:
    where = f"frame {row['frame']}"
    if row.get("file"):
        where = str(row["file"])
    elif row.get("timestamp") is not None:
        where += f" ({row['timestamp']:.2f} s)"
    if row.get("face_id") not in (None, 1):
        where += f", face {row['face_id']}"
    if row.get("ood_score") is None:
        return where
    verdict = {True: "out of domain", False: "in domain"}.get(row.get("ood_flag"), "no threshold")
    return f"{where}    OOD score {row['ood_score']:.3g}: {verdict}"


def figure1(prediction: FramePrediction, path: Path, tasks: TaskSet, model: str = "") -> Path:
    """The paper's Figure 1 for one frame: the face (left), each output's label beside a bar of
    its normalised entropy (right); an ensemble's bars split into aleatoric and epistemic parts."""
    if prediction.face is None or prediction.uncertainty is None:
        raise ValueError("figure1 needs a frame with a face and its uncertainty")
    row = prediction.row
    labels = _output_labels(tasks, row)
    fig = Figure(figsize=(10, 5.6), layout="constrained")
    face_ax, bar_ax = fig.subplots(1, 2, width_ratios=(1, 1.35))
    face_ax.imshow(prediction.face)
    face_ax.set_axis_off()
    face_ax.set_title(f"{row['expression']}, valence {row['valence']:+.2f}, "
                      f"arousal {row['arousal']:+.2f}")
    y = np.arange(len(output_names(tasks)))
    if "aleatoric" in prediction.uncertainty:
        aleatoric = prediction.uncertainty["aleatoric"]
        epistemic = prediction.uncertainty["epistemic"]
        bar_ax.barh(y, aleatoric, color=ALEATORIC_COLOUR, label="aleatoric (data)")
        bar_ax.barh(y, epistemic, left=aleatoric, color=EPISTEMIC_COLOUR,
                    label="epistemic (model)")
        bar_ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=2, fontsize="small",
                      frameon=False)
    else:
        total = prediction.uncertainty["entropy"]
        bar_ax.barh(y, total, color=colormaps["RdYlGn_r"](total))
    bar_ax.set_yticks(y, labels, fontsize="small", family="monospace")
    bar_ax.invert_yaxis()  # AU1 at the top, as in the paper
    bar_ax.set_xlim(0, 1)
    bar_ax.set_xlabel("uncertainty: normalised entropy (0 sure, 1 no idea)")
    bar_ax.grid(axis="x", alpha=0.3)
    fig.suptitle(_frame_title(row) + (f"\n{model}" if model else ""), fontsize="medium")
    with disk_full_guard(path, "a figure"):  # removes a cut-off PNG
        fig.savefig(path, dpi=110)
    return path


def _no_face_spans(face: np.ndarray, x: np.ndarray, step: float) -> list[tuple[float, float]]:
    """(start, stop) on the x axis of each run of frames without a face (frames `step` apart)."""
    missing = np.concatenate([[False], ~face, [False]])
    edges = np.flatnonzero(np.diff(missing.astype(np.int8)))
    return [(x[a] - step / 2, x[b - 1] + step / 2) for a, b in zip(edges[::2], edges[1::2],
                                                                   strict=True)]


def _time_axis(frames: pd.DataFrame) -> tuple[np.ndarray, bool, float]:
    """The x of each frame (seconds when the table has timestamps, else frame numbers), whether
    it is time, and the width of one frame on it."""
    numbers = frames.index.to_numpy()
    times = frames["timestamp"].to_numpy(dtype=float, na_value=np.nan)
    timed = bool(np.isfinite(times).any())
    if timed:  # fill frames missing from the table on the video's own clock
        known = np.isfinite(times)
        times = np.interp(numbers, numbers[known], times[known])
    x = times if timed else numbers.astype(float)
    step = float(np.median(np.diff(x))) if len(x) > 1 else 1.0  # one frame on the x axis
    return x, timed, step


def _uncertainty_panel(ax: Axes, frames: pd.DataFrame, x: np.ndarray, tasks: TaskSet) -> None:
    """Each task's normalised entropy and, for an ensemble, its epistemic part shaded."""
    ensemble = f"{tasks.names[0]}_epistemic" in frames
    for task, colour in zip(tasks, TASK_COLOURS, strict=False):
        ax.plot(x, frames[f"{task.name}_entropy"].to_numpy(float), color=colour, lw=1.2,
                label=f"{task.name} entropy")
        if ensemble:
            ax.fill_between(x, 0, frames[f"{task.name}_epistemic"].to_numpy(float), color=colour,
                            alpha=0.25, lw=0)
    ax.set_ylim(0, 1.05)  # room for the lines of an untrained model, at 1
    ax.set_ylabel("uncertainty")
    note = " (shaded: epistemic part)" if ensemble else ""
    ax.legend(loc="upper right", fontsize="x-small", ncols=3, title=f"normalised entropy{note}",
              title_fontsize="x-small")


def _ood_panel(ax: Axes, frames: pd.DataFrame, x: np.ndarray, ood_threshold: float | None) -> None:
    """The OOD score and, with a threshold, the frames it flags."""
    score = frames["ood_score"].to_numpy(float)
    ax.plot(x, score, color="k", lw=1)
    if ood_threshold is not None:
        ax.axhline(ood_threshold, color=EPISTEMIC_COLOUR, ls="--", lw=1, label="threshold")
        flagged = score > ood_threshold
        ax.scatter(x[flagged], score[flagged], color=EPISTEMIC_COLOUR, s=6, zorder=3,
                   label="flagged")
        ax.legend(loc="upper right", fontsize="x-small", ncols=2)
    ax.set_ylabel("OOD score")


def timeline(data: pd.DataFrame, path: Path, tasks: TaskSet, title: str = "",
             ood_threshold: float | None = None) -> Path:
    """Every output over time: AU and expression probabilities, valence and arousal with a band
    of one standard deviation, each task's uncertainty and, for an ensemble, the OOD score."""
    frames = data.set_index("frame").sort_index()
    frames = frames.reindex(np.arange(frames.index.min(), frames.index.max() + 1))  # gaps: NaN
    x, timed, step = _time_axis(frames)
    face = frames["face"].fillna(0).to_numpy(dtype=bool)
    no_face = _no_face_spans(face, x, step)
    panels = [*tasks.names, "uncertainty", *(["ood"] if "ood_score" in frames else [])]
    heights = {**{t.name: t.panel_height for t in tasks}, "uncertainty": 1.3, "ood": 1.0}
    fig = Figure(figsize=(12, sum(heights[p] for p in panels) + 0.8), layout="constrained")
    axes = dict(zip(panels, fig.subplots(len(panels), 1, sharex=True,
                                         height_ratios=[heights[p] for p in panels]), strict=True))
    cmap = colormaps["viridis"].with_extremes(bad=NO_FACE_COLOUR)

    def values(columns: list[str]) -> np.ndarray:
        return frames[columns].to_numpy(dtype=float, na_value=np.nan)  # (frames, columns)

    for task in tasks:  # each kind draws its own panel
        task.draw_timeline(axes[task.name], values, x, step, cmap, no_face)
    _uncertainty_panel(axes["uncertainty"], frames, x, tasks)
    if "ood" in axes:
        _ood_panel(axes["ood"], frames, x, ood_threshold)
    for name in ("uncertainty", *(["ood"] if "ood" in axes else [])):
        for start, stop in no_face:
            axes[name].axvspan(start, stop, color=NO_FACE_COLOUR, lw=0, zorder=0)
    axes[panels[-1]].set_xlabel("time (s)" if timed else "frame")
    axes[panels[-1]].set_xlim(x[0] - step / 2, x[-1] + step / 2)
    shown = f"{int(face.sum())} of {len(face)} frames with a face (grey: none)"
    fig.suptitle(f"{title}    {shown}" if title else shown, fontsize="medium")
    with disk_full_guard(path, "a figure"):  # removes a cut-off PNG
        fig.savefig(path, dpi=100)
    return path


def _figure_name(row: dict[str, object], name: str, sequence: bool) -> str:
    """figure1-<file> in a folder, figure1-frame000123 in a video, figure1-<name> for an image;
    -face2, -face3, ... after it for the second and later person of a frame."""
    person = "" if row.get("face_id") in (None, 1) else f"-face{row['face_id']}"
    if row.get("file"):
        return "figure1-" + Path(str(row["file"])).with_suffix("").as_posix().replace("/", "-") + person
    return (f"figure1-frame{row['frame']:06d}" if sequence else f"figure1-{name}") + person


def write_plots(data: pd.DataFrame, faces: list[FramePrediction], out_dir: Path, tasks: TaskSet,
                sequence: bool, ood_threshold: float | None = None, model: str = "",
                name: str = "") -> list[Path]:
    """Figure 1 for each prediction in `faces`, and for time series one timeline per video and
    person (face_id).

    `model` names the predictor in titles; `name` is the input's name (a video's stem)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [figure1(p, out_dir / f"{_figure_name(p.row, name, sequence)}.png", tasks, model)
               for p in faces]
    if not sequence or data.empty:
        return written
    if "file" in data:  # crop folders: one video per parent folder of the crops
        videos = data["file"].map(lambda f: Path(f).parent.as_posix())
        groups = list(data.groupby(videos, sort=False))[:MAX_TIMELINES]
    else:
        people = data["face_id"].dropna().unique()
        groups = [(name, data)] if len(people) <= 1 else [
            (f"{name} face {person}", data[data["face_id"] == person]) for person in sorted(people)[:MAX_TIMELINES]]
    single = len(groups) == 1
    for video, frames in groups:
        stem = "timeline" if single else f"timeline-{str(video).replace('/', '-')}"
        title = " ".join(part for part in (str(video) if video not in ("", ".") else name, model)
                         if part)
        written.append(timeline(frames, out_dir / f"{stem}.png", tasks, title, ood_threshold))
    return written
