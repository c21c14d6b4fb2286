"""What `predict` reads: a video, an image, a folder of images, face-crop folders or frames in
memory, as frames with their face found and cropped, and a video's sound as log-mel windows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.audio import HOP_SECONDS, WINDOW_COLUMNS, log_mel_per_frame
from emodistill.data.crops import CROPS, read_crop
from emodistill.data.media import Box, FaceTracker, VideoInfo, is_image_file, iter_frames, probe_video, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROP_SUFFIXES = (".jpg", ".jpeg")  # Aff-wild2 and `prepare` write JPEG crops
DISPLAY_SIZE = 224  # side of the face kept for figures, in pixels


@dataclass(frozen=True)
class Source:
    """What a predict input is: one video, one image, a folder of images, face crop folders, or
    frames in memory."""

    path: Path
    # "video" | "image" (one picture) | "image-folder" (independent pictures) | "crops"
    # (cropped_aligned) | "frames"
    # (NumPy RGB frames of one video, in time order)
    kind: str
    files: tuple[Path, ...] = ()  # "image": the image; "image-folder": sorted pictures; "crops": folders
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
        return self.kind in ("image-folder", "crops")


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
        return Source(folder, "image-folder", tuple(images), len(images))
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
class FrameSequence:
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


def video_frames(source: Source, tracker: FaceTracker, faces: bool) -> Iterator[Frame]:
    for frame in iter_frames(source.path):
        yield _face_frame(tracker, frame.index + 1, frame.timestamp, None, frame.rgb, faces)


def image_frames(source: Source, tracker: FaceTracker, faces: bool) -> Iterator[Frame]:
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


def array_frames(source: Source, tracker: FaceTracker, faces: bool) -> Iterator[Frame]:
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


def crop_frames(folder: Path, root: Path, size: int, faces: bool) -> Iterator[Frame]:
    for path in _images_in(folder):
        crop = read_crop(path, size)  # as the training reader decodes and resizes it
        display = read_crop(path, DISPLAY_SIZE) if faces else None
        file = path.relative_to(root).as_posix()
        yield Frame(int(path.stem), None, file, Box(0, 0, size, size), crop, display)




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


def as_source(input: Path | str | Source | np.ndarray | Iterable[np.ndarray],
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
