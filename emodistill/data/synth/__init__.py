"""Simulated affect data in the Aff-wild2 layout of any release, with the true label
distributions saved.

Aff-wild2 cannot be shipped, so `generate` renders face videos of synthetic people whose AUs,
expression and valence/arousal follow a known latent process; labels are drawn from known laws
and those laws are written to truth/, so NLL and entropy can be scored against the truth. The
2021 release (the default, the paper's) has 7 expressions; the later ones 8, "Other" a state of
its own in the simulated faces.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from emodistill.core.errors import InputError
from emodistill.core.runtime import usable_cpus
from emodistill.data.synth.affect import (
    AffectConfig,
    label_truth,
    random_temperament,
    sample_labels,
    simulate_affect,
)
from emodistill.data.synth.audio import (
    SAMPLE_RATE,
    mouth_opening,
    plan_speech,
    room_noise,
    soundtrack,
    voice,
)
from emodistill.data.synth.identity import random_identity
from emodistill.data.synth.scene import camera, head_track, raw_shape, render
from emodistill.data.synth.writer import (
    MTL_HEADER,
    SPLIT_DIRS,
    Mp4Writer,
    SynthLayout,
    multi_task_rows,
    synth_layout,
    write_annotation,
    write_crop,
    write_truth,
)
from emodistill.tasks import AU, EXPR, PAPER_AU_POSITIVE_RATE, PAPER_EXPR_RATE, PAPER_RELEASE, Task, TaskSet, task_set

DEFAULT_VIDEOS = 400  # subject videos (identities); with DEFAULT_FRAMES about 12,800 frames
DEFAULT_FRAMES = 32  # frames per video (each video varies by up to 20 %)
FPS = 30
VALIDATION_SHARE = 0.25
# Plans of at least this many frames are rendered by one process per CPU (each raw video draws
# from its own seeded streams, so the files are the same bytes); smaller ones in this process,
# where starting the workers (each imports the package, about 4 CPU-seconds) would cost more.
PARALLEL_MIN_FRAMES = 2000
MIN_VIDEOS = 6  # three tasks in each of two splits
# Independent random streams of one raw video, seeded [seed, video index, purpose], so that
# changing how one part draws never changes the others.
_LOOK, _AFFECT, _LABELS, _SCENE, _VOICE = _STREAMS = range(5)

__all__ = ["DEFAULT_FRAMES", "DEFAULT_VIDEOS", "SynthSummary", "generate"]


@dataclass(frozen=True)
class _RawVideo:
    """One MP4: its subjects (one, or a _left/_right pair), their split and annotated tasks."""

    index: int  # position in the data set, part of its random seed
    base: str  # file name without extension, e.g. synth-0007
    subjects: tuple[str, ...]  # annotation names: (base,) or (base_left, base_right)
    split: str  # "train" | "val"
    tasks: tuple[tuple[Task, ...], ...]  # tasks annotated for each subject
    frames: int


@dataclass
class SynthSummary:
    """What `generate` wrote."""

    root: Path
    videos: int  # annotated subject videos (a _left/_right pair counts twice)
    raw_videos: int  # MP4 files under videos/batch1
    frames: int  # frames of all subject videos (= annotation lines per annotated task)
    crops: int  # JPEG crops written
    missing_crops: int  # frames with no crop ("face not found"); their annotation lines remain
    subsets: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> split dir -> videos
    seconds: float = 0.0  # wall time of the generation
    bytes: int = 0  # size on disk of everything written

    def __str__(self) -> str:
        subsets = ", ".join(
            f"{task} {n[SPLIT_DIRS['train']]}/{n[SPLIT_DIRS['val']]}" for task, n in self.subsets.items()
        )
        return (
            f"{self.videos} videos ({self.raw_videos} MP4), {self.frames:,} frames, "
            f"{self.crops:,} crops "
            f"({self.missing_crops} without a face); train/val videos: {subsets}; "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s -> {self.root}"
        )


def _plan(videos: int, frames: int, seed: int, task_list: TaskSet) -> list[_RawVideo]:
    """Split subjects ~75/25 into train/val, one task each (a few two), one _left/_right pair."""
    rng = np.random.default_rng(seed)
    n_val = max(3, round(videos * VALIDATION_SHARE))
    plan: list[_RawVideo] = []
    every = task_list.tasks
    for split, count in (("train", videos - n_val), ("val", n_val)):
        tasks = [(every[i % len(every)],) for i in range(count)]
        if count >= 6:  # one video of the split carries two tasks, as a few in Aff-wild2 do
            tasks[0] = (every[0], every[1])
        # In the training split, the last two subjects share one raw video, left and right.
        groups = [[i] for i in range(count)]
        if split == "train":
            groups = [[i] for i in range(count - 2)] + [[count - 2, count - 1]]
        for group in groups:
            base = f"synth-{len(plan):04d}"
            names = (base,) if len(group) == 1 else (f"{base}_left", f"{base}_right")
            length = int(rng.integers(round(0.8 * frames), round(1.2 * frames) + 1))
            annotated = tuple(tasks[i] for i in group)
            plan.append(_RawVideo(len(plan), base, names, split, annotated, max(length, 2)))
    return plan


def _gaps(spans: list[tuple[float, float]], seconds: float) -> list[tuple[float, float]]:
    """The complement of sorted, disjoint spans within [0, seconds]."""
    edges = [0.0] + [t for span in spans for t in span] + [seconds]
    return [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]


def _invalid_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """Valid-label mask: sometimes a short run the annotator marked invalid."""
    valid = np.ones(n, dtype=bool)
    if rng.random() < 0.3:
        start = rng.integers(n)
        valid[start : start + rng.integers(2, 10)] = False
    return valid


def _simulate(raw: _RawVideo, root: Path, size: int, seed: int, config: AffectConfig, layout: SynthLayout,
              tasks: TaskSet) -> dict:
    """Simulate, render and write one raw video and its subjects; returns per-subject records
    (with their multi-task rows, which the caller writes for the split)."""
    rng = [np.random.default_rng([seed, raw.index, purpose]) for purpose in _STREAMS]
    n, seconds = raw.frames, raw.frames / FPS
    n_samples = round(seconds * SAMPLE_RATE)
    people, voices, records = [], [], {}
    busy: list[tuple[float, float]] | None = None
    for name, subject_tasks in zip(raw.subjects, raw.tasks, strict=True):
        who = random_identity(rng[_LOOK])
        # A second speaker talks in the first one's pauses: the pair holds a conversation.
        plan = plan_speech(rng[_VOICE], seconds, free=None if busy is None else _gaps(busy, seconds))
        busy = plan.utterances
        track = simulate_affect(
            rng[_AFFECT],
            n,
            FPS,
            random_temperament(rng[_AFFECT], config.expressions),
            mouth_opening(plan, n, FPS),
            config,
        )
        truth = label_truth(track, config)
        labels = sample_labels(truth, rng[_LABELS], config)
        head = head_track(rng[_SCENE], n, FPS, who.skin)
        voices.append(voice(rng[_VOICE], plan, track.valence, track.arousal, FPS, n_samples))
        valid = {}
        for task in subject_tasks:
            valid[task.name] = _invalid_mask(rng[_LABELS], n)
            if layout.task_dirs:
                write_annotation(layout.annotation_path(root, task, raw.split, name), task, labels[task.name],
                                 valid[task.name])
        people.append((who, head, track.au))
        records[name] = {"labels": labels, "valid": valid, "truth": truth, "found": head.found,
                         "mtl": multi_task_rows(tasks, name, labels, valid) if layout.mtl else []}
    audio = soundtrack(voices, room_noise(rng[_VOICE], n_samples))
    height, width = raw_shape(size, len(people))
    cam = camera(rng[_SCENE], n, FPS, size, len(people))
    crop_dirs = {name: layout.crop_dir(root, name, raw.index) for name in raw.subjects}
    for folder in crop_dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    landmarks: dict[str, list[np.ndarray]] = {name: [] for name in raw.subjects}
    with Mp4Writer(layout.raw_path(root, raw.base, raw.index), width, height, FPS, audio) as mp4:
        for t, (frame, crops, points) in enumerate(render(cam, people, size, rng[_SCENE])):
            mp4.write(frame)
            for name, crop, where in zip(raw.subjects, crops, points, strict=True):
                landmarks[name].append(where)
                if records[name]["found"][t]:
                    write_crop(crop_dirs[name] / f"{t + 1:05d}.jpg", crop)
    for name in raw.subjects:
        # truth/ holds the label laws and the 2D landmarks drawn (F, 27, 2), 0..1 of the crop.
        arrays = records[name]["truth"] | {"landmarks": np.stack(landmarks[name]).astype(np.float32)}
        write_truth(root / "truth" / f"{name}.npz", arrays)
    return records


def _marginals(records: dict[str, dict], tasks: TaskSet) -> dict:
    """Label marginals of the written (valid) annotations, their truth, and the paper's targets
    (for the 2021 classes: the paper's rates are of its 7 expressions)."""
    targets = {AU.name: PAPER_AU_POSITIVE_RATE}
    if tasks[EXPR.name].n_classes == len(PAPER_EXPR_RATE):
        targets[EXPR.name] = PAPER_EXPR_RATE
    out = {}
    for task in tasks:
        annotated = [r for r in records.values() if task.name in r["valid"]]
        labels = np.concatenate([r["labels"][task.name][r["valid"][task.name]] for r in annotated])
        truth = np.concatenate([r["truth"][task.name][r["valid"][task.name]] for r in annotated])
        found = task.label_marginals(labels, truth)
        if task.name in targets:
            found["paper_rate"] = np.array(targets[task.name])
        out[task.name] = {"frames": len(labels)} | {
            key: dict(zip(task.names, np.round(value, 4).tolist(), strict=True)) for key, value in found.items()
        }
    return out


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _check_request(out: Path, videos: int, frames: int, size: int) -> None:
    """InputError for sizes too small to give every task videos in both splits, or an `out`
    that already holds something."""
    if videos < MIN_VIDEOS:
        raise InputError(
            f"--videos must be at least {MIN_VIDEOS} so every task has videos in both splits, got {videos}"
        )
    if frames < 2 or size < 16:
        raise InputError(f"--frames must be at least 2 and --size at least 16, got {frames} and {size}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not an empty folder; choose a new output folder")


def simulation_workers(plan_frames: int, workers: int | None = None) -> int:
    """Processes that render a plan of `plan_frames` frames: `workers` if given, otherwise one per
    CPU this process may use, or 1 below PARALLEL_MIN_FRAMES."""
    if workers is not None:
        if workers < 1:
            raise InputError(f"workers must be at least 1, got {workers}")
        return workers
    return usable_cpus() if plan_frames >= PARALLEL_MIN_FRAMES else 1


def _simulate_all(
    plan: list[_RawVideo], out: Path, size: int, seed: int, config: AffectConfig, layout: SynthLayout,
    tasks: TaskSet, progress: bool, workers: int | None,
) -> dict[str, dict]:
    """Simulate and write every raw video of the plan (`workers`: see `simulation_workers`);
    subject name -> its records, in the plan's order."""
    records: dict[str, dict] = {}
    simulate = partial(_simulate, root=out, size=size, seed=seed, config=config, layout=layout, tasks=tasks)
    frames = sum(r.frames * len(r.subjects) for r in plan)
    workers = simulation_workers(frames, workers)
    with ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=frames, unit="frame", desc="simulating", disable=not progress))
        run = map
        if workers > 1:  # forkserver: no worker inherits a parent's running thread pools (PyTorch's OpenMP)
            run = stack.enter_context(ProcessPoolExecutor(
                min(workers, len(plan)), mp_context=multiprocessing.get_context("forkserver"))).map
        for raw, video in zip(plan, run(simulate, plan), strict=True):
            records.update(video)
            bar.update(raw.frames * len(raw.subjects))
    return records


def _subsets(plan: list[_RawVideo], every: TaskSet) -> dict[str, dict[str, int]]:
    """Task -> split folder -> number of subject videos annotated for it."""
    return {
        task.name: {
            SPLIT_DIRS[s]: sum(task in tasks for r in plan if r.split == s for tasks in r.tasks) for s in SPLIT_DIRS
        }
        for task in every
    }


def _write_multi_task(out: Path, layout: SynthLayout, plan: list[_RawVideo], records: dict[str, dict]) -> None:
    """The release's multi-task files: a header, then the rows of each split's subjects."""
    for split, name in layout.mtl.items():
        rows = [row for raw in plan if raw.split == split
                for subject in raw.subjects for row in records[subject]["mtl"]]
        path = out / layout.annotations / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([MTL_HEADER, *rows]) + "\n")


def _report(
    summary: SynthSummary, plan: list[_RawVideo], records: dict[str, dict], seed: int,
    parameters: dict, tasks: TaskSet,
) -> dict:
    """The contents of synth.json: parameters, counts, label marginals and each video's facts."""
    return {
        "seed": seed,
        **({} if tasks.release == PAPER_RELEASE else {"release": tasks.release}),
        "parameters": parameters,
        "counts": {
            "videos": summary.videos,
            "raw_videos": summary.raw_videos,
            "frames": summary.frames,
            "crops": summary.crops,
            "missing_crops": summary.missing_crops,
            "subsets": summary.subsets,
            "invalid": {
                task.name: sum(int((~r["valid"][task.name]).sum()) for r in records.values() if task.name in r["valid"])
                for task in tasks
            },
        },
        "label_marginals": _marginals(records, tasks),
        "videos": {
            name: {
                "split": raw.split,
                "raw": raw.base,
                "frames": raw.frames,
                "tasks": [t.name for t in tasks],
                "missing_crops": np.flatnonzero(~records[name]["found"]).tolist(),
            }
            for raw in plan
            for name, tasks in zip(raw.subjects, raw.tasks, strict=True)
        },
    }


def generate(
    out: Path,
    videos: int = DEFAULT_VIDEOS,
    frames: int = DEFAULT_FRAMES,
    size: int = 112,
    seed: int = 0,
    preview: bool = False,
    progress: bool = True,
    workers: int | None = None,
    release: str = PAPER_RELEASE,
) -> SynthSummary:
    """Write a simulated data set in the Aff-wild2 layout of `release` under `out` (a new or empty
    folder).

    2021 layout (the default): annotations/{AU,EXPR,VA}_Set/{Train,Validation}_Set/<video>.txt,
    cropped_aligned/<video>/00001.jpg..., videos/batch1/<video>.mp4 (30 fps, 16 kHz audio). The
    later releases' layouts are `writer.SYNTH_LAYOUTS` (ABAW6: 6th_ABAW_Annotations/*_Challenge,
    crops over cropped_aligned/cropped_aligned and .../cropped_aligned_new_50_vids, videos/ and
    new_vids/, 8 expressions). Always truth/<video>.npz (the true per-frame label distributions)
    and synth.json (parameters, counts, marginals). `workers`: rendering processes
    (`simulation_workers`); the files do not depend on it.
    """
    started = time.perf_counter()
    out = Path(out)
    layout, tasks = synth_layout(release), task_set(release)
    _check_request(out, videos, frames, size)
    config = AffectConfig.for_expressions(tasks[EXPR.name].n_classes)
    plan = _plan(videos, frames, seed, tasks)
    records = _simulate_all(plan, out, size, seed, config, layout, tasks, progress, workers)
    _write_multi_task(out, layout, plan, records)
    missing = sum(int((~r["found"]).sum()) for r in records.values())
    total = sum(len(r["found"]) for r in records.values())
    summary = SynthSummary(
        root=out,
        videos=len(records),
        raw_videos=len(plan),
        frames=total,
        crops=total - missing,
        missing_crops=missing,
        subsets=_subsets(plan, tasks),
    )
    parameters = {"videos": videos, "frames": frames, "size": size, "fps": FPS, "sample_rate": SAMPLE_RATE,
                  "affect": asdict(config)}
    report = _report(summary, plan, records, seed, parameters, tasks)
    (out / "synth.json").write_text(json.dumps(report, indent=1) + "\n")
    if preview:
        from emodistill.data.preview import contact_sheet

        contact_sheet(out, out / "preview.png", seed=seed, release=release)
    summary.seconds = time.perf_counter() - started
    summary.bytes = _disk_bytes(out)
    return summary
