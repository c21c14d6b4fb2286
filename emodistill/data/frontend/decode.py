"""Video decoding as a stream, upright: a video's display rotation (the display matrix that phones
write into MP4/MOV files) is applied to every frame before anything looks for a face.

Every reader of the package decodes here (`prepare`, `predict`, the Aff-wild2 reader's raw videos),
one frame at a time with flat memory and no look-ahead; `prefetch` runs it in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from queue import Full, Queue
from typing import TypeVar

import av
import numpy as np

from emodistill.core.errors import InputError

T = TypeVar("T")

# The video files of the whole project: inputs of `prepare` and `predict`, Aff-wild2's raw videos
# (images are recognised by their content instead).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (frame count estimated when it does not say)."""

    path: Path
    fps: float  # average frames per second of the video stream
    n_frames: int  # frames in the stream; duration x fps when the container gives no count
    duration: float  # seconds
    width: int  # pixels, as displayed (after the rotation)
    height: int  # pixels, as displayed
    has_audio: bool  # the container holds at least one audio stream
    rotation: int = 0  # degrees counter-clockwise the stored frames are turned to display them


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame, upright."""

    index: int  # 0-based position in the stream (Aff-wild2 crop number - 1)
    timestamp: float  # seconds from the start of the stream
    rgb: np.ndarray  # (H, W, 3) uint8, the display rotation applied
    rotation: int = 0  # degrees counter-clockwise the decoded frame was turned (0, 90, 180, 270)


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


def quarter_turns(frame: av.VideoFrame) -> int:
    """Quarter turns counter-clockwise (0-3) that show a decoded frame upright, from its display
    matrix (`frame.rotation`: degrees counter-clockwise, in [-180, 180]; phones write 90 or -90).
    Angles between quarter turns, which no camera writes, go to the nearest one."""
    return round(frame.rotation / 90) % 4


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's display matrix, 9 int32 (FFmpeg's layout: a, b, u, c, d, v, x, y, w), or None."""
    for data in frame.side_data:
        if data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return np.frombuffer(bytes(data), dtype="<i4")[:9]
    return None


def upright(frame: av.VideoFrame) -> tuple[np.ndarray, int]:
    """A decoded frame as (H, W, 3) uint8 RGB turned (and mirrored, for a matrix whose 2 x 2 part
    has a negative determinant, as a front camera may write) as its display matrix says, the way
    FFmpeg's command line shows it; and the degrees it was turned."""
    turns = quarter_turns(frame)
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) as stored
    matrix = display_matrix(frame)
    if matrix is not None and int(matrix[0]) * int(matrix[4]) - int(matrix[1]) * int(matrix[3]) < 0:
        return np.ascontiguousarray(_mirrored(rgb, turns, matrix)), 90 * turns
    if turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, turns))  # (W, H, 3) for a quarter turn
    return rgb, 90 * turns


def _mirrored(rgb: np.ndarray, turns: int, matrix: np.ndarray) -> np.ndarray:
    """A mirroring display matrix applied as FFmpeg's autorotation does: no quarter turn or a
    half turn becomes a horizontal flip where a < 0 and a vertical one where d < 0; a quarter
    turn becomes a transposition, across the main diagonal for a clockwise turn (c > 0) and
    across the other for a counter-clockwise one (c < 0)."""
    if turns == 3:  # FFmpeg's transpose=cclock_flip
        return np.rot90(rgb, 1)[::-1]
    if turns == 1:  # FFmpeg's transpose=clock_flip
        return np.rot90(rgb, -1)[::-1]
    if matrix[0] < 0:
        rgb = rgb[:, ::-1]
    return rgb[::-1] if matrix[4] < 0 else rgb


def _first_frame_turns(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Quarter turns of the first decodable frame; 0 when none decodes (decoding the video then
    says what is wrong with it)."""
    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError:
        return 0
    return 0 if frame is None else quarter_turns(frame)


def probe_video(path: Path, unreadable: str = UNREADABLE_VIDEO) -> VideoInfo:
    """Read a video's header: frame rate (0.0 when the file states none), frame count, duration,
    displayed size and rotation, and whether it has sound. `unreadable` as in `open_container`.
    The rotation is carried by each frame, so the first one is decoded to read it."""
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
        width, height = stream.codec_context.width, stream.codec_context.height
        has_audio = bool(container.streams.audio)
        turns = _first_frame_turns(container, stream)
        if turns % 2:
            width, height = height, width
        return VideoInfo(
            path=path,
            fps=fps,
            n_frames=int(n_frames),
            duration=duration or (n_frames / fps if fps else 0.0),
            width=width,
            height=height,
            has_audio=has_audio,
            rotation=90 * turns,
        )


def iter_frames(path: Path, thread: bool = False) -> Iterator[VideoFrame]:
    """Decode a video one frame at a time, upright (memory stays flat however long the video is).

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
                    rgb, rotation = upright(frame)  # (H, W, 3)
                    yield VideoFrame(decoded, seconds, rgb, rotation)
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
