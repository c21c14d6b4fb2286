"""Video decoding as a stream, images read by their content, temporal smoothing of the face box,
and the face tracker that runs detection (emodistill.data.faces) and cropping on each frame.

Used by `prepare` (raw videos -> Aff-wild2-style crops) and by real-time prediction, so every step
works one frame at a time with flat memory and no look-ahead.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from queue import Full, Queue
from typing import TypeVar

import av
import cv2
import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.faces import (
    CROP_MARGIN,
    Box,
    Detector,
    EyeLocator,
    align_face,
    crop_face,
    make_detector,
)

T = TypeVar("T")

# The video files of the whole project: inputs of `prepare` and `predict`, Aff-wild2's raw videos.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")

# The first bytes of the image formats OpenCV decodes, so that a file is taken for an image by
# what it holds (a WEBP or PNG saved under a .jpg name is common), never by its extension.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*",  # TIFF, either byte order
)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (frame count estimated when it does not say)."""

    path: Path
    fps: float  # average frames per second of the video stream
    n_frames: int  # frames in the stream; duration x fps when the container gives no count
    duration: float  # seconds
    width: int  # pixels
    height: int  # pixels
    has_audio: bool  # the container holds at least one audio stream


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame."""

    index: int  # 0-based position in the stream (Aff-wild2 crop number - 1)
    timestamp: float  # seconds from the start of the stream
    rgb: np.ndarray  # (H, W, 3) uint8


# How an unreadable file is reported. `predict` and `prepare` name it as the subject of the
# sentence; the Aff-wild2 reader (raw videos beside the crops, for audio and frame rates) words it
# as before. Both are checked by tests, so both stay.
UNREADABLE_VIDEO = "{path}: not a readable video file ({reason})"
UNREADABLE_RAW_VIDEO = "{path} could not be opened as a video ({reason})"


def open_container(path: Path, unreadable: str = UNREADABLE_VIDEO) -> av.container.InputContainer:
    """Open a media file for reading with PyAV, the one opener of the package: a missing file, or
    one PyAV cannot open, is one InputError naming it (`unreadable`, formatted with `path` and
    `reason`, words the second)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise InputError(unreadable.format(path=path, reason=reason)) from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise InputError(f"{path}: the file holds no video stream (zero-length or audio only)")
    return container.streams.video[0]


def stream_rate(stream: av.VideoStream) -> Fraction | None:
    """A video stream's frame rate as the container states it (average, else guessed from the
    timestamps, else the base rate); None when it states none."""
    return stream.average_rate or stream.guessed_rate or stream.base_rate or None


def probe_video(path: Path, unreadable: str = UNREADABLE_VIDEO) -> VideoInfo:
    """Read a video's header: frame rate (0.0 when the file states none), frame count, duration,
    size and whether it has sound. `unreadable` as in `open_container`."""
    with open_container(path, unreadable) as container:
        stream = _video_stream(container, path)
        rate = stream_rate(stream)
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        n_frames = stream.frames or round(duration * fps)
        if n_frames <= 0:
            raise InputError(f"{path}: the video stream is empty (no frames)")
        return VideoInfo(
            path=path,
            fps=fps,
            n_frames=int(n_frames),
            duration=duration or (n_frames / fps if fps else 0.0),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            has_audio=bool(container.streams.audio),
        )


def iter_frames(path: Path, thread: bool = False) -> Iterator[VideoFrame]:
    """Decode a video one frame at a time (memory stays flat however long the video is).

    `thread`: decode in a background thread, a few frames ahead of the consumer (`prefetch`):
    the same frames in the same order, the same errors, raised where the frame would have been.
    """
    frames = _decode_frames(Path(path))
    return prefetch(frames) if thread else frames


def _decode_frames(path: Path) -> Iterator[VideoFrame]:
    with open_container(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame threads too: 640x480 H.264 decodes 2x faster here
        rate = stream_rate(stream) or Fraction(25)
        listed = stream.frames  # frames in the container's index; 0 when it keeps none
        coded = decoded = 0
        try:
            for packet in container.demux(stream):
                coded += packet.dts is not None  # the last, empty packet only flushes the decoder
                # The demuxer flags a packet cut short by the end of the file; decoding it may
                # fail inside a decoder thread, where the error would be lost.
                if packet.is_corrupt:
                    raise av.InvalidDataError(0, "incomplete packet")
                for frame in packet.decode():
                    seconds = frame.time if frame.time is not None else float(decoded / rate)
                    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                    yield VideoFrame(decoded, seconds, rgb)
                    decoded += 1
        except av.FFmpegError as error:
            raise InputError(
                f"{path}: the video is corrupt or truncated, decoding broke at frame {coded} "
                f"({error.strerror or error})"
            ) from None
        if decoded == 0:
            raise InputError(f"{path}: the video stream is empty (no frames)")
        if coded < listed:
            raise InputError(
                f"{path}: the video is truncated, it ends at frame {coded} of the {listed} "
                "its index lists"
            )


_ITEM, _END, _ERROR = range(3)  # what the decode thread puts on its queue, with a value


def prefetch(items: Iterable[T], depth: int = 8) -> Iterator[T]:
    """Iterate `items` in a daemon thread, at most `depth` items ahead of the consumer.

    The items come in their order; an exception raised by `items` is raised again in the
    consumer, the same object (same type and message), after the items before it. Closing the
    generator early (a `break`, garbage collection) stops the thread: it closes `items` when it
    has a `close` (a generator: its `with` blocks run, the container is closed) and is waited for
    up to a few seconds, so an early exit never hangs on a full queue.

    PyAV decodes and converts frames with the GIL released, so the next frames are decoded while
    the consumer runs the models (2 cores, one PyTorch thread: 1.4-1.8 s of 720p decoding beside
    0.8 s of PyTorch work took 1.7-1.9 s); so does dlib's detector (1.2-1.4 s of detections
    beside 0.5-0.6 s: 1.1 s), so a generator that also tracks faces can run here too. The
    thread starts at the first `next`.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be 1 or more, got {depth}")
    queue: Queue[tuple[int, object]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: int, value: object) -> bool:
        """Queue one entry, giving up when the consumer has gone; True when queued."""
        while not stop.is_set():
            try:
                queue.put((kind, value), timeout=0.05)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(_ITEM, item):
                    return
            put(_END, None)
        except BaseException as error:  # every error belongs to the consumer
            put(_ERROR, error)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="emodistill-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join(timeout=5.0)


def is_image_file(path: Path) -> bool:
    """True when the file's first bytes are those of an image OpenCV reads (JPEG, PNG, WEBP, BMP,
    TIFF), whatever its name ends in."""
    with Path(path).open("rb") as handle:
        head = handle.read(12)
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return webp or head.startswith(IMAGE_SIGNATURES)


def read_image(path: Path) -> np.ndarray:
    """An image file decoded by its content as (H, W, 3) uint8 RGB; an unreadable one is an
    InputError naming it."""
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3)


def write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    """An (H, W, 3) uint8 RGB image as a JPEG file of the given quality (1-100)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as JPEG")
    Path(path).write_bytes(encoded.tobytes())


@dataclass
class BoxSmoother:
    """Exponential moving average of the face box's centre and size that bridges short misses."""

    alpha: float = 0.6  # weight of the newest detection (1: no smoothing)
    hold: int = 5  # missed detections bridged with the last box before reporting no face
    jump: float = 0.5  # a centre moving more than this x the face size restarts the average (a cut)
    _box: Box | None = field(default=None, init=False, repr=False)
    _misses: int = field(default=0, init=False, repr=False)

    @property
    def box(self) -> Box | None:
        """The current smoothed box (None once misses outlast `hold`)."""
        return self._box

    def reset(self) -> None:
        self._box, self._misses = None, 0

    def update(self, detection: Box | None) -> Box | None:
        """Feed one detection (None for a miss) and return the smoothed box."""
        if detection is None:
            self._misses += 1
            if self._misses > self.hold:
                self._box = None
            return self._box
        self._misses = 0
        previous = self._box
        if previous is None or self._jumped(previous, detection):
            self._box = detection
            return detection
        (pcx, pcy), (dcx, dcy) = previous.centre, detection.centre
        a = self.alpha
        self._box = Box.from_centre(
            a * dcx + (1 - a) * pcx,
            a * dcy + (1 - a) * pcy,
            a * detection.w + (1 - a) * previous.w,
            a * detection.h + (1 - a) * previous.h,
        )
        return self._box

    def _jumped(self, previous: Box, detection: Box) -> bool:
        (pcx, pcy), (dcx, dcy) = previous.centre, detection.centre
        return float(np.hypot(dcx - pcx, dcy - pcy)) > self.jump * max(previous.w, previous.h)


@dataclass
class FaceTracker:
    """Detector + smoother + crop, one frame at a time; optionally detects only every k-th frame.

    `prepare` and `predict` run every video frame and every image through one of these (an image
    is a video of one frame), so both find and cut faces the same way.
    """

    detector: Detector = field(default_factory=make_detector)  # dlib, or Haar without dlib
    smoother: BoxSmoother = field(default_factory=BoxSmoother)
    crop_size: int = 112  # side of the face crops in pixels (Aff-wild2: 112)
    margin: float = CROP_MARGIN  # enlargement of the box on each side, fraction of its size
    # Run the detector on frames 0, k, 2k, ... of a video (counted from `reset`) and reuse the
    # smoothed box in between, unchanged and unchecked (no re-detection when the face moves or
    # leaves: the next scheduled detection finds out). The smoother's `hold` then counts missed
    # detections, so a lost face is dropped after hold x k frames. 1: every frame, as without it.
    detect_every: int = 1
    eyes: EyeLocator | None = None  # a landmark model: crops aligned by the eyes, else square
    _frames_seen: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise InputError(f"detect_every must be 1 or more, got {self.detect_every}")

    def reset(self) -> None:
        """Forget the previous video's face (call between videos)."""
        self.smoother.reset()
        self._frames_seen = 0

    def cut(self, rgb: np.ndarray, box: Box, size: int) -> np.ndarray:
        """The (size, size, 3) face in `box`: aligned by the eyes with a landmark model, else the
        square crop."""
        if self.eyes is None:
            return crop_face(rgb, box, size, self.margin)
        return align_face(rgb, self.eyes.locate(rgb, box), size)

    def track(self, rgb: np.ndarray) -> tuple[Box | None, np.ndarray | None]:
        """(smoothed face box, (crop_size, crop_size, 3) crop) of one frame, or (None, None)."""
        if self._frames_seen % self.detect_every == 0:
            box = self.smoother.update(self.detector.detect(rgb))
        else:
            box = self.smoother.box
        self._frames_seen += 1
        if box is None:
            return None, None
        return box, self.cut(rgb, box, self.crop_size)
