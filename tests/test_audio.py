"""Tests for audio decoding and the per-frame log-mel windows (emodistill.data.audio)."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest

from emodistill.core.errors import InputError
from emodistill.data import audio

FLOOR = (audio.LOG_FLOOR_DB - audio.LOG_MEL_MEAN_DB) / audio.LOG_MEL_STD_DB  # silence, normalised


def write_video(
    path: Path,
    n_frames: int,
    fps: int,
    tone_hz: float | None = None,
    sample_rate: int = 44100,
    layout: str = "mono",
) -> None:
    """A tiny test video (grey frames), with a sine tone as its audio track if `tone_hz`."""
    container = av.open(str(path), "w")  # every stream is added before anything is muxed
    video = container.add_stream("mpeg4", rate=fps)
    video.width = video.height = 16
    video.pix_fmt = "yuv420p"
    pcm = path.suffix == ".avi"
    if tone_hz is not None:
        sound = container.add_stream("pcm_s16le" if pcm else "aac", rate=sample_rate)
        sound.layout = layout
    for i in range(n_frames):
        image = np.full((16, 16, 3), 8 * i % 256, dtype=np.uint8)
        container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(video.encode())
    if tone_hz is not None:
        channels = 2 if layout == "stereo" else 1
        total = round(sample_rate * n_frames / fps)
        wave = 0.5 * np.sin(2 * np.pi * tone_hz * np.arange(total) / sample_rate)
        for start in range(0, total, 1024):
            chunk = np.tile(wave[start : start + 1024], (channels, 1))  # (channels, T)
            if pcm:
                data, fmt = (chunk * 32767).astype(np.int16).T.reshape(1, -1), "s16"
            else:
                data, fmt = chunk.astype(np.float32), "fltp"
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
            frame.sample_rate, frame.pts = sample_rate, start
            frame.time_base = fractions.Fraction(1, sample_rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    container.close()


def tone(hz: float, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(round(seconds * sample_rate)) / sample_rate)
            ).astype(np.float32)


def test_tone_peaks_in_its_mel_band() -> None:
    # Slaney mel scale, worked by hand: linear below 1 kHz (200/3 Hz per mel), 15 mel at 1 kHz,
    # then 27 mel per log(6.4). 64 bands between 0 and 8 kHz have 66 equally spaced mel points;
    # band b peaks at point b + 1 and falls to zero at its neighbours' peaks.
    mel_top = 15 + 27 * np.log(8000 / 1000) / np.log(6.4)
    centres_hz = np.arange(1, 65) * mel_top / 65 * 200 / 3  # right below 1 kHz only

    def peak_band(hz: float) -> int:
        windows = audio.log_mel_per_frame(tone(hz, 2.0), 16000, n_frames=50, fps=25.0)
        assert windows.shape == (50, 64, 64) and windows.dtype == np.float32
        return int(np.argmax(windows[25].mean(axis=1)))  # band energy over the window

    for band in (5, 12, 20):  # a tone on a band's peak
        assert peak_band(centres_hz[band]) == band
    # 440 Hz lies between the peaks of bands 8 (417.6 Hz) and 9 (464.1 Hz), nearly halfway.
    assert centres_hz[8] < 440 < centres_hz[9]
    assert peak_band(440.0) in (8, 9)


def test_window_is_centred_on_its_frame() -> None:
    # Silence with a 50 ms burst at 1.00-1.05 s. Column m of frame k is centred at
    # k / fps + (m - 32) * 10 ms and its 25 ms window reaches 12.5 ms either side.
    samples = np.zeros(32000, dtype=np.float32)
    samples[16000:16800] = tone(1000.0, 0.05)
    windows = audio.log_mel_per_frame(samples, 16000, n_frames=20, fps=10.0)
    for frame, first in ((10, 32), (9, 42)):  # the burst starts at column `first`
        loud = np.flatnonzero((windows[frame] > FLOOR + 1e-3).any(axis=0))
        assert loud.min() >= first - 2 and loud.max() <= first + 7
        assert {first, first + 4} <= set(loud.tolist())


def test_ends_are_padded_with_silence() -> None:
    windows = audio.log_mel_per_frame(tone(1000.0, 1.0), 16000, n_frames=10, fps=10.0)
    column_max = windows.max(axis=1)  # (10, 64)
    # Frame 0 at t = 0: columns 0..31 lie before the signal.
    np.testing.assert_allclose(column_max[0, :32], FLOOR)
    assert (column_max[0, 32:] > FLOOR + 1).all()
    # Frame 9 at t = 0.9 s: columns past 1.0 s (m >= 43) lie after the signal.
    assert (column_max[9, :42] > FLOOR + 1).all()
    np.testing.assert_allclose(column_max[9, 43:], FLOOR)


def test_selected_frames_equal_the_full_computation() -> None:
    samples = tone(700.0, 1.0)
    full = audio.log_mel_per_frame(samples, 16000, n_frames=25, fps=25.0)
    some = audio.log_mel_per_frame(samples, 16000, n_frames=25, fps=25.0, frames=np.array([3, 17]))
    np.testing.assert_array_equal(some, full[[3, 17]])


@pytest.mark.parametrize(("name", "layout"), [("tone.mp4", "stereo"), ("tone.avi", "mono")])
def test_decode_audio_gives_16k_mono_float(tmp_path: Path, name: str, layout: str) -> None:
    path = tmp_path / name
    write_video(path, n_frames=25, fps=25, tone_hz=440.0, layout=layout)
    samples = audio.decode_audio(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size - 16000) < 0.1 * 16000  # 1 s, give or take the codec's padding
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / samples.size - 440.0) < 3.0


def test_video_without_audio_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    write_video(path, n_frames=5, fps=25)
    with pytest.raises(InputError, match=r"silent\.mp4 has no audio track.*--modality v"):
        audio.decode_audio(path)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video" * 50)
    with pytest.raises(InputError, match=r"broken\.mp4 could not be opened as a video"):
        audio.decode_audio(path)
