"""`predict`: a video, an image or a folder of faces -> one row of emotions per frame, each with
how sure the model is (paper Fig. 1 as a product), streamed to CSV or written as Parquet.

Per frame: AU probabilities, expression, valence/arousal, the normalised entropy of each task
(split into aleatoric and epistemic parts for an ensemble, Eq. 14) and an out-of-domain flag.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emodistill.core.checkpoints import atomic_write, read_json
from emodistill.core.errors import InputError
from emodistill.core.runtime import resolve_device, tune_allocator
from emodistill.data.affwild import read_crop
from emodistill.data.audio import (
    HOP_SECONDS,
    SAMPLE_RATE,
    WINDOW_COLUMNS,
    decode_audio,
    log_mel_per_frame,
    silence,
)
from emodistill.data.faces import EyeLocator, make_detector
from emodistill.data.media import (
    Box,
    FaceTracker,
    VideoInfo,
    is_image_file,
    iter_frames,
    probe_video,
    read_image,
)
from emodistill.data.prepare import CROPS
from emodistill.evaluation.uncertainty import decompose_task, ood_score
from emodistill.export import ONNX_DIR, OnnxMember, export_run, parse_generation
from emodistill.methods.distillation import Run, generation_name
from emodistill.models import PRESETS
from emodistill.models.inference import activate
from emodistill.tasks import TASKS, VA_CENTRES, Task, va_expectation

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROP_SUFFIXES = (".jpg", ".jpeg")  # Aff-wild2 and `prepare` write JPEG crops
DISPLAY_SIZE = 224  # side of the face kept for figures, in pixels
BACKENDS = ("torch", "onnx")
REPORT_FILE = Path("report") / "report.json"
# Output columns that are not per-task probabilities; the task columns follow `frame..h`.
FRAME_COLUMNS = ("frame", "timestamp", "face", "x", "y", "w", "h")
INTEGER_COLUMNS = ("frame", "face", "x", "y", "w", "h")
# One uncertainty value per output distribution, in the order of the Figure 1 bars.
OUTPUT_NAMES: tuple[str, ...] = tuple(
    name for t in TASKS for name in (("expression",) if t.kind == "categorical" else t.names)
)


# ---------------------------------------------------------------------------- input discovery


@dataclass(frozen=True)
class Source:
    """What a predict input is: one video, one image, a folder of images, face crop folders, or
    frames in memory."""

    path: Path
    # "video" | "image" | "images" (independent pictures) | "crops" (cropped_aligned) | "frames"
    # (NumPy RGB frames of one video, in time order)
    kind: str
    files: tuple[Path, ...] = ()  # "image": the image; "images": sorted pictures; "crops": folders
    n_frames: int = 0  # frames to expect (a video's count comes from its header; 0: unknown)
    video: VideoInfo | None = None  # "video" only
    frames: Iterable[np.ndarray] | None = None  # "frames" only: (H, W, 3) uint8 RGB each
    fps: float | None = None  # "frames" only: frame rate for the timestamps; None: no timestamps

    @property
    def is_sequence(self) -> bool:
        """True when frames come in time order and the GRU state carries between them."""
        return self.kind in ("video", "crops", "frames")

    @property
    def has_file_column(self) -> bool:
        return self.kind in ("images", "crops")


def discover(path: Path | str) -> Source:
    """Classify a predict input; anything that cannot be read is one InputError sentence."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _discover_folder(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes), not a video or an image")
    if path.suffix.lower() in IMAGE_SUFFIXES or is_image_file(path):  # a PNG called .dat too
        read_image(path)  # fail now, before any model is loaded
        return Source(path, "image", (path,), 1)
    info = probe_video(path)
    return Source(path, "video", (path,), info.n_frames, info)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_crop_sequence(images: list[Path]) -> bool:
    """Aff-wild2 crops: numbered JPEG files (00001.jpg, ...) of square, already aligned faces."""
    if not all(p.stem.isdigit() and p.suffix.lower() in CROP_SUFFIXES for p in images):
        return False
    height, width = read_image(images[0]).shape[:2]
    return height == width


def _discover_folder(folder: Path) -> Source:
    if (folder / CROPS).is_dir():  # a `prepare` output or Aff-wild2 root: its face crops
        folder = folder / CROPS
    images = _images_in(folder)
    if images:
        if _is_crop_sequence(images):
            return Source(folder, "crops", (folder,), len(images))
        return Source(folder, "images", tuple(images), len(images))
    # A `cropped_aligned` root: one sub-folder of numbered crops per video.
    sequences = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        crops = _images_in(sub)
        if crops and _is_crop_sequence(crops):
            sequences.append((sub, len(crops)))
    if not sequences:
        raise InputError(
            f"{folder}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}) "
            "and no folders of numbered face crops"
        )
    return Source(folder, "crops", tuple(s for s, _ in sequences), sum(n for _, n in sequences))


# ---------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """One input frame on its way to the model."""

    number: int  # 1-based: the video frame (as the crop names), crop number, or image position
    timestamp: float | None  # seconds from the start of the video; None without a video
    file: str | None  # path relative to the input folder; None for a single video or image
    box: Box | None  # the face in pixels of the frame; None: no face found
    crop: np.ndarray | None  # (S, S, 3) uint8 face at the model's input size
    display: np.ndarray | None  # (DISPLAY_SIZE, DISPLAY_SIZE, 3) uint8 face for figures


@dataclass(frozen=True)
class Sequence:
    """Frames that the GRU heads see in order (`continuous`) or each on its own (images)."""

    frames: Iterator[Frame]
    continuous: bool  # True: one time series, the GRU state carries from frame to frame
    audio: AudioTrack | None = None  # the video's sound, for audio-visual models


def _face_frame(tracker: FaceTracker, number: int, timestamp: float | None, file: str | None,
                rgb: np.ndarray, faces: bool) -> Frame:
    """Track the face of one picture (detection and smoothing as in `prepare`)."""
    box, crop = tracker.track(rgb)
    display = tracker.cut(rgb, box, DISPLAY_SIZE) if faces and box is not None else None
    return Frame(number, timestamp, file, box, crop, display)


def _video_frames(source: Source, tracker: FaceTracker, faces: bool) -> Iterator[Frame]:
    for frame in iter_frames(source.path):
        yield _face_frame(tracker, frame.index + 1, frame.timestamp, None, frame.rgb, faces)


def _image_frames(source: Source, tracker: FaceTracker, faces: bool) -> Iterator[Frame]:
    single = source.kind == "image"
    for number, path in enumerate(source.files, start=1):
        tracker.reset()  # each picture on its own, as `prepare` does
        file = None if single else path.name
        yield _face_frame(tracker, number, None, file, read_image(path), faces)


def _checked_frame(rgb: object, index: int) -> np.ndarray:
    """One in-memory frame as a C-contiguous (H, W, 3) uint8 array, or an InputError naming it."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = (f"shape {rgb.shape} {rgb.dtype}" if isinstance(rgb, np.ndarray)
               else type(rgb).__name__)
        raise InputError(f"frame {index} of the input: expected an (H, W, 3) uint8 RGB array, "
                         f"got {got}")
    return np.ascontiguousarray(rgb)


def _array_frames(source: Source, tracker: FaceTracker, faces: bool) -> Iterator[Frame]:
    for index, rgb in enumerate(() if source.frames is None else source.frames):
        timestamp = None if source.fps is None else index / source.fps
        yield _face_frame(tracker, index + 1, timestamp, None, _checked_frame(rgb, index), faces)


def frames_source(frames: np.ndarray | Iterable[np.ndarray], fps: float | None = None) -> Source:
    """Frames of one video in memory, a (T, H, W, 3) uint8 RGB array or an iterable of (H, W, 3)
    ones, as a predict input."""
    if fps is not None and not fps > 0:
        raise InputError(f"fps must be a positive number of frames per second, got {fps}")
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise InputError(f"the input array has shape {frames.shape} and type {frames.dtype}; "
                             "expected frames (T, H, W, 3) uint8 RGB")
        return Source(Path("<array>"), "frames", n_frames=len(frames), frames=frames, fps=fps)
    if isinstance(frames, str | bytes) or not isinstance(frames, Iterable):
        raise InputError(f"cannot predict from a {type(frames).__name__}; expected a path, a "
                         "(T, H, W, 3) uint8 array or an iterable of (H, W, 3) frames")
    count = len(frames) if hasattr(frames, "__len__") else 0
    return Source(Path("<frames>"), "frames", n_frames=count, frames=frames, fps=fps)


def _crop_frames(folder: Path, root: Path, size: int, faces: bool) -> Iterator[Frame]:
    for path in _images_in(folder):
        crop = read_crop(path, size)  # as the training reader decodes and resizes it
        display = read_crop(path, DISPLAY_SIZE) if faces else None
        file = path.relative_to(root).as_posix()
        yield Frame(int(path.stem), None, file, Box(0, 0, size, size), crop, display)


# ---------------------------------------------------------------------------- audio


class AudioTrack:
    """A video's sound as one 64 x 64 log-mel window per frame, made a chunk at a time."""

    def __init__(self, samples: np.ndarray, sample_rate: int, fps: float):
        self.samples = samples  # (T,) float32 mono
        self.sample_rate = sample_rate
        self.fps = fps

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """Log-mel windows (n, 64, 64) of the 0-based frames `indices` (ascending)."""
        # The segment reaches one window beyond the first and last frame, so every window has its
        # past and future; its columns sit on a hop grid from the segment start, which moves them
        # by under one hop (10 ms) against a spectrogram of the whole track.
        reach = int(np.ceil(WINDOW_COLUMNS * HOP_SECONDS * self.fps)) + 1  # frames per window
        first = max(0, int(indices[0]) - reach)
        count = int(indices[-1]) - first + 1
        start = round(first / self.fps * self.sample_rate)
        stop = round((first + count + reach) / self.fps * self.sample_rate)
        segment = self.samples[start:stop]
        windows = log_mel_per_frame(segment, self.sample_rate, count, self.fps)  # (count, 64, 64)
        return windows[indices - first]


# ---------------------------------------------------------------------------- members


def _numpy(logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Task -> float32 NumPy logits on the CPU."""
    return {k: v.float().cpu().numpy() for k, v in logits.items()}


class TorchMember:
    """A PyTorch member behind the NumPy interface of `export.OnnxMember`."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model.to(memory_format=torch.channels_last).eval()  # REFERENCE Sec. 7
        self.device = device

    @torch.inference_mode()
    def forward_stateful(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: torch.Tensor | None
    ) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """frames (B, L, 3, S, S) float32 in [0, 1] -> (task -> logits (B, L, n), GRU state)."""
        x = torch.from_numpy(frames).to(self.device)
        sound = None if audio is None else torch.from_numpy(audio).to(self.device)
        logits, hidden = self.model.forward_stateful(x, sound, hidden)
        return _numpy(logits), hidden

    @torch.inference_mode()
    def forward_with_alone(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: torch.Tensor | None
    ) -> tuple[dict[str, np.ndarray], torch.Tensor, dict[str, np.ndarray]]:
        """As `forward_stateful`, plus every frame's logits as its own length-1 sequence from a
        zero state, (B * L, 1, n): the CNN runs once, only the heads run twice."""
        x = torch.from_numpy(frames).to(self.device)
        sound = None if audio is None else torch.from_numpy(audio).to(self.device)
        features = self.model.encode(x, sound)  # (B, L, D)
        logits, hidden = self.model.decode(features, hidden)
        alone, _ = self.model.decode(features.flatten(0, 1)[:, None])
        return _numpy(logits), hidden, _numpy(alone)


# ---------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class FramePrediction:
    """One output row, and for figures the face the model saw and each output's uncertainty."""

    row: dict[str, object]  # column -> value; None where there is no prediction
    face: np.ndarray | None  # (DISPLAY_SIZE, DISPLAY_SIZE, 3) uint8, when faces were asked for
    # "entropy" (total), and for an ensemble "aleatoric" and "epistemic": (len(OUTPUT_NAMES),)
    # each; None without a face
    uncertainty: dict[str, np.ndarray] | None


def task_columns(task: Task) -> list[str]:
    """The prediction columns of one task."""
    if task.kind == "binary":
        return [*task.names, *(f"{name}_present" for name in task.names)]
    if task.kind == "categorical":
        return [*(f"{task.name}_{name}" for name in task.names), "expression"]
    return [*task.names, *(f"{name}_sd" for name in task.names)]


def task_values(task: Task, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Ensemble-mean probabilities (N, n_logits) -> the task's columns, (N,) each."""
    if task.kind == "binary":
        present = (probs >= 0.5).astype(np.int64)  # the ABAW threshold
        return {**dict(zip(task.names, probs.T, strict=True)),
                **{f"{n}_present": p for n, p in zip(task.names, present.T, strict=True)}}
    if task.kind == "categorical":
        label = np.asarray(task.names, dtype=object)[probs.argmax(-1)]
        return {**{f"{task.name}_{n}": p for n, p in zip(task.names, probs.T, strict=True)},
                "expression": label}
    mean = va_expectation(probs)  # (N, 2)
    second_moment = task.distributions(probs) @ VA_CENTRES**2  # (N, 2)
    sd = np.sqrt(np.maximum(second_moment - mean**2, 0.0))  # spread of the predicted bins
    return {**dict(zip(task.names, mean.T, strict=True)),
            **{f"{n}_sd": s for n, s in zip(task.names, sd.T, strict=True)}}


PARTS = ("entropy", "aleatoric", "epistemic")  # total, and its two parts (Eq. 14)


def output_columns(ensemble: bool, with_ood: bool, with_file: bool) -> list[str]:
    """Every column of a prediction table, in order."""
    parts = PARTS if ensemble else PARTS[:1]
    columns = [*(["file"] if with_file else []), *FRAME_COLUMNS]
    columns += [c for t in TASKS for c in task_columns(t)]
    columns += [f"{t.name}_{part}" for t in TASKS for part in parts]
    if with_ood:
        columns += ["ood_score", "ood_flag"]
    return columns


def summarise(
    member_probs: dict[str, np.ndarray],
    ood_tasks: tuple[str, ...] | None,
    threshold: float | None,
    alone_probs: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Members' probabilities, task -> (T, N, n_logits) -> (column -> (N,), part -> (N, outputs)).

    Uncertainty is normalised entropy (REFERENCE Sec. 2); a task's column averages its groups
    (12 AUs, 2 VA dimensions); the second dict keeps every group for Figure 1. The OOD score
    comes from `alone_probs` (each frame seen alone, from a zero GRU state, as `evaluate` scores
    it when it sets the threshold) when given, else from `member_probs`.
    """
    columns: dict[str, np.ndarray] = {}
    groups: dict[str, list[np.ndarray]] = {part: [] for part in PARTS}
    for task in TASKS:
        probs = member_probs[task.name]
        columns.update(task_values(task, probs.mean(0)))
        for part, values in zip(PARTS, decompose_task(task, probs), strict=True):  # (N, G) each
            columns[f"{task.name}_{part}"] = values.mean(-1)
            groups[part].append(values)
    if ood_tasks is not None:
        scored = member_probs if alone_probs is None else alone_probs
        score = ood_score({name: scored[name] for name in ood_tasks})  # (N,)
        columns["ood_score"] = score
        columns["ood_flag"] = np.full(len(score), None) if threshold is None else score > threshold
    return columns, {part: np.concatenate(values, axis=-1) for part, values in groups.items()}


def _frame_row(frame: Frame, columns: list[str]) -> dict[str, object]:
    """A row with the frame's own fields filled in and every prediction empty."""
    row: dict[str, object] = dict.fromkeys(columns)
    row.update(frame=frame.number, timestamp=frame.timestamp, face=int(frame.box is not None))
    if "file" in row:
        row["file"] = frame.file
    if frame.box is not None:
        row.update(x=round(frame.box.x), y=round(frame.box.y), w=round(frame.box.w),
                   h=round(frame.box.h))
    return row


# ---------------------------------------------------------------------------- predictor


def _as_source(input: Path | str | Source | np.ndarray | Iterable[np.ndarray],
               fps: float | None = None) -> Source:
    """A path is discovered on disk; anything else is frames in memory."""
    if isinstance(input, Source):
        return input
    if isinstance(input, str | Path):
        if fps is not None:
            raise InputError(f"{input}: fps is for frames in memory; a file's frame rate comes "
                             "from the file")
        return discover(input)
    return frames_source(input, fps)


def _generation_number(value: str | int) -> int:
    return value if isinstance(value, int) else parse_generation(value)


def _resolve_run(run: Path, generation: str | int | None) -> tuple[Run, str | int | None]:
    """A run folder, or a generation folder inside one (RUN/student2)."""
    if not run.exists():
        raise InputError(f"{run}: no such model folder")
    if not Run(run).exists() and Run(run.parent).exists():
        inner = parse_generation(run.name)
        if generation is not None and _generation_number(generation) != inner:
            raise InputError(
                f"{run} is generation {run.name}, but generation {generation} was asked for"
            )
        return Run(run.parent), inner
    return Run(run), generation


class Predictor:
    """A trained generation of a run, ready to predict emotions frame by frame."""

    def __init__(
        self,
        run: Path | str,
        generation: str | int | None = None,
        members: int | None = None,
        backend: str = "torch",
        device: str = "auto",
        batch_frames: int = 16,
        log: Callable[[str], None] = print,
        detector: str | None = None,
        landmarks: Path | str | None = None,
    ):
        """`generation`: teacher, studentK or K (default: the last finished one); `members`:
        use the first N members (default all); `batch_frames`: frames per forward pass;
        `detector`: dlib or haar (default dlib, Haar when dlib is missing); `landmarks`: a dlib
        shape model file, to align crops by the eyes."""
        self.run, wanted = _resolve_run(Path(run), generation)
        self.config = self.run.config()
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; expected {' or '.join(BACKENDS)}")
        if batch_frames < 1:
            raise InputError(f"batch_frames must be 1 or more, got {batch_frames}")
        self.log = log
        self._said: set[str] = set()
        self.batch_frames = batch_frames
        self.generation = self._pick_generation(wanted)
        self.n_members = self._pick_members(members)
        self.device = resolve_device(device)
        self.input_size = PRESETS[self.config.preset].input_size
        self.members = self._load_members(backend)
        self.audio = self.config.modality == "va"
        self.ood_tasks, self.ood_threshold = self._ood_setting()
        self.detector = make_detector(detector, log=log)
        self.eyes = None if landmarks is None else EyeLocator(Path(landmarks))

    @property
    def name(self) -> str:
        """Run, generation and member count, e.g. "run/student2 (5 members)"."""
        count = _count(self.n_members, "member")
        return f"{self.run.root.name}/{generation_name(self.generation)} ({count})"

    @property
    def ensemble(self) -> bool:
        return self.n_members > 1

    def _pick_generation(self, wanted: str | int | None) -> int:
        finished = self.run.finished_generations()
        if not finished:
            raise InputError(f"{self.run.root} has no finished generation yet; train it first")
        if wanted is None:
            return finished[-1]
        generation = _generation_number(wanted)
        if generation not in finished:
            done = ", ".join(generation_name(g) for g in finished)
            raise InputError(
                f"{self.run.root}: generation {generation_name(generation)} is not finished "
                f"(finished: {done})"
            )
        return generation

    def _pick_members(self, members: int | None) -> int:
        available = self.config.members
        if members is None:
            return available
        if not 1 <= members <= available:
            raise InputError(f"--members must be between 1 and {available} for {self.run.root}, "
                             f"got {members}")
        return members

    def _load_members(self, backend: str) -> list:
        """The first `n_members` members, each with a NumPy `forward_stateful`."""
        members = range(self.n_members)
        if backend == "torch":
            return [TorchMember(self.run.load_member(self.generation, m, self.device), self.device)
                    for m in members]
        folder = self.run.generation_dir(self.generation) / ONNX_DIR
        paths = [folder / f"member-{m}.onnx" for m in members]
        weights = [self.run.weights_path(self.generation, m) for m in members]
        # Export when a file is missing or older than the weights it was made from (retrained).
        if not all(p.exists() and p.stat().st_mtime >= w.stat().st_mtime
                   for p, w in zip(paths, weights, strict=True)):
            self._say(f"exporting {generation_name(self.generation)} to ONNX in {folder} (once)")
            export_run(self.run.root, self.generation)
        return [OnnxMember(p) for p in paths]

    def _ood_setting(self) -> tuple[tuple[str, ...] | None, float | None]:
        """Tasks of the OOD score and its threshold from the run's evaluation report, if any."""
        if not self.ensemble:
            return None, None  # one model has no epistemic part: its OOD score is always 0
        path = self.run.root / REPORT_FILE
        if not path.exists():
            self._say(f"{path} does not exist (run `emodistill evaluate`): OOD scores are given "
                      "without a flag")
            return tuple(t.name for t in TASKS), None
        try:
            report = read_json(path)
        except InputError as error:
            self._say(f"{error}: OOD scores are given without a flag")
            return tuple(t.name for t in TASKS), None
        tasks = tuple(report.get("tasks") or (t.name for t in TASKS))
        entry = next((g for g in report.get("generations", [])
                      if g.get("name") == generation_name(self.generation)), None)
        if entry is None or "ood_threshold" not in entry:
            self._say(f"{path} has no OOD threshold for {generation_name(self.generation)}: "
                      "OOD scores are given without a flag")
            return tasks, None
        if self.n_members != report.get("members", self.config.members):
            self._say("the OOD threshold was chosen for the whole ensemble: with fewer members "
                      "OOD scores are given without a flag")
            return tasks, None
        return tasks, float(entry["ood_threshold"])

    def _say(self, message: str) -> None:
        """Log a note once per predictor."""
        if message not in self._said:
            self._said.add(message)
            self.log(f"note: {message}")

    def columns(self, source: Source) -> list[str]:
        return output_columns(self.ensemble, self.ood_tasks is not None, source.has_file_column)

    def sequences(self, source: Source, faces: bool = False) -> Iterator[Sequence]:
        """The input as sequences of frames, each cropped at the model's input size."""
        size = self.input_size
        tracker = FaceTracker(detector=self.detector, crop_size=size, eyes=self.eyes)
        if source.kind == "video":
            yield Sequence(_video_frames(source, tracker, faces), True, self._audio_track(source))
        elif source.kind == "frames":
            if self.audio:
                self._say("frames in memory carry no sound: the audio-visual model hears silence")
            yield Sequence(_array_frames(source, tracker, faces), True)
        elif source.kind == "crops":
            if self.audio:
                self._say("face crop folders carry no sound: the audio-visual model hears silence")
            for folder in source.files:
                yield Sequence(_crop_frames(folder, source.path, size, faces), True)
        else:
            if self.audio:
                self._say("images carry no sound: the audio-visual model hears silence")
            yield Sequence(_image_frames(source, tracker, faces), False)

    def _audio_track(self, source: Source) -> AudioTrack | None:
        if not self.audio:
            return None
        if source.video is None or not source.video.has_audio:
            self._say(f"{source.path} has no sound: the audio-visual model hears silence")
            return None
        return AudioTrack(decode_audio(source.path), SAMPLE_RATE, source.video.fps)

    def predict_frames(
        self, path: Path | str | Source | np.ndarray | Iterable[np.ndarray], faces: bool = False,
        progress: bool = False,
    ) -> Iterator[FramePrediction]:
        """Predictions frame by frame, in input order, as they are made (flat memory).

        `faces`: keep each face at figure size in `FramePrediction.face`.
        """
        source = _as_source(path)
        columns = self.columns(source)
        with tqdm(total=source.n_frames, unit="frame", disable=not progress, leave=False) as bar:
            for sequence in self.sequences(source, faces):
                for prediction in self._predict_sequence(sequence, columns):
                    bar.update()
                    yield prediction

    def predict(self, path: Path | str | np.ndarray | Iterable[np.ndarray], progress: bool = False,
                fps: float | None = None) -> pd.DataFrame:
        """A table with one row per frame (see `output_columns`) of a video, image or folder, or of
        frames in memory: a (T, H, W, 3) uint8 RGB array or an iterable of (H, W, 3) frames,
        taken as one video (`fps` gives their timestamps)."""
        source = _as_source(path, fps)
        rows = [p.row for p in self.predict_frames(source, progress=progress)]
        return table(rows, self.columns(source))

    def _predict_sequence(
        self, sequence: Sequence, columns: list[str]
    ) -> Iterator[FramePrediction]:
        """Buffer up to `batch_frames` faces, so the CNN sees a batch and the GRU the whole run."""
        pending: list[Frame] = []
        hidden: list[object] = [None] * self.n_members
        previous: int | None = None
        for frame in sequence.frames:
            if sequence.continuous and (frame.crop is None or previous is None
                                        or frame.number != previous + 1):
                # A stretch without a face (or a missing crop) breaks the time series: the next
                # face starts from a zero GRU state, as every training clip does, not a stale one.
                yield from self._flush(pending, hidden, sequence, columns)
                hidden = [None] * self.n_members
            previous = frame.number
            if sequence.continuous and frame.crop is None:
                yield FramePrediction(_frame_row(frame, columns), None, None)
                continue
            pending.append(frame)
            if len(pending) == self.batch_frames:
                yield from self._flush(pending, hidden, sequence, columns)
        yield from self._flush(pending, hidden, sequence, columns)

    def _flush(self, pending: list[Frame], hidden: list[object], sequence: Sequence,
               columns: list[str]) -> Iterator[FramePrediction]:
        """Predict the faces of `pending`, carry `hidden` on (in place) and empty `pending`."""
        found = [f for f in pending if f.crop is not None]
        values: dict[str, np.ndarray] = {}
        groups: dict[str, np.ndarray] = {}
        if found:
            member_probs, alone_probs = self._member_probs(found, hidden, sequence)
            values, groups = summarise(member_probs, self.ood_tasks, self.ood_threshold, alone_probs)
        parts = PARTS if self.ensemble else PARTS[:1]
        index = 0
        for frame in pending:
            row = _frame_row(frame, columns)
            if frame.crop is None:
                yield FramePrediction(row, None, None)
                continue
            row.update({k: _python(v[index]) for k, v in values.items() if k in row})
            yield FramePrediction(row, frame.display, {p: groups[p][index] for p in parts})
            index += 1
        pending.clear()

    def _member_probs(
        self, found: list[Frame], hidden: list[object], sequence: Sequence
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """Every member's probabilities, task -> (T, N, n_logits), for the faces `found`; and,
        for a time series with an OOD threshold, the same with each frame seen alone (None
        otherwise: independent images already are)."""
        crops = np.stack([f.crop for f in found])  # (N, S, S, 3)
        # A time series is one sequence (B=1, L=N); independent images are N sequences of one.
        shape = (1, len(found)) if sequence.continuous else (len(found), 1)
        frames = crops.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (N, 3, S, S)
        frames = frames.reshape(*shape, *frames.shape[1:])  # (B, L, 3, S, S)
        audio = None
        if self.audio:
            if sequence.audio is None:
                audio = silence(len(found))
            else:
                audio = sequence.audio.windows(np.array([f.number - 1 for f in found]))
            audio = audio.reshape(*shape, *audio.shape[1:])  # (B, L, 64, 64)
        alone = sequence.continuous and self.ood_tasks is not None
        per_member, per_member_alone = [], []
        for m, member in enumerate(self.members):
            if alone:
                logits, state, alone_logits = member.forward_with_alone(frames, audio, hidden[m])
                per_member_alone.append(activate({k: v.reshape(len(found), -1) for k, v in alone_logits.items()}))
            else:
                logits, state = member.forward_stateful(frames, audio, hidden[m])
            if sequence.continuous:
                hidden[m] = state
            per_member.append(activate({k: v.reshape(len(found), -1) for k, v in logits.items()}))

        def stacked(probs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
            return {t.name: np.stack([p[t.name] for p in probs]) for t in TASKS}  # (T, N, n)

        return stacked(per_member), stacked(per_member_alone) if alone else None


def _python(value: object) -> object:
    """NumPy scalars -> plain Python values for rows."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------------- tables and files


def table(rows: list[dict[str, object]], columns: list[str]) -> pd.DataFrame:
    """Rows -> a DataFrame with nullable integer, boolean and string columns for empty frames."""
    return _typed(pd.DataFrame.from_records(rows, columns=columns))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    dtypes: dict[str, str] = {}
    for column in frame.columns:
        if column in INTEGER_COLUMNS:
            dtypes[column] = "Int64"
        elif column.endswith("_present"):
            dtypes[column] = "Int8"
        elif column == "ood_flag":
            dtypes[column] = "boolean"
        elif column in ("file", "expression"):
            dtypes[column] = "string"
        else:
            dtypes[column] = "float64"
    return frame.astype(dtypes)


def _csv_value(value: object) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, float):
        return round(value, 6)
    return value


def write_csv(path: Path, predictions: Iterator[FramePrediction], columns: list[str],
              each: Callable[[FramePrediction], None]) -> None:
    """Stream rows into `path` (atomically: a failed run leaves no half-written table)."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            for prediction in predictions:
                writer.writerow([_csv_value(prediction.row[c]) for c in columns])
                each(prediction)

    atomic_write(path, write, what="the prediction table")


def write_parquet(path: Path, predictions: Iterator[FramePrediction], columns: list[str],
                  each: Callable[[FramePrediction], None]) -> None:
    rows = []
    for prediction in predictions:
        rows.append(prediction.row)
        each(prediction)
    frame = table(rows, columns)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), what="the prediction table")


WRITERS = {".csv": write_csv, ".parquet": write_parquet}


def read_table(path: Path) -> pd.DataFrame:
    """A prediction table written by `predict_command`, with the dtypes of `table`."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return _typed(pd.read_csv(path, dtype={"file": "string", "expression": "string"}))


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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


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
) -> Path:
    """`emodistill predict`: write the per-frame table (and figures); returns the table's path."""
    input, model = Path(input), Path(model)
    stem = input.resolve().stem or "input"
    out = Path(out) if out is not None else Path.cwd() / f"{stem}.emotions.csv"
    if out.suffix.lower() not in WRITERS:
        raise InputError(f"{out}: the output must end in .csv or .parquet")
    tune_allocator()
    source = discover(input)
    predictor = Predictor(model, members=_parse_members(members), backend=backend, device=device,
                          detector=detector)
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
    print(f"{input}: {_count(frames, 'frame')}, {faces} with a face{found}, "
          f"{frames / max(seconds, 1e-9):.1f} frames/s with {predictor.name} -> {out}")
    if plot is not None:
        from emodistill.predict.plots import write_plots

        written = write_plots(read_table(out), picker.kept, plot, source.is_sequence,
                              predictor.ood_threshold, predictor.name, input.stem)
        print(f"figures: {_count(len(written), 'file')} in {plot}")
    return out
