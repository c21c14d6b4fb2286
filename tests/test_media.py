"""Tests for video decoding, face detection, box smoothing and cropping (emodistill.data.media)."""

from __future__ import annotations

import inspect
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from emodistill.core.errors import InputError
from emodistill.data import faces
from emodistill.data.faces import Box, DlibDetector, HaarDetector, crop_face
from emodistill.data.media import BoxSmoother, FaceTracker, iter_frames, probe_video, read_image, write_jpeg

FPS = 25
WIDTH, HEIGHT = 480, 360
# The astronaut's face, located by eye on a grid drawn over skimage.data.astronaut():
# cheeks at x 176 and 272, hairline at y 64, chin at y 160.
ASTRONAUT_FACE = Box(176, 64, 96, 96)
PATCH_ORIGIN = (96, 0)  # (x, y) of the pasted 256 x 256 patch in the astronaut image
N_FACE, N_BLANK = 20, 5


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / (a.w * a.h + b.w * b.h - inter)


def background() -> np.ndarray:
    """A smooth grey-blue gradient with no face-like structure."""
    ramp = np.linspace(60, 200, WIDTH, dtype=np.float32)[None, :, None]  # (1, W, 1)
    return np.broadcast_to(ramp * [1.0, 1.0, 1.1], (HEIGHT, WIDTH, 3)).clip(0, 255).astype(np.uint8)


def face_frame(k: int) -> tuple[np.ndarray, Box]:
    """Background with the astronaut patch pasted at a position moving with k; and the face box."""
    patch = skdata.astronaut()[0:256, 96:352]  # (256, 256, 3)
    left, top = 20 + 8 * k, 40 + 2 * k
    frame = background().copy()
    frame[top:top + 256, left:left + 256] = patch
    px, py = PATCH_ORIGIN
    face = Box(ASTRONAUT_FACE.x - px + left, ASTRONAUT_FACE.y - py + top,
               ASTRONAUT_FACE.w, ASTRONAUT_FACE.h)
    return frame, face


def face_video_frames(n_face: int = N_FACE, n_blank: int = N_BLANK) -> tuple[list, list]:
    """n_face frames with a moving face, then n_blank of background; face boxes (None: no face)."""
    pairs = [face_frame(k) for k in range(n_face)]
    frames = [f for f, _ in pairs] + [background()] * n_blank
    boxes = [b for _, b in pairs] + [None] * n_blank
    return frames, boxes


def write_video(path: Path, frames: list[np.ndarray], faststart: bool = False,
                audio_seconds: float = 0.0) -> Path:
    """Encode RGB frames as H.264 (and optionally a 440 Hz AAC tone) with PyAV."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=16000) if audio_seconds else None
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            t = np.arange(int(16000 * audio_seconds)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]  # (1, T)
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> tuple[Path, list]:
    frames, boxes = face_video_frames()
    return write_video(tmp_path_factory.mktemp("video") / "face.mp4", frames), boxes


def test_probe_reads_rate_count_size_and_audio(face_video, tmp_path):
    path, _ = face_video
    info = probe_video(path)
    assert (info.fps, info.n_frames) == (FPS, N_FACE + N_BLANK)
    assert (info.width, info.height) == (WIDTH, HEIGHT)
    assert info.duration == pytest.approx((N_FACE + N_BLANK) / FPS, abs=0.05)
    assert not info.has_audio
    with_sound = write_video(tmp_path / "sound.mp4", [background()] * 3, audio_seconds=0.2)
    assert probe_video(with_sound).has_audio
    # Matroska keeps no frame count: it is estimated as duration x rate.
    unindexed = write_video(tmp_path / "plain.mkv", [background()] * 10)
    with av.open(str(unindexed)) as container:
        assert container.streams.video[0].frames == 0
    assert probe_video(unindexed).n_frames == 10
    assert len(list(iter_frames(unindexed))) == 10


def test_iter_frames_streams_every_frame_with_times(face_video):
    path, _ = face_video
    frames = iter_frames(path)
    assert inspect.isgenerator(frames)
    decoded = list(frames)
    assert [f.index for f in decoded] == list(range(N_FACE + N_BLANK))
    assert [f.timestamp for f in decoded] == pytest.approx(np.arange(N_FACE + N_BLANK) / FPS)
    assert decoded[0].rgb.shape == (HEIGHT, WIDTH, 3) and decoded[0].rgb.dtype == np.uint8
    # Lossy H.264 keeps the picture close to what was written.
    original, _ = face_frame(0)
    assert np.abs(decoded[0].rgb.astype(int) - original).mean() < 6


@pytest.mark.parametrize("detector_class", [DlibDetector, HaarDetector])
def test_detector_finds_the_pasted_face_and_nothing_on_background(face_video, detector_class):
    path, boxes = face_video
    detector = detector_class()
    for frame, truth in zip(iter_frames(path), boxes, strict=True):
        found = detector.detect(frame.rgb)
        if truth is None:
            assert found is None, f"false face on blank frame {frame.index}"
        else:
            assert found is not None, f"face missed on frame {frame.index}"
            assert iou(found, truth) > 0.5, f"frame {frame.index}: {found} vs {truth}"


def test_detector_prefers_a_well_supported_face_over_a_weak_larger_one():
    # On the whole astronaut image at 320 px the cascade also fires weakly on the helmet rim,
    # with a box larger than the face; the face must still be chosen.
    found = HaarDetector().detect(skdata.astronaut())
    assert found is not None and iou(found, ASTRONAUT_FACE) > 0.5


def test_smoother_averages_holds_and_forgets():
    smoother = BoxSmoother(alpha=0.5, hold=2, jump=0.5)
    assert smoother.update(Box(0, 0, 10, 10)) == Box(0, 0, 10, 10)
    # Centre (5, 5) and (7, 5) averaged with weight 0.5 give (6, 5); heights 10 and 14 give 12.
    assert smoother.update(Box(2, -2, 10, 14)) == Box(1, -1, 10, 12)
    assert smoother.update(None) == Box(1, -1, 10, 12)
    assert smoother.update(None) == Box(1, -1, 10, 12)
    assert smoother.update(None) is None
    smoother.update(Box(0, 0, 10, 10))
    # A centre moving 20 px, more than 0.5 x the size 10, restarts the average.
    assert smoother.update(Box(20, 0, 10, 10)) == Box(20, 0, 10, 10)


def test_tracker_holds_through_a_single_miss_and_crops():
    frames, boxes = face_video_frames(n_face=6, n_blank=0)
    frames[3] = background()  # the face vanishes for one frame
    tracker = FaceTracker(crop_size=64)
    results = [tracker.track(f) for f in frames]
    assert all(box is not None for box, _ in results)
    assert iou(results[3][0], boxes[2]) > 0.5  # the held box is where the face last was
    assert all(crop.shape == (64, 64, 3) and crop.dtype == np.uint8 for _, crop in results)
    tracker.reset()
    blank = [tracker.track(background()) for _ in range(3)]
    assert blank == [(None, None)] * 3


def test_tracker_detects_every_kth_frame(monkeypatch):
    tracker = FaceTracker(detect_every=3)
    calls = []
    face = Box(10, 10, 40, 40)
    monkeypatch.setattr(tracker.detector, "detect", lambda rgb: calls.append(1) or face)
    results = [tracker.track(background()) for _ in range(7)]
    assert len(calls) == 3  # frames 0, 3, 6
    assert all(box == face for box, _ in results)
    with pytest.raises(InputError, match="detect_every"):
        FaceTracker(detect_every=0)


def test_crop_is_the_enlarged_square_and_pads_with_black():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    # Box 10 x 10 at (20, 10), margin 0.5 per side -> 20 x 20 square from (15, 5): a plain slice.
    assert np.array_equal(crop_face(image, Box(20, 10, 10, 10), 20, margin=0.5), image[5:25, 15:35])
    # Box centred on the top-left corner: the square (-5, -5)..(5, 5) is black except the corner.
    corner = crop_face(image, Box(-5, -5, 10, 10), 10, margin=0.0)
    assert np.array_equal(corner[5:, 5:], image[:5, :5])
    assert not corner[:5].any() and not corner[:, :5].any()
    # A wide box gives a square on its longer side; resizing 20 -> 10 averages 2 x 2 blocks.
    wide = crop_face(image, Box(20, 15, 20, 10), 10, margin=0.0)
    expected = image[10:30, 20:40].reshape(10, 2, 10, 2, 3).mean(axis=(1, 3))
    assert np.abs(wide.astype(float) - expected).max() <= 0.5
    assert not crop_face(image, Box(500, 500, 10, 10), 8).any()


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each coded video frame, in file order."""
    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(video=0) if p.size]


def test_truncated_video_names_file_and_frame(face_video, tmp_path):
    frames, _ = face_video_frames(n_face=20, n_blank=0)
    # faststart puts the index first, so a cut file still opens and breaks part-way.
    whole = write_video(tmp_path / "whole.mp4", frames, faststart=True)
    spans = packet_spans(whole)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: spans[12][0] + spans[12][1] // 2])  # inside frame 13
    decoded = []
    with pytest.raises(InputError, match=r"cut\.mp4: .*truncated, decoding broke at frame 13"):
        decoded.extend(iter_frames(cut))
    assert len(decoded) <= 12
    boundary = tmp_path / "boundary.mp4"
    boundary.write_bytes(whole.read_bytes()[: spans[15][0]])  # frames 1-15 whole, nothing after
    with pytest.raises(InputError, match=r"boundary\.mp4: .*ends at frame 15 of the 20"):
        list(iter_frames(boundary))
    # Without faststart the index sits at the end: cutting it makes the file unreadable.
    tail_cut = tmp_path / "tail.mp4"
    tail_cut.write_bytes(face_video[0].read_bytes()[:-2000])
    with pytest.raises(InputError, match=r"tail\.mp4: not a readable video"):
        list(iter_frames(tail_cut))


def test_non_video_empty_and_missing_files_are_input_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(InputError, match=r"notes\.mp4: not a readable video"):
        probe_video(text)
    with pytest.raises(InputError, match=r"notes\.mp4"):
        next(iter_frames(text))
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as container:  # header only, no frame ever written
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = 64, 64
        container.start_encoding()
    for read in (probe_video, lambda p: next(iter_frames(p))):
        with pytest.raises(InputError, match=r"empty\.mp4: the file holds no video stream"):
            read(empty)
    with pytest.raises(InputError, match=r"absent\.mp4: no such video file"):
        probe_video(tmp_path / "absent.mp4")


def test_missing_cascade_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(InputError, match=r"opencv-python-headless<5"):
        HaarDetector()
    monkeypatch.delattr(faces.cv2, "data")
    with pytest.raises(InputError, match=r"opencv-python-headless<5"):
        HaarDetector()


def test_jpeg_round_trip_keeps_the_colour_order(tmp_path: Path):
    """`write_jpeg` takes RGB, as `read_image` gives it: a red square comes back red."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[8:24, 8:24] = (220, 30, 30)
    write_jpeg(tmp_path / "red.jpg", rgb, quality=95)
    back = read_image(tmp_path / "red.jpg")
    assert back.shape == rgb.shape
    inside = (slice(11, 21), slice(11, 21))  # away from the edges, which chroma subsampling blurs
    assert np.abs(back[inside].astype(int) - rgb[inside]).max() <= 12
    assert back[16, 16, 0] > 180 and back[16, 16, 2] < 70
