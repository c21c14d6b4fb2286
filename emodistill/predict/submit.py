"""`emodistill submit`: the files a team uploads to an ABAW challenge, predicted by a run's ensemble
through `Predictor`, and the challenge's own scores of such files against validation labels.

Three forms, as the releases asked for them:
- "single" (ABAW5-ABAW8): one file per track, the header `image_location,<the task's columns>`,
  then `video/00001.jpg,<labels>` per frame: one class index (EXPR), 12 0/1 values (AU), or
  valence,arousal;
- "per-video" (ABAW2, ABAW3): a folder per track holding `<video>.txt` per video, the annotation
  header, then one line per frame;
- "mtl" (the multi-task tracks, ABAW3-ABAW7): one file, the header
  `image,valence,arousal,expression,aus`, then `video/00001.jpg,v,a,expr,au1,...,au12`.
A frame without a face crop takes the prediction of the nearest frame of its video that has one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emodistill.core.atomic import atomic_write
from emodistill.core.errors import InputError
from emodistill.data.annotations import MTL_COLUMNS, read_multi_task_file, read_task_folders
from emodistill.data.layout import TASK_FOLDERS, Layout, crop_folders, raw_video_files
from emodistill.data.manifest import parse_cells, raw_video_name
from emodistill.data.media import probe_video
from emodistill.tasks import TaskSet
from emodistill.tasks.challenge import challenge_scores

FORMATS = ("single", "per-video", "mtl")
MTL_HEADER = "image,valence,arousal,expression,aus"
MTL_ORDER = ("VA", "EXPR", "AU")  # the tasks' columns in a multi-task row
IMAGE_COLUMNS = ("image_location", "image")


@dataclass
class Sheet:
    """One submission file (or, per video, folder): its rows and what fills them."""

    path: Path
    form: str  # one of FORMATS
    tasks: tuple[str, ...]  # one task, or MTL_ORDER
    rows: list[tuple[str, int]]  # (video, 1-based frame) in file order
    header: str  # the first line (of each file, per video)


@dataclass
class Predictions:
    """Each video's predicted frames and their ensemble probabilities."""

    frames: dict[str, np.ndarray] = field(default_factory=dict)  # video -> (n,) 1-based frames
    probs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # video -> task -> (n, n_logits)


def default_format(tasks: TaskSet) -> str:
    """The form the run's release asked for: per-video files in 2021-2022, one multi-task file for
    the multi-task-only releases, one file per track after."""
    info = tasks.info
    if not info.single_task:
        return "mtl"
    return "per-video" if info.year <= 2022 else "single"


def task_of_columns(columns: list[str], tasks: TaskSet, path: Path) -> str:
    """The task a single-track header names: valence/arousal, AU names, or the expressions."""
    names = {c.strip().lower() for c in columns}
    for task in tasks:
        if names & {n.lower() for n in task.names} or task.name.lower() in names:
            return task.name
    if names & {"expression", "expr"}:
        return "EXPR"
    raise InputError(f"{path}:1: the header names none of the tasks' columns "
                     f"({', '.join(n for t in tasks for n in t.names[:2])}, ...)")


def _image_row(cell: str, path: Path, line: int) -> tuple[str, int]:
    video, _, crop = cell.strip().replace("\\", "/").rpartition("/")
    stem = crop.rsplit(".", 1)[0]
    if not video or not stem.isdigit() or int(stem) < 1:
        raise InputError(f"{path}:{line}: {cell.strip()!r} is not <video>/<frame>.jpg with a 1-based frame number")
    return video.rsplit("/", 1)[-1], int(stem)


def example_sheet(path: Path, out_dir: Path, tasks: TaskSet, layout: Layout) -> Sheet:
    """An organisers' test-set file -> the sheet that fills every row of it, in its order: an
    example file (`image_location,...` header; "example"/"sample" in its name becomes
    "predictions"), a multi-task list (`image,valence,...`), or a list of video names, one per
    line (2021-2022: every frame of each video, per-video files)."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except FileNotFoundError:
        raise InputError(f"{path}: no such example file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file") from None
    if not lines:
        raise InputError(f"{path} is empty; expected an organisers' test-set file")
    name = Path(path).name.replace("example", "predictions").replace("sample", "predictions")
    if lines[0].split(",")[0].strip().lower() not in IMAGE_COLUMNS:
        return _video_list_sheet(Path(path), lines, out_dir, tasks, layout)
    columns = [c.strip() for c in lines[0].split(",")[1:] if c.strip()]
    rows = [_image_row(line.split(",")[0], path, number) for number, line in enumerate(lines[1:], start=2)]
    if {"valence", "expression"} <= {c.lower() for c in columns}:
        return Sheet(out_dir / name, "mtl", MTL_ORDER, rows, lines[0])
    task = task_of_columns(columns, tasks, Path(path))
    expressions = [c for c in columns if c.lower() in {n.lower() for n in tasks["EXPR"].names}]
    if task == "EXPR" and len(expressions) > 1 and len(expressions) != tasks["EXPR"].n_classes:
        raise InputError(f"{path}:1: the header lists {len(expressions)} expressions, but the run predicts "
                         f"{tasks['EXPR'].n_classes} ({tasks.info.label})")
    return Sheet(out_dir / name, "single", (task,), rows, lines[0])


# Words in the name of a 2021-2022 test list -> its track.
LIST_WORDS = {"VA": ("va_", "valence"), "EXPR": ("expr", "expression"), "AU": ("au_", "action_unit")}


def _video_list_sheet(path: Path, lines: list[str], out_dir: Path, tasks: TaskSet, layout: Layout) -> Sheet:
    """A list of video names (the 2021-2022 test lists) -> every frame of each video, as many as
    its raw video has (or its highest crop number without one), in per-video files."""
    lowered = path.name.lower()
    task = next((t for t, words in LIST_WORDS.items() if any(w in lowered for w in words)), None)
    if task is None or any("," in line or " " in line for line in lines):
        raise InputError(f"{path}:1: expected an image_location header, or a list of video names whose file name "
                         "says the track (VA, Expr, AU)")
    raw, crops = raw_video_files(layout), crop_folders(layout.crop_dirs, lines)
    rows = []
    for video in lines:
        source = raw.get(video) or raw.get(raw_video_name(video))
        if source is not None:
            count = probe_video(source).n_frames
        elif video in crops:
            count = max((int(p.stem) for p in crops[video].glob("*.jpg") if p.stem.isdigit()), default=0)
        else:
            raise InputError(f"{path}: video {video} has neither a raw video nor crops under {layout.root}")
        rows += [(video, frame) for frame in range(1, count + 1)]
    folder = layout.task_folders[task].name if task in layout.task_folders else TASK_FOLDERS[task][1]
    return Sheet(out_dir / folder, "per-video", (task,), rows, ",".join(tasks[task].names))


def validation_sheets(layout: Layout, tasks: TaskSet, form: str, out_dir: Path) -> list[Sheet]:
    """Every frame of the validation videos of each track (the frames of the multi-task file for
    "mtl"), as the test files list them."""
    if form == "mtl":
        if "val" not in layout.mtl_files:
            raise InputError(f"{layout.root} has no multi-task validation file; use --format single or per-video")
        labels = read_multi_task_file(layout.mtl_files["val"], tasks)
        rows = [(video, int(i) + 1) for video, frames in labels.frames.items() for i in frames]
        return [Sheet(out_dir / "MTL_predictions.txt", "mtl", MTL_ORDER, rows, MTL_HEADER)]
    if not layout.task_folders:
        raise InputError(f"{layout.root} has only multi-task files; use --format mtl")
    labels = read_task_folders(layout, "val", tasks)
    sheets = []
    for task in tasks:
        videos = {v: per_task[task.name] for v, per_task in labels.videos.items() if task.name in per_task}
        if not videos:
            continue
        rows = [(video, i + 1) for video, task_labels in videos.items() for i in range(len(task_labels.frame_index))]
        names = ",".join(task.names)
        if form == "single":
            sheets.append(Sheet(out_dir / f"{task.name}_predictions.txt", "single", (task.name,), rows,
                                f"image_location,{names}"))
        else:
            folder = layout.task_folders[task.name].name
            sheets.append(Sheet(out_dir / folder, "per-video", (task.name,), rows, names))
    return sheets


def predict_videos(predictor: object, layout: Layout, videos: Iterable[str], progress: bool = True) -> Predictions:
    """Predict every crop of each video (its GRU state carried frame to frame, as `predict`)."""
    wanted = sorted(set(videos))
    folders = crop_folders(layout.crop_dirs, wanted)
    found = Predictions()
    for video in tqdm(wanted, desc="predicting", unit="video", disable=not progress):
        if video not in folders:
            continue
        frames, probs = [], []
        for prediction in predictor.predict_frames(folders[video]):  # type: ignore[attr-defined]
            if prediction.probs is not None:
                frames.append(int(prediction.row["frame"]))
                probs.append(prediction.probs)
        if frames:
            found.frames[video] = np.asarray(frames)
            found.probs[video] = {t: np.stack([p[t] for p in probs]) for t in probs[0]}
    return found


def decisions(sheet: Sheet, predictions: Predictions, tasks: TaskSet) -> tuple[dict[str, np.ndarray], int, int]:
    """Task -> the decision of every row (`Task.decide`'s format); and how many rows took the
    nearest frame of their video with a face, and how many (of videos without any face) the mean
    prediction over all predicted frames."""
    if not predictions.frames:
        raise InputError("no frame of any listed video has a face crop: nothing to submit")
    source: list[tuple[str, int] | None] = []  # each row's (video, index of the predicted frame used)
    nearest = fallback = 0
    for video, frame in sheet.rows:
        frames = predictions.frames.get(video)
        if frames is None:
            source.append(None)
            fallback += 1
            continue
        at = int(np.abs(frames - frame).argmin())
        nearest += int(frames[at] != frame)
        source.append((video, at))
    out = {}
    for name in sheet.tasks:
        task = tasks[name]
        decided = {v: task.decide(p[name]) for v, p in predictions.probs.items()}
        overall = task.decide(np.concatenate([p[name] for p in predictions.probs.values()]).mean(0, keepdims=True))[0]
        out[name] = np.stack([overall if s is None else decided[s[0]][s[1]] for s in source])
    return out, nearest, fallback


def write_sheet(sheet: Sheet, decided: dict[str, np.ndarray], tasks: TaskSet) -> Path:
    """Write one sheet (a file, or a folder of per-video files)."""
    def cells(name: str, i: int) -> str:
        return tasks[name].annotation_line(np.atleast_1d(decided[name][i]))

    if sheet.form == "per-video":
        (name,) = sheet.tasks
        by_video: dict[str, list[str]] = {}
        for i, (video, _) in enumerate(sheet.rows):
            by_video.setdefault(video, []).append(cells(name, i))
        sheet.path.mkdir(parents=True, exist_ok=True)
        for video, lines in by_video.items():
            text = "\n".join([sheet.header, *lines]) + "\n"
            atomic_write(sheet.path / f"{video}.txt", lambda tmp, text=text: tmp.write_text(text))
        return sheet.path
    lines = [sheet.header] + [f"{video}/{frame:05d}.jpg," + ",".join(cells(n, i) for n in sheet.tasks)
                              for i, (video, frame) in enumerate(sheet.rows)]
    sheet.path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(sheet.path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))
    return sheet.path


def read_sheet(path: Path, tasks: TaskSet) -> dict[str, dict[tuple[str, int], np.ndarray]]:
    """A written submission (a single-track or multi-task file, or a per-video folder) -> task ->
    (video, 1-based frame) -> its decision."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        name = next((t for t, folders in TASK_FOLDERS.items() if path.name in folders), None)
        if name is None and files:
            name = task_of_columns(files[0].read_text().splitlines()[0].split(","), tasks, files[0])
        out: dict[tuple[str, int], np.ndarray] = {}
        for file in files:
            body = file.read_text().splitlines()[1:]
            values = _parse(tasks, name, [line.split(",") for line in body], file, 2)
            out.update({(file.stem, i + 1): v for i, v in enumerate(values)})
        return {name: out} if name else {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header = [c.strip() for c in lines[0].split(",")]
    rows = [line.split(",") for line in lines[1:]]
    keys = [_image_row(r[0], path, i + 2) for i, r in enumerate(rows)]
    if header[:2] == ["image", "valence"]:  # multi-task
        spans = {name: (1 + min(cols), 1 + max(cols) + 1) for name, cols in MTL_COLUMNS.items()}
        return {name: dict(zip(keys, _parse(tasks, name, [r[a:b] for r in rows], path, 2), strict=True))
                for name, (a, b) in spans.items()}
    name = task_of_columns(header[1:], tasks, path)
    return {name: dict(zip(keys, _parse(tasks, name, [r[1:] for r in rows], path, 2), strict=True))}


def _parse(tasks: TaskSet, name: str, cells: list[list[str]], path: Path, first_line: int) -> np.ndarray:
    """Cells of one task's decisions -> the `Split` label format, checked as labels are."""
    task = tasks[name]
    width = len(task.label_columns())
    for i, row in enumerate(cells):
        if len(row) != width:
            raise InputError(f"{path}:{i + first_line}: expected {width} {name} value(s), got {len(row)}")
    array = np.array(cells, dtype=object).reshape(len(cells), width)
    values, _ = parse_cells(task, array, str(path), np.arange(first_line, first_line + len(cells)))
    return task.labels_from_columns(values)


def score_sheets(paths: Iterable[Path], layout: Layout, tasks: TaskSet) -> dict[str, dict]:
    """The challenge's scores of written submissions on the validation labels: each valid labelled
    frame that a submission lists counts (the labels are read as the layout's release)."""
    labels = read_task_folders(layout, "val", tasks) if layout.task_folders else \
        read_multi_task_file(layout.mtl_files["val"], tasks)
    truth: dict[str, list] = {}
    predicted: dict[str, list] = {}
    for path in paths:
        for name, by_key in read_sheet(path, tasks).items():
            for video, per_task in labels.videos.items():
                task_labels = per_task.get(name)
                if task_labels is None:
                    continue
                for frame, values, ok in zip(task_labels.frame_index, task_labels.values, task_labels.valid,
                                             strict=True):
                    key = (video, int(frame) + 1)
                    if ok and key in by_key:
                        truth.setdefault(name, []).append(tasks[name].labels_from_columns(values[None])[0])
                        predicted.setdefault(name, []).append(by_key[key])
    stacked_truth = {n: np.stack(v) for n, v in truth.items()}
    return challenge_scores(tasks, tasks.info.scoring, stacked_truth, {n: np.stack(v) for n, v in predicted.items()},
                            {})


def submit(run: Path | str, data: Path | None, out: Path, examples: list[Path], split: str | None,
           form: str | None = None, generation: str | None = None, members: int | None = None,
           device: str = "auto", progress: bool = True) -> tuple[list[Path], dict | None]:
    """Write the submission files of a run's final ensemble (or `generation`): one per organisers'
    example file, or, with `split` "val", every validation frame of each track, then read back
    and scored (returned as the second item). Everything is checked before a model is loaded."""
    from emodistill.data.layout import find_layout
    from emodistill.predict.predictor import Predictor
    from emodistill.run import open_run

    if not examples and split is None:
        raise InputError("say what to predict: --example FILE (an organisers' test-set file) or --split val")
    if split not in (None, "val"):
        raise InputError(f"--split {split}: only the validation split has labels to check a submission against")
    if form is not None and form not in FORMATS:
        raise InputError(f"unknown --format {form!r}; expected {', '.join(FORMATS)}")
    handle, _ = open_run(run, generation)
    config = handle.config()
    tasks = config.task_set
    layout = find_layout(handle.data_root(data), config.release)
    if split is not None and layout.release.expressions != tasks.info.expressions:
        raise InputError(f"{layout.root} is {layout.release.label} data, but the run predicts {tasks.describe()} "
                         f"({tasks.info.label}): its validation labels cannot score this run")
    out = Path(out)
    form = form or default_format(tasks)
    sheets = [example_sheet(path, out, tasks, layout) for path in examples]
    if split is not None:
        sheets += validation_sheets(layout, tasks, form, out)
    predictor = Predictor(run, generation, members, device=device, log=lambda _: None)
    predictions = predict_videos(predictor, layout, (video for sheet in sheets for video, _ in sheet.rows), progress)
    written = []
    for sheet in sheets:
        decided, nearest, fallback = decisions(sheet, predictions, tasks)
        written.append(write_sheet(sheet, decided, tasks))
        print(f"{written[-1]}: {len(sheet.rows):,} rows of {' + '.join(sheet.tasks)}; {nearest:,} without a face "
              f"crop took the nearest frame of their video with one, {fallback:,} (videos without any crop) the "
              "mean prediction")
    scores = score_sheets(written, layout, tasks) if split is not None else None
    return written, scores
