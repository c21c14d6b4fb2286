"""Audio for the audio-visual model: PyAV decoding to 16 kHz mono, and one log-mel window per frame.

For each video frame a 0.64 s window centred on it, 64 mel bands x 64 frames.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.frontend.decode import UNREADABLE_RAW_VIDEO, open_container

SAMPLE_RATE = 16000  # Hz, mono
N_MELS = 64  # mel bands
WINDOW_COLUMNS = 64  # spectrogram columns per video frame: 0.64 s at a 10 ms hop
HOP_SECONDS = 0.010  # one spectrogram column every 10 ms
WIN_SECONDS = 0.025  # 25 ms analysis window, as in the authors' code
LOG_FLOOR_DB = -100.0  # power floor 1e-10: silence and the zero padding at the ends
# Fixed normalisation (never per-clip statistics, so a quiet clip stays quiet): mean and standard
# deviation in dB of 4 Hz-modulated pink noise at -26 dBFS with 20% pauses at -70 dBFS (a
# stand-in for conversational speech), measured with the settings above: -32.3 dB and 16.5 dB.
LOG_MEL_MEAN_DB = -32.0
LOG_MEL_STD_DB = 16.0


def decode_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio track of `path` as mono float32 samples at `sample_rate` Hz, shape (T,)."""
    with open_container(path, UNREADABLE_RAW_VIDEO) as container:
        if not container.streams.audio:
            raise InputError(
                f"{path} has no audio track; the audio-visual model needs one (use --modality v)"
            )
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except av.error.FFmpegError as err:
            raise InputError(
                f"{path} is corrupt or truncated: decoding its audio failed ({err})"
            ) from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def log_mel_per_frame(
    samples: np.ndarray,
    sample_rate: int,
    n_frames: int,
    fps: float,
    frames: np.ndarray | None = None,
) -> np.ndarray:
    """Mono samples -> (n_frames, 64 mel bands, 64 columns) float32, one window per video frame.

    Frame k is at k / fps seconds; its window holds the 64 columns centred there (columns are
    10 ms apart); columns before the start or after the end of the signal are silence. The mel
    spectrogram is computed once on the whole signal and the windows are slices of it.
    `frames` (M,) picks the frame indices to return, (M, 64, 64) (default: all n_frames).
    """
    import librosa  # about a second to import; visual-only runs never need it

    hop = round(sample_rate * HOP_SECONDS)
    win = round(sample_rate * WIN_SECONDS)
    n_fft = 1 << (win - 1).bit_length()  # 512 at 16 kHz
    signal = np.asarray(samples, dtype=np.float32)
    if signal.size < n_fft:
        signal = np.pad(signal, (0, n_fft - signal.size))
    # center=True: column j is centred on sample j * hop.
    power = librosa.feature.melspectrogram(
        y=signal, sr=sample_rate, n_fft=n_fft, hop_length=hop, win_length=win, n_mels=N_MELS
    )  # (64, C)
    log_mel = 10.0 * np.log10(np.maximum(power, 10.0 ** (LOG_FLOOR_DB / 10.0)))
    half = WINDOW_COLUMNS // 2
    frames = np.arange(n_frames) if frames is None else np.asarray(frames)  # (M,)
    centres = np.rint(frames / fps * sample_rate / hop).astype(np.int64)  # (M,)
    right = max(0, int(centres.max(initial=0)) + half - log_mel.shape[1])
    padded = np.pad(log_mel, ((0, 0), (half, right)), constant_values=LOG_FLOOR_DB)
    # padded column c + half is log_mel column c, so frame k covers padded[:, centres[k] + 0..63].
    columns = centres[:, None] + np.arange(WINDOW_COLUMNS)  # (M, 64)
    windows = padded[:, columns].transpose(1, 0, 2)  # (M, 64 mel, 64 columns)
    return ((windows - LOG_MEL_MEAN_DB) / LOG_MEL_STD_DB).astype(np.float32)


def silence(n: int) -> np.ndarray:
    """Spectrograms of silence (the log-mel floor), shape (n, 64, 64), normalised as
    `log_mel_per_frame` normalises: what an audio-visual model hears where there is no sound
    (images, crop folders, OOD images in evaluation and in predict alike)."""
    value = (LOG_FLOOR_DB - LOG_MEL_MEAN_DB) / LOG_MEL_STD_DB
    return np.full((n, N_MELS, WINDOW_COLUMNS), value, dtype=np.float32)
