"""What `predict` reads: a video, an image, a folder of images, face-crop folders or frames in
memory, as frames with their faces found, followed and aligned, and a video's sound as log-mel
windows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.audio import HOP_SECONDS, WINDOW_COLUMNS, log_mel_per_frame
from emodistill.data.crops import read_crop
from emodistill.data.frontend import Box, Face, FaceCrop, FrontEnd, iter_frames, read_image
from emodistill.data.frontend.inputs import Source, discover, images_in

DISPLAY_SIZE = 224  # side of the face kept for figures, in pixels


@dataclass(frozen=True)
class Frame:
    """One input frame on its way to the model, with its faces."""

    number: int  # 1-based: the video frame (as the crop names), crop number, or image position
    timestamp: float | None  # seconds from the start of the video; None without a video
    file: str | None  # path relative to the input folder; None for a single video or image
    # By face_id; empty: no face found. Each crop is (S, S, 3) uint8 at the model's input size,
    # each display (DISPLAY_SIZE, DISPLAY_SIZE, 3) for figures when they were asked for.
    faces: tuple[FaceCrop, ...]


@dataclass(frozen=True)
class FrameSequence:
    """Frames that the GRU heads see in order (`continuous`: each person's state carries from
    frame to frame) or each on its own (images)."""

    frames: Iterator[Frame]
    continuous: bool
    audio: AudioTrack | None = None  # the video's sound, for audio-visual models


def _face_frame(front: FrontEnd, number: int, timestamp: float | None, file: str | None,
                rgb: np.ndarray, faces: bool) -> Frame:
    """Find, follow and align the faces of one picture (as `prepare` does)."""
    found = front.faces(rgb, number, DISPLAY_SIZE if faces else None)
    return Frame(number, timestamp, file, tuple(found))


def video_frames(source: Source, front: FrontEnd, faces: bool) -> Iterator[Frame]:
    front.start(source.path.stem)
    for frame in iter_frames(source.path, thread=True):  # decoded a few frames ahead
        yield _face_frame(front, frame.index + 1, frame.timestamp, None, frame.rgb, faces)


def image_frames(source: Source, front: FrontEnd, faces: bool) -> Iterator[Frame]:
    single = source.kind == "image"
    for number, path in enumerate(source.files, start=1):
        front.start(source.path.stem)  # each picture on its own, as `prepare` does
        file = None if single else path.name
        yield _face_frame(front, number, None, file, read_image(path), faces)


def _checked_frame(rgb: object, index: int) -> np.ndarray:
    """One in-memory frame as a C-contiguous (H, W, 3) uint8 array, or an InputError naming it."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        got = (f"shape {rgb.shape} {rgb.dtype}" if isinstance(rgb, np.ndarray)
               else type(rgb).__name__)
        raise InputError(f"frame {index} of the input: expected an (H, W, 3) uint8 RGB array, "
                         f"got {got}")
    return np.ascontiguousarray(rgb)


def array_frames(source: Source, front: FrontEnd, faces: bool) -> Iterator[Frame]:
    front.start()
    for index, rgb in enumerate(() if source.frames is None else source.frames):
        timestamp = None if source.fps is None else index / source.fps
        yield _face_frame(front, index + 1, timestamp, None, _checked_frame(rgb, index), faces)


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
    """Aligned crops: each one face, the person of its folder (face_id 1), no landmarks known."""
    for path in images_in(folder):
        crop = read_crop(path, size)  # as the training reader decodes and resizes it
        display = read_crop(path, DISPLAY_SIZE) if faces else None
        file = path.relative_to(root).as_posix()
        face = FaceCrop(1, Face(Box(0, 0, size, size), None), crop, display)
        yield Frame(int(path.stem), None, file, (face,))


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
