"""Voice track of a simulated video: syllables from a glottal source through formant filters.

Loudness and pitch follow arousal, spectral tilt follows arousal and valence; utterances
alternate with silences over room noise, and the same syllables open the rendered mouth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

SAMPLE_RATE = 16_000  # Hz, the rate the audio models read

# Vowels: formants F1, F2, F3 (Hz, adult male) and how far they open the mouth (0..1).
VOWELS = np.array(
    [
        [730, 1090, 2440, 1.00],  # a
        [530, 1840, 2480, 0.60],  # e
        [270, 2290, 3010, 0.25],  # i
        [570, 840, 2410, 0.70],  # o
        [300, 870, 2240, 0.30],  # u
        [660, 1720, 2410, 0.85],  # ae
        [500, 1500, 2500, 0.45],  # schwa
    ]
)
_BANDWIDTHS = (80.0, 100.0, 150.0)  # formant bandwidths, Hz
_FRICATIVE = butter(6, 3500, btype="highpass", fs=SAMPLE_RATE, output="sos")


@dataclass
class SpeechPlan:
    """What one speaker says: syllable timing, vowels and stress, and their voice."""

    start: np.ndarray  # (S,) syllable onsets, seconds
    length: np.ndarray  # (S,) syllable durations, seconds
    vowel: np.ndarray  # (S,) row of VOWELS
    stress: np.ndarray  # (S,) loudness and mouth-opening multiplier 0..1
    decline: np.ndarray  # (S,) pitch offset from the utterance's declination (fraction)
    utterances: list[tuple[float, float]]  # (start, stop) seconds of each utterance
    pitch: float  # speaker's base f0, Hz
    formant_scale: float  # vocal tract: 1.0 adult male, ~1.15 female


def plan_speech(rng: np.random.Generator, seconds: float, free: list[tuple[float, float]] | None = None) -> SpeechPlan:
    """Utterances alternating with silences over `seconds`, optionally only inside `free` spans
    (the other speaker's silences: a conversation takes turns)."""
    talkative = rng.uniform(0.25, 0.9)
    utterances = []
    t = -rng.uniform(0.0, 1.5)
    speaking = rng.random() < talkative
    while t < seconds:
        mean = 1.6 if speaking else 1.5 * (1.0 - talkative) / talkative + 0.2
        length = rng.gamma(3.0, mean / 3.0)
        if speaking:
            utterances.append((max(t, 0.0), min(t + length, seconds)))
        t += length
        speaking = not speaking
    if free is not None:
        utterances = [(max(a, c + 0.15), min(b, d - 0.15)) for a, b in utterances for c, d in free]
    utterances = [(a, b) for a, b in utterances if b - a > 0.15]
    rows = []
    for a, b in utterances:
        t = a
        while t < b - 0.1:
            length = min(rng.uniform(0.13, 0.28), b - t)
            position = (t - a) / max(b - a, 1e-6)  # pitch declines through an utterance
            rows.append(
                (
                    t,
                    length,
                    rng.integers(len(VOWELS)),
                    rng.uniform(0.55, 1.0),
                    0.08 - 0.16 * position + rng.normal(0.0, 0.04),
                )
            )
            t += length + rng.uniform(0.0, 0.05)
    start, length, vowel, stress, decline = np.array(rows, dtype=float).reshape(-1, 5).T
    female = rng.random() < 0.5
    return SpeechPlan(
        start=start,
        length=length,
        vowel=vowel.astype(np.int64),
        stress=stress,
        decline=decline,
        utterances=utterances,
        pitch=float(rng.uniform(170, 240) if female else rng.uniform(90, 140)),
        formant_scale=float(rng.uniform(1.1, 1.2) if female else rng.uniform(0.95, 1.05)),
    )


def _bump(x: np.ndarray) -> np.ndarray:
    """A syllable's opening over its normalised time x in [0, 1]: rise then fall, 0 outside."""
    return np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0.0, 1.0)) ** 0.7, 0.0)


def mouth_opening(plan: SpeechPlan, n_frames: int, fps: float) -> np.ndarray:
    """How far speech opens the mouth at each video frame: (n_frames,) in [0, 1]."""
    times = np.arange(n_frames) / fps
    phase = (times[:, None] - plan.start[None]) / plan.length[None]  # (F, S)
    opening = _bump(phase) * (VOWELS[plan.vowel, 3] * plan.stress)[None]
    return opening.max(axis=1, initial=0.0)


def _glottal_source(f0: np.ndarray) -> np.ndarray:
    """Derivative of a Rosenberg glottal flow pulse train with per-sample pitch f0 (Hz)."""
    phase = np.cumsum(f0 / SAMPLE_RATE) % 1.0
    opening = 0.6
    flow = np.where(
        phase < opening,
        0.5 - 0.5 * np.cos(np.pi * phase / opening),
        np.cos(0.5 * np.pi * (phase - opening) / (1.0 - opening)).clip(0.0),
    )
    return np.diff(flow, prepend=flow[:1])


def _formant_sos(vowel: int, scale: float) -> np.ndarray:
    """Second-order sections: the vowel's three formant resonators in cascade, unit gain at DC."""
    sections = []
    for formant, bandwidth in zip(VOWELS[vowel, :3] * scale, _BANDWIDTHS, strict=True):
        radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
        a1, a2 = -2.0 * radius * np.cos(2.0 * np.pi * formant / SAMPLE_RATE), radius**2
        sections.append([1.0 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.array(sections)


def voice(
    rng: np.random.Generator,
    plan: SpeechPlan,
    valence: np.ndarray,
    arousal: np.ndarray,
    fps: float,
    n_samples: int,
) -> np.ndarray:
    """One speaker's voice (n_samples,) float32, led by the per-frame latent valence and arousal."""
    out = np.zeros(n_samples)
    frame_times = np.arange(len(arousal)) / fps
    for start, length, vowel, stress, decline in zip(
        plan.start, plan.length, plan.vowel, plan.stress, plan.decline, strict=True
    ):
        lo, hi = int(start * SAMPLE_RATE), min(int((start + length) * SAMPLE_RATE), n_samples)
        if hi - lo < 64:
            continue
        times = np.arange(lo, hi) / SAMPLE_RATE
        a = np.interp(times, frame_times, arousal)
        v = np.interp(times, frame_times, valence)
        # Aroused voices: higher, louder, brighter; pleasant ones a little higher and brighter.
        f0 = plan.pitch * 2.0 ** (0.45 * a + 0.08 * v + decline) * (1.0 + 0.01 * rng.standard_normal())
        source = _glottal_source(f0)
        dark = lfilter([0.15], [1.0, -0.85], source)
        bright = np.clip(0.5 + 0.35 * a + 0.15 * v, 0.05, 0.95)
        source = bright * source + (1.0 - bright) * dark + 0.01 * rng.standard_normal(hi - lo)
        sound = sosfilt(_formant_sos(int(vowel), plan.formant_scale), source)
        envelope = _bump((times - start) / length) * stress * 10.0 ** ((8.0 * a - 4.0) / 20.0)
        out[lo:hi] += 8.0 * sound * envelope  # peak about 0.5 at neutral arousal
        if rng.random() < 0.5:  # a fricative consonant leads into the vowel
            burst = int(rng.uniform(0.06, 0.12) * SAMPLE_RATE) // 2
            b0, b1 = max(lo - burst, 0), min(lo + burst, n_samples)
            hiss = sosfilt(_FRICATIVE, rng.standard_normal(b1 - b0))
            out[b0:b1] += 0.08 * stress * hiss * np.hanning(b1 - b0)
    return out


def room_noise(rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """Background: pink-ish noise, sometimes mains hum, at a level drawn per video."""
    white = rng.standard_normal(n_samples)
    noise = lfilter([1.0], [1.0, -0.97], white) * 0.05 + white * 0.3
    noise *= 10.0 ** (rng.uniform(-46, -30) / 20.0) / max(float(np.std(noise)), 1e-9)
    if rng.random() < 0.3:
        hum = 50.0 if rng.random() < 0.5 else 60.0
        t = np.arange(n_samples) / SAMPLE_RATE
        noise += 10.0 ** (rng.uniform(-50, -38) / 20.0) * (
            np.sin(2 * np.pi * hum * t) + 0.5 * np.sin(6 * np.pi * hum * t)
        )
    return noise


def soundtrack(voices: list[np.ndarray], noise: np.ndarray) -> np.ndarray:
    """Mix speakers and room noise into one track (float32, peak at most 0.9)."""
    mix = np.sum(voices, axis=0) + noise if voices else noise
    peak = float(np.abs(mix).max(initial=0.0))
    return (mix * (0.9 / peak if peak > 0.9 else 1.0)).astype(np.float32)
