"""Tests for video decoding (upright, by the display matrix), still images, and the detectors on a
face pasted into video frames (emodistill.data.frontend)."""

from __future__ import annotations

import inspect
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from emodistill.core.errors import InputError
from emodistill.data.frontend import Box, iter_frames, probe_video, read_image, write_jpeg
from emodistill.data.frontend.dlib_hog import DlibDetector
from emodistill.data.frontend.haar import HaarDetector
from emodistill.data.frontend.mtcnn import MtcnnDetector

FPS = 25
WIDTH, HEIGHT = 480, 360
# The astronaut's face, located by eye on a grid drawn over skimage.data.astronaut():
# cheeks at x 176 and 272, hairline at y 64, chin at y 160.
ASTRONAUT_FACE = Box(176, 64, 96, 96)
PATCH_ORIGIN = (96, 0)  # (x, y) of the pasted 256 x 256 patch in the astronaut image
N_FACE, N_BLANK = 20, 5


def iou(a: Box, b: Box) -> float:
    return a.iou(b)


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
                audio_seconds: float = 0.0, rotation: int = 0, fps: float = FPS) -> Path:
    """Encode RGB frames as H.264 (and optionally a 440 Hz AAC tone) with PyAV. `rotation`
    (degrees counter-clockwise, a multiple of 90) stores them turned the other way, with the
    display matrix that turns them back, as a phone does."""
    options = {"movflags": "faststart"} if faststart else {}
    turns = rotation // 90
    frames = [np.ascontiguousarray(np.rot90(rgb, -turns)) for rgb in frames]
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
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


@pytest.mark.parametrize("detector_class", [MtcnnDetector, DlibDetector, HaarDetector])
def test_detector_finds_the_pasted_face_and_nothing_on_background(face_video, detector_class):
    path, boxes = face_video
    detector = detector_class()
    for frame, truth in zip(iter_frames(path), boxes, strict=True):
        found = detector.detect(frame.rgb)
        if truth is None:
            assert found == [], f"false face on blank frame {frame.index}"
        else:
            assert len(found) == 1, f"{len(found)} faces on frame {frame.index}"
            assert iou(found[0].box, truth) > 0.5, f"frame {frame.index}: {found[0].box} vs {truth}"


def test_detector_prefers_a_well_supported_face_over_a_weak_larger_one():
    # On the whole astronaut image at 320 px the cascade also fires weakly on the helmet rim,
    # with a box larger than the face; only the face is kept.
    found = HaarDetector().detect(skdata.astronaut())
    assert len(found) == 1 and iou(found[0].box, ASTRONAUT_FACE) > 0.5


def test_a_phone_video_is_decoded_upright(tmp_path):
    frames = [face_frame(k)[0] for k in range(3)]  # (360, 480, 3): landscape
    for rotation in (90, -90, 180):
        path = write_video(tmp_path / f"turned{rotation}.mp4", frames, rotation=rotation)
        with av.open(str(path)) as container:
            stored = container.streams.video[0].codec_context
            assert (stored.width, stored.height) == ((HEIGHT, WIDTH) if rotation % 180 else (WIDTH, HEIGHT))
        info = probe_video(path)
        assert (info.width, info.height, info.rotation) == (WIDTH, HEIGHT, rotation % 360)
        decoded = list(iter_frames(path))
        assert [f.rotation for f in decoded] == [rotation % 360] * 3
        for frame, original in zip(decoded, frames, strict=True):
            assert frame.rgb.shape == original.shape and frame.rgb.flags.c_contiguous
            assert np.abs(frame.rgb.astype(int) - original).mean() < 6  # lossy H.264, upright again
    assert probe_video(write_video(tmp_path / "plain.mp4", frames)).rotation == 0


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
    monkeypatch.delattr(cv2, "data")
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


def _marked_video(path: Path, matrix: list[int]) -> Path:
    """Three 64x48 frames, white on the left quarter and red along the top, stored with `matrix`."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :16] = 255
    image[:8, :] = (255, 0, 0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_matrix(matrix)
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_mirroring_display_matrix_mirrors_and_never_turns_the_picture_upside_down(tmp_path):
    one, w = 1 << 16, 1 << 30

    def looks(matrix: list[int]) -> tuple[tuple[int, int], str, str]:
        rgb = next(iter_frames(_marked_video(tmp_path / "m.mp4", matrix))).rgb
        h, wid = rgb.shape[:2]
        white = {"left": rgb[h // 2, 2], "right": rgb[h // 2, wid - 3], "top": rgb[2, wid // 2],
                 "bottom": rgb[h - 3, wid // 2]}
        red = {"top": rgb[2, wid // 2 + 8], "bottom": rgb[h - 3, wid // 2 + 8], "left": rgb[h // 2 + 8, 2],
               "right": rgb[h // 2 + 8, wid - 3]}
        side_white = next(k for k, v in white.items() if v.min() > 200)
        side_red = next(k for k, v in red.items() if v[0] > 200 and v[1] < 60)
        return (h, wid), side_white, side_red

    # A horizontal mirror (a front camera's): white moves right, red stays on top. The display
    # matrix's angle alone reads 180 degrees, which turned such a video upside down before.
    assert looks([-one, 0, 0, 0, one, 0, 0, 0, w]) == ((48, 64), "right", "top")
    assert looks([one, 0, 0, 0, -one, 0, 0, 0, w]) == ((48, 64), "left", "bottom")
    assert looks([-one, 0, 0, 0, -one, 0, 0, 0, w]) == ((48, 64), "right", "bottom")  # a half turn
    # A quarter turn with a mirror is a transposition: across the main diagonal (FFmpeg's
    # cclock_flip) for c > 0, across the other (clock_flip) for c < 0.
    assert looks([0, one, 0, one, 0, 0, 0, 0, w]) == ((64, 48), "top", "left")
    assert looks([0, -one, 0, -one, 0, 0, 0, 0, w]) == ((64, 48), "bottom", "right")
