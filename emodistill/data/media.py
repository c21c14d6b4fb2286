"""Video decoding as a stream, face detection, temporal smoothing of the face box, and face crops.

Used by `prepare` (raw videos -> Aff-wild2-style crops) and by real-time prediction, so every step
works one frame at a time with flat memory and no look-ahead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from emodistill.errors import InputError

# Enlargement of the detector's box on each side, as a fraction of the box size: Haar boxes run
# from the forehead to the chin, while Aff-wild2's crops show the whole face plus some context
# (the crop side is 1.5x the box).
CROP_MARGIN = 0.25


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


@dataclass(frozen=True)
class Box:
    """An axis-aligned face box in pixels of the full frame."""

    x: float  # left
    y: float  # top
    w: float  # width
    h: float  # height

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    @classmethod
    def from_centre(cls, cx: float, cy: float, w: float, h: float) -> Box:
        return cls(cx - w / 2, cy - h / 2, w, h)


def _open(path: Path) -> av.container.InputContainer:
    """Open a media file for reading, turning PyAV's errors into one sentence naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such video file")
    try:
        return av.open(str(path))
    except av.FFmpegError as error:
        raise InputError(f"{path}: not a readable video file ({error.strerror or error})") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        raise InputError(f"{path}: the file holds no video stream (zero-length or audio only)")
    return container.streams.video[0]


def probe_video(path: Path) -> VideoInfo:
    """Read a video's header: frame rate, frame count, duration, size and whether it has sound."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
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


def iter_frames(path: Path) -> Iterator[VideoFrame]:
    """Decode a video one frame at a time (memory stays flat however long the video is)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame threads too: 640x480 H.264 decodes 2x faster here
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
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


def _cascade_classifier(name: str) -> cv2.CascadeClassifier:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / name
    classifier = cv2.CascadeClassifier(str(path)) if folder and path.is_file() else None
    if classifier is None or classifier.empty():
        raise InputError(
            f"OpenCV's Haar cascade {name} is missing from this OpenCV build; "
            "install opencv-python-headless<5, which ships it"
        )
    return classifier


@dataclass
class FaceDetector:
    """OpenCV's Haar frontal-face cascade on a downscaled grey frame; keeps the largest face."""

    # File in cv2.data.haarcascades. On faces pasted over natural photos at 640x480, "alt2"
    # found 80/80 where "default" found 63/80, and ran about 1.5x faster.
    cascade: str = "haarcascade_frontalface_alt2.xml"
    detect_size: int = 320  # longest side of the grey image searched (frames are never upscaled)
    scale_factor: float = 1.15  # step between search scales (1.1: ~25% slower, no more faces found)
    min_neighbors: int = 5  # overlapping hits needed to accept a face (higher: fewer false faces)
    min_size: int = 24  # smallest face side searched, in pixels of the downscaled image
    # Candidates with fewer overlapping hits than this fraction of the best-supported face are
    # dropped before taking the largest: weak false faces (a helmet rim, a collar) are often
    # bigger than the real one.
    support: float = 0.5
    _classifier: cv2.CascadeClassifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._classifier = _cascade_classifier(self.cascade)

    def detect(self, rgb: np.ndarray) -> Box | None:
        """The largest face in an (H, W, 3) uint8 RGB frame, or None."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.detect_size / max(height, width))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (H, W)
        if scale < 1.0:
            small = (max(1, round(width * scale)), max(1, round(height * scale)))
            grey = cv2.resize(grey, small, interpolation=cv2.INTER_AREA)  # (h, w)
        grey = cv2.equalizeHist(grey)  # the cascade was trained on contrast-normalised faces
        faces, hits = self._classifier.detectMultiScale2(
            grey,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        if len(faces) == 0:
            return None
        hits = np.asarray(hits).ravel()
        confident = faces[hits >= self.support * hits.max()]
        x, y, w, h = max(confident, key=lambda f: f[2] * f[3])
        # Scale back with the ratios actually used, which rounding makes differ per axis.
        sx, sy = width / grey.shape[1], height / grey.shape[0]
        return Box(float(x * sx), float(y * sy), float(w * sx), float(h * sy))


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


def crop_face(rgb: np.ndarray, box: Box, size: int, margin: float = CROP_MARGIN) -> np.ndarray:
    """Square crop around `box` grown by `margin` per side, black beyond the frame, size x size."""
    height, width = rgb.shape[:2]
    cx, cy = box.centre
    side = max(1, round(max(box.w, box.h) * (1 + 2 * margin)))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = x0 + side, y0 + side
    inside = rgb[max(0, y0):max(0, min(height, y1)), max(0, x0):max(0, min(width, x1))]
    if inside.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = side - top - inside.shape[0], side - left - inside.shape[1]
    square = cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)  # (size, size, 3)


@dataclass
class FaceTracker:
    """Detector + smoother + crop, one frame at a time; optionally detects only every k-th frame."""

    detector: FaceDetector = field(default_factory=FaceDetector)
    smoother: BoxSmoother = field(default_factory=BoxSmoother)
    crop_size: int = 112  # side of the face crops in pixels (Aff-wild2: 112)
    margin: float = CROP_MARGIN  # enlargement of the box on each side, fraction of its size
    detect_every: int = 1  # run the detector on every k-th frame, reuse the smoothed box between
    _frames_seen: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise InputError(f"detect_every must be 1 or more, got {self.detect_every}")

    def reset(self) -> None:
        """Forget the previous video's face (call between videos)."""
        self.smoother.reset()
        self._frames_seen = 0

    def track(self, rgb: np.ndarray) -> tuple[Box | None, np.ndarray | None]:
        """(smoothed face box, (crop_size, crop_size, 3) crop) of one frame, or (None, None)."""
        if self._frames_seen % self.detect_every == 0:
            box = self.smoother.update(self.detector.detect(rgb))
        else:
            box = self.smoother.box
        self._frames_seen += 1
        if box is None:
            return None, None
        return box, crop_face(rgb, box, self.crop_size, self.margin)
