"""Aff-wild2 / ABAW reader: any release's labels (layout.py finds them, annotations.py reads
them; or a CSV manifest) and face crops -> a `Split` with the release's task set.

Crops are decoded once into a memory-mapped cache (cache.py); labels are re-parsed every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emodistill.core.checkpoints import read_npz
from emodistill.core.errors import InputError
from emodistill.core.runtime import usable_cpus
from emodistill.data import audio as audio_features
from emodistill.data.annotations import read_labels
from emodistill.data.cache import (
    Cached,
    cached_array,
    default_cache_dir,
    file_signature,
)
from emodistill.data.crops import crop_name, read_crop
from emodistill.data.dataset import Split
from emodistill.data.frontend.decode import UNREADABLE_RAW_VIDEO, probe_video
from emodistill.data.layout import Layout, crop_folders, find_layout, raw_video_files
from emodistill.data.manifest import LabelSet, raw_video_name
from emodistill.tasks import TaskSet, task_set

DEFAULT_FPS = 30.0  # assumed for a video whose raw file is absent
DECODE_CHUNK = 512  # crops handed to the decoding threads at a time


@dataclass
class LoadSummary:
    """What `load_split` read, skipped and reused; str() is a one-paragraph report."""

    split: str  # "train" | "val"
    layout: str  # the release and what told it
    tasks: str  # the task set read, "AU (12), EXPR (8 classes, with Other), VA (valence, arousal)"
    source: str  # the label files read
    videos: int  # videos with at least one frame
    frames: int  # rows of the Split
    labelled: dict[str, int]  # task -> frames with a valid label
    invalid: dict[str, int]  # task -> annotated frames carrying the invalid marker (masked)
    missing_crops: int  # annotated frames skipped because their crop file does not exist
    cache_reused: bool  # True when no crop was decoded
    cache: str  # frame cache status: "cache reused" | "cache built" | "cache rebuilt: ..."
    cache_path: Path  # the frame cache .npy
    audio_cache: str | None = None  # audio cache status, None without audio
    seconds: float = 0.0  # wall time of the whole load
    notes: list[str] = field(default_factory=list)  # sentences the user should read

    def __str__(self) -> str:
        labelled = ", ".join(f"{name} {count:,}" for name, count in self.labelled.items())
        invalid = ", ".join(f"{name} {count:,}" for name, count in self.invalid.items())
        text = (
            f"{self.layout}; tasks {self.tasks}. {self.split.capitalize()} split from {self.source}: "
            f"{self.frames:,} frames of {self.videos} "
            f"videos, valid labels {labelled}; invalid labels masked {invalid}; "
            f"{self.missing_crops:,} annotated frames without a crop skipped; frames {self.cache} "
            f"({self.cache_path})"
        )
        if self.audio_cache is not None:
            text += f"; audio {self.audio_cache}"
        text += f"; {self.seconds:.1f} s."
        return " ".join([text, *(f"{note}." for note in self.notes)])


@dataclass
class _Rows:
    """The frames of a split that have a crop, sorted by (video, frame)."""

    video_names: list[str]
    video: np.ndarray  # (N,) int32 index into video_names
    frame_index: np.ndarray  # (N,) int32 0-based frame
    folders: list[Path]  # each video's crop folder
    crops: dict[str, dict[str, list[int]]]  # "cropped_aligned/<video>" -> crop name -> signature
    listed: int  # frames the labels list, with or without a crop

    def ranges(self) -> list[tuple[int, int]]:
        stops = np.cumsum(np.bincount(self.video, minlength=len(self.video_names)))
        return list(zip([0, *stops[:-1].tolist()], stops.tolist(), strict=True))

    def digest(self) -> str:
        """Identity of the row order, for fingerprints of per-row caches."""
        digest = hashlib.sha256(json.dumps(self.video_names).encode("utf-8"))
        digest.update(self.video.tobytes())
        digest.update(self.frame_index.tobytes())
        return digest.hexdigest()


def _frame_rows(label_set: LabelSet, layout: Layout) -> _Rows:
    names, video, frame_index, folders, crops = [], [], [], [], {}
    listed = 0
    where = crop_folders(layout.crop_dirs, sorted(label_set.frames))
    for name in sorted(label_set.frames):
        frames = label_set.frames[name]
        listed += frames.size
        folder = where.get(name)
        present = set(os.listdir(folder)) if folder is not None else set()
        kept = np.array([crop_name(i) in present for i in frames.tolist()], dtype=bool)
        if not kept.any():
            continue
        frames = frames[kept]
        crops[_relative(folder, layout.root)] = {
            crop_name(i): file_signature(folder / crop_name(i)) for i in frames.tolist()
        }
        video.append(np.full(frames.size, len(names), dtype=np.int32))
        frame_index.append(frames.astype(np.int32))
        names.append(name)
        folders.append(folder)
    return _Rows(
        video_names=names,
        video=np.concatenate(video) if video else np.zeros(0, np.int32),
        frame_index=np.concatenate(frame_index) if frame_index else np.zeros(0, np.int32),
        folders=folders,
        crops=crops,
        listed=listed,
    )


def _label_arrays(
    label_set: LabelSet, rows: _Rows, tasks: TaskSet
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-task label arrays and masks over the rows; rows without a valid label hold zeros."""
    n = len(rows.frame_index)
    labels, masks = {}, {}
    for task in tasks:
        values = task.empty_labels(n)  # the `Split` format: EXPR (n,) int64, others (n, columns)
        mask = np.zeros(n, dtype=bool)
        for (start, stop), name in zip(rows.ranges(), rows.video_names, strict=True):
            task_labels = label_set.videos[name].get(task.name)
            if task_labels is None:
                continue
            frames = rows.frame_index[start:stop]
            at = np.minimum(np.searchsorted(frames, task_labels.frame_index), frames.size - 1)
            # Valid labels of frames that have a crop; all other rows stay zero and masked.
            keep = (frames[at] == task_labels.frame_index) & task_labels.valid
            given = task_labels.values[keep]  # (k, columns)
            values[start + at[keep]] = task.labels_from_columns(given)
            mask[start + at[keep]] = True
        labels[task.name], masks[task.name] = values, mask
    return labels, masks


def _decode_crops(
    paths: list[Path], size: int, out: np.ndarray, progress: bool, what: str
) -> None:
    """Decode `paths` into out (N, size, size, 3), one thread per core (OpenCV frees the GIL)."""
    workers = usable_cpus()
    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(paths), desc=what, unit="frame", disable=not progress
    ) as bar:
        for start in range(0, len(paths), DECODE_CHUNK):
            chunk = paths[start : start + DECODE_CHUNK]
            for offset, image in enumerate(pool.map(partial(read_crop, size=size), chunk)):
                out[start + offset] = image
            bar.update(len(chunk))


def _raw_videos(layout: Layout, video_names: list[str]) -> dict[str, Path]:
    """Video name -> its raw file (a `_left`/`_right` subject -> the base video's)."""
    by_stem = raw_video_files(layout)
    found = {}
    for name in video_names:
        path = by_stem.get(name) or by_stem.get(raw_video_name(name))
        if path is not None:
            found[name] = path
    return found


def _frame_rates(
    video_names: list[str], raw: dict[str, Path], notes: list[str]
) -> dict[str, float]:
    """Frames per second of each video from its raw file; a note lists those assumed."""
    fps: dict[str, float] = {}
    by_path: dict[Path, float] = {}  # the two subjects of one raw video share it
    for name in video_names:
        path = raw.get(name)
        if path is None:
            fps[name] = DEFAULT_FPS
            continue
        if path not in by_path:
            rate = probe_video(path, UNREADABLE_RAW_VIDEO).fps
            if not rate:
                raise InputError(f"{path} does not state a frame rate")
            by_path[path] = rate
        fps[name] = by_path[path]
    without = [name for name in video_names if name not in raw]
    if without:
        shown = ", ".join(without[:3]) + (", ..." if len(without) > 3 else "")
        notes.append(f"{len(without)} video(s) have no raw video under videos/, batch1/, batch2/ or new_vids/ "
                     f"({shown}): {DEFAULT_FPS:g} fps assumed")
    return fps


def _audio_cache(
    root: Path, rows: _Rows, raw: dict[str, Path], fps: dict[str, float],
    cache_dir: Path, split: str, progress: bool,
) -> Cached:
    """(N, 64, 64) float32 log-mel windows of the rows, cached independently of the frame size."""
    for name in rows.video_names:
        if name not in raw:
            raise InputError(
                f"video {name} has no raw file under {root / 'videos'} (nor batch1/, batch2/, new_vids/); "
                "the audio-visual model needs one for its audio (use --modality v)"
            )
    paths = sorted({raw[name] for name in rows.video_names})
    fingerprint = {
        "rows": rows.digest(),
        "params": {  # the feature settings: changing one rebuilds the cache
            name: getattr(audio_features, name)
            for name in ("SAMPLE_RATE", "N_MELS", "WINDOW_COLUMNS", "HOP_SECONDS", "WIN_SECONDS",
                         "LOG_FLOOR_DB", "LOG_MEL_MEAN_DB", "LOG_MEL_STD_DB")
        },
        "files": {"videos": {_relative(p, root): file_signature(p) for p in paths}},
    }

    def fill(out: np.ndarray) -> None:
        decoded: tuple[Path | None, np.ndarray] = (None, np.zeros(0, np.float32))
        ranges = list(zip(rows.video_names, rows.ranges(), strict=True))
        for name, (start, stop) in tqdm(ranges, desc=f"audio of {split} videos", unit="video",
                                        disable=not progress):
            if decoded[0] != raw[name]:  # `_left`/`_right` subjects follow each other
                decoded = (raw[name], audio_features.decode_audio(raw[name]))
            frames = rows.frame_index[start:stop]
            out[start:stop] = audio_features.log_mel_per_frame(
                decoded[1], audio_features.SAMPLE_RATE, int(frames[-1]) + 1, fps[name], frames
            )

    shape = (len(rows.frame_index), audio_features.N_MELS, audio_features.WINDOW_COLUMNS)
    return cached_array(cache_dir, f"{split}-audio", fingerprint, shape, np.float32, fill)


def _truth(root: Path, rows: _Rows, tasks: TaskSet) -> dict[str, np.ndarray] | None:
    """Simulator data: the true label distributions of the rows from ROOT/truth/<video>.npz."""
    folder = root / "truth"
    if not folder.is_dir():
        return None
    n = len(rows.frame_index)
    truth = {task.name: np.zeros((n, task.n_logits), dtype=np.float32) for task in tasks}
    for name, (start, stop) in zip(rows.video_names, rows.ranges(), strict=True):
        path = folder / f"{name}.npz"
        arrays = read_npz(path, "truth/ must hold one file per video")
        frames = rows.frame_index[start:stop]
        for task in tasks:
            array = arrays.get(task.name)
            if array is None:
                raise InputError(f"{path} lacks the array {task.name}")
            if array.ndim != 2 or array.shape[1] != task.n_logits or array.shape[0] <= frames[-1]:
                raise InputError(
                    f"{path} holds {task.name} of shape {array.shape}; expected (F, "
                    f"{task.n_logits}) with F > {frames[-1]}, one row per annotation line"
                )
            truth[task.name][start:stop] = array[frames]
    return truth


def _invalid_counts(label_set: LabelSet, tasks: TaskSet) -> dict[str, int]:
    """Task -> annotated frames carrying the invalid marker, over all listed frames."""
    counts = dict.fromkeys(tasks.names, 0)
    for video in label_set.videos.values():
        for name, labels in video.items():
            counts[name] += int((~labels.valid).sum())
    return counts


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _split_rows(layout: Layout, split: str, tasks: TaskSet) -> tuple[LabelSet, _Rows]:
    """One split's labels and the rows they make: one per labelled (video, frame) with a crop."""
    label_set = read_labels(layout, split, tasks)
    if not label_set.videos:
        raise InputError(
            f"the {split} split has no labelled frames: nothing found in {label_set.source}"
        )
    rows = _frame_rows(label_set, layout)
    if len(rows.frame_index) == 0:
        shown = ", ".join(str(d) for d in layout.crop_dirs)
        raise InputError(f"the {split} split has no frames: none of the {rows.listed:,} frames "
                         f"listed in {label_set.source} has a crop in {shown}")
    return label_set, rows


def _frame_cache(rows: _Rows, split: str, size: int, cache_dir: Path, progress: bool) -> Cached:
    """The split's crops at `size` as a memory-mapped (N, S, S, 3) uint8 cache, decoded once."""
    # The rows digest fixes which crops fill which rows, so editing a label never re-decodes.
    fingerprint = {"rows": rows.digest(), "files": rows.crops}

    def decode(out: np.ndarray) -> None:
        paths = [folder / crop_name(int(i))
                 for folder, (start, stop) in zip(rows.folders, rows.ranges(), strict=True)
                 for i in rows.frame_index[start:stop]]
        _decode_crops(paths, size, out, progress, f"decoding {split} crops")

    shape = (len(rows.frame_index), size, size, 3)
    return cached_array(cache_dir, f"{split}-frames-{size}", fingerprint, shape, np.uint8, decode)


def load_split(
    root: Path,
    split: str,
    size: int = 112,
    audio: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
    labels: Path | None = None,
    release: str | None = None,
) -> tuple[Split, LoadSummary]:
    """Read one split ("train" or "val") of an Aff-wild2 root of any release into a `Split`.

    The layout and release are found from the folder (`layout.find_layout`); `release` names
    another, and `labels` (a CSV manifest or a multi-task file) stands for the annotation
    folders. The tasks are merged into one row per (video, frame) that has a crop, and the
    split carries the release's task set. Frames (and, with `audio`, log-mel windows) come from
    memory-mapped caches in `cache_dir` (default ROOT/.emodistill-cache), built on the first call
    and reused while the files they came from are unchanged.
    """
    started = time.perf_counter()
    root = Path(root)
    if split not in ("train", "val"):
        raise InputError(f"unknown split {split!r}; expected train or val")
    layout = find_layout(root, release, labels)
    tasks = task_set(layout.release.name)
    label_set, rows = _split_rows(layout, split, tasks)
    n = len(rows.frame_index)
    label_arrays, masks = _label_arrays(label_set, rows, tasks)
    cache_dir = default_cache_dir(root) if cache_dir is None else Path(cache_dir)
    frame_cache = _frame_cache(rows, split, size, cache_dir, progress)

    notes = list(label_set.notes)
    raw = _raw_videos(layout, rows.video_names)
    fps = _frame_rates(rows.video_names, raw, notes)
    audio_cache = (_audio_cache(root, rows, raw, fps, cache_dir, split, progress)
                   if audio else None)

    result = Split(
        name=split,
        frames=frame_cache.array,
        labels=label_arrays,
        masks=masks,
        video=rows.video,
        frame_index=rows.frame_index,
        video_names=rows.video_names,
        audio=None if audio_cache is None else audio_cache.array,
        fps=fps,
        truth=_truth(root, rows, tasks),
        tasks=tasks,
    )
    summary = LoadSummary(
        split=split,
        layout=layout.describe(),
        tasks=tasks.describe(),
        source=label_set.source,
        videos=len(rows.video_names),
        frames=n,
        labelled={name: int(mask.sum()) for name, mask in masks.items()},
        invalid=_invalid_counts(label_set, tasks),
        missing_crops=rows.listed - n,
        cache_reused=frame_cache.reused,
        cache=frame_cache.status,
        cache_path=frame_cache.path,
        audio_cache=None if audio_cache is None else audio_cache.status,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
    return result, summary


def load_splits(root: Path, size: int = 112, audio: bool = False, progress: bool = True,
                release: str | None = None, labels: Path | None = None) -> tuple[Split, Split, list[LoadSummary]]:
    """Both splits of one data root, read alike (`load_split`): (train, val, their summaries).
    The one way a run's data is read, by training, evaluation and backbone training."""
    train, train_summary = load_split(root, "train", size, audio, progress=progress, labels=labels, release=release)
    val, val_summary = load_split(root, "val", size, audio, progress=progress, labels=labels, release=release)
    return train, val, [train_summary, val_summary]
