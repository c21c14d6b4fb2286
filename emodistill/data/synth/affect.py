"""Latent affect of one simulated subject and the known laws its labels are drawn from.

Expression episodes (onset, apex, offset) of a category drive valence/arousal and the 12 AU
intensities; `label_truth` gives the exact per-frame label distributions, `sample_labels` draws
the annotations from them, so uncertainty estimates can be scored against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.special import expit, log_softmax, ndtr

from emodistill.data.synth.signals import coherent_normals, ou_process, smoothstep
from emodistill.tasks import AU, EXPR, VA, VA_EDGES

# AU order AU1, AU2, AU4, AU6, AU7, AU10, AU12, AU15, AU23, AU24, AU25, AU26 (tasks.AU.names).
# Apex AU pattern of each expression category (FACS prototypes; AU5, AU9, AU20 are not rendered).
PROTOTYPES = np.array(
    [
        [0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00],  # Neutral
        [0.00, 0.00, 0.95, 0.00, 0.80, 0.30, 0.00, 0.00, 0.75, 0.70, 0.20, 0.00],  # Anger
        [0.00, 0.00, 0.55, 0.20, 0.50, 0.95, 0.00, 0.60, 0.00, 0.00, 0.35, 0.00],  # Disgust
        [0.85, 0.60, 0.60, 0.00, 0.40, 0.00, 0.00, 0.00, 0.00, 0.00, 0.70, 0.50],  # Fear
        [0.00, 0.00, 0.00, 0.85, 0.50, 0.45, 0.95, 0.00, 0.00, 0.00, 0.60, 0.15],  # Happiness
        [0.75, 0.00, 0.60, 0.00, 0.20, 0.00, 0.00, 0.55, 0.00, 0.20, 0.00, 0.00],  # Sadness
        [0.90, 0.90, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.85, 0.70],  # Surprise
    ]
)  # (7, 12)
# Valence/arousal the category moves the subject towards at apex (circumplex positions).
PROTOTYPE_VA = np.array(
    [
        [0.00, 0.00],
        [-0.60, 0.65],
        [-0.60, 0.25],
        [-0.50, 0.60],
        [0.60, 0.35],
        [-0.55, -0.35],
        [0.25, 0.65],
    ]
)  # (7, 2)
# "Other", the eighth class of the 2022+ releases: an expression outside the six basic ones. Its
# own state here (contempt-like: a lip-corner pull with pressed lips and a lowered brow, mildly
# negative), so the oracle knows it as a class of its own. It is frequent in those releases
# (the frames relabelled from a basic expression to Other, for one), hence its episode weight.
OTHER_PROTOTYPE = np.array([0.00, 0.30, 0.55, 0.00, 0.45, 0.00, 0.55, 0.00, 0.55, 0.50, 0.00, 0.00])
OTHER_VA = np.array([-0.15, 0.15])
OTHER_EPISODE_WEIGHT = 0.25


@dataclass(frozen=True)
class AffectConfig:
    """Episode statistics and label laws.

    The episode weights and AU thresholds were tuned by simulating 1,500 subjects of 120 frames
    so that the true label marginals lie within about 20% of tasks.PAPER_AU_POSITIVE_RATE and
    tasks.PAPER_EXPR_RATE (the imbalance of paper Appendix A).
    """

    # How often each category starts a segment (Neutral, Anger, ..., Surprise).
    episode_weight: tuple[float, ...] = (0.255, 0.046, 0.009, 0.018, 0.375, 0.197, 0.10)
    episode_seconds: float = 1.8  # mean length of an expression episode
    neutral_seconds: float = 1.4  # mean length of a neutral stretch
    # AU intensity at which the AU is annotated present half of the time, per AU.
    au_threshold: tuple[float, ...] = (
        0.50,  # AU1
        0.57,  # AU2
        0.32,  # AU4
        0.47,  # AU6
        0.38,  # AU7
        0.33,  # AU10
        0.38,  # AU12
        0.45,  # AU15
        0.41,  # AU23
        0.40,  # AU24
        0.36,  # AU25
        0.40,  # AU26
    )
    au_temperature: float = 0.05  # width of the ambiguous band around each threshold
    expr_temperature: float = 0.35  # softness of the category vs prototype-distance law
    expr_apex: float = 0.75  # prototypes are compared at this fraction of full intensity
    # Distance weight per cue: 12 AUs (speech moves AU25/26, so annotators weigh them less), V, A.
    expr_cue_weight: tuple[float, ...] = (1.0,) * 10 + (0.4, 0.4, 1.5, 1.5)
    va_noise: tuple[float, float] = (0.07, 0.07)  # VA label std: at apex, plus this much at rest
    label_coherence: float = 0.9  # frame-to-frame correlation of annotator noise at 30 fps

    @property
    def expressions(self) -> int:
        """7 (the 2021 classes) or 8 (with Other): one episode weight per class."""
        return len(self.episode_weight)

    @classmethod
    def for_expressions(cls, count: int) -> AffectConfig:
        """The default laws for the 7 classes of 2021, or the 8 of 2022 on (Other added)."""
        base = cls()
        return base if count == len(PROTOTYPES) else cls(episode_weight=(*base.episode_weight, OTHER_EPISODE_WEIGHT))

    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """Apex AU pattern (E, 12) and valence/arousal (E, 2) of each of the config's classes."""
        if self.expressions == len(PROTOTYPES):
            return PROTOTYPES, PROTOTYPE_VA
        return np.vstack([PROTOTYPES, OTHER_PROTOTYPE]), np.vstack([PROTOTYPE_VA, OTHER_VA])


@dataclass
class Temperament:
    """Traits of one subject: resting face, mood and which emotions they show."""

    rest: np.ndarray  # (12,) AU intensity of the resting face (squint, parted lips, ...)
    mood: np.ndarray  # (2,) valence, arousal baseline
    preference: np.ndarray  # (E,) multiplier on the episode weight of each category
    expressiveness: float  # scale of episode apex intensities


@dataclass
class AffectTrack:
    """Per-frame latent state of one subject."""

    category: np.ndarray  # (F,) int, current episode's category (0 = Neutral)
    envelope: np.ndarray  # (F,) episode intensity 0..1 (onset, apex, offset)
    valence: np.ndarray  # (F,) latent valence in [-1, 1]
    arousal: np.ndarray  # (F,) latent arousal in [-1, 1]
    au: np.ndarray  # (F, 12) AU intensities 0..1 as rendered
    cue: np.ndarray  # (F, 14) expressive AU movement and VA shift, what annotators judge


def random_temperament(rng: np.random.Generator, expressions: int = len(PROTOTYPES)) -> Temperament:
    """Draw one subject's traits, for `expressions` classes."""
    rest = np.zeros(AU.n_logits)
    # Habits of the resting face (a squint, a raised lip, parted lips) keep AU7, AU10 and AU25
    # common, as in Aff-wild2: (share of people with the habit, its intensity range).
    habits = {"AU7": (0.55, 0.0, 0.55), "AU10": (0.4, 0.0, 0.5), "AU25": (0.35, 0.3, 0.6)}
    for name, (share, low, high) in habits.items():
        habit = rng.random() < share
        rest[AU.names.index(name)] = rng.uniform(low, high) if habit else rng.uniform(0.0, 0.15)
    rest[AU.names.index("AU6")] = rng.uniform(0.0, 0.3)
    mood = np.array([rng.normal(0.05, 0.15), rng.normal(0.1, 0.12)])
    return Temperament(
        rest=rest,
        mood=mood,
        preference=rng.gamma(2.0, 0.5, size=expressions),
        expressiveness=float(rng.uniform(0.7, 1.0)),
    )


def _segments(
    rng: np.random.Generator, n: int, fps: float, weights: np.ndarray, config: AffectConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Category (n,) and envelope (n,) of a semi-Markov chain of neutral stretches and episodes."""
    category = np.zeros(n, dtype=np.int64)
    envelope = np.zeros(n)
    t = -rng.uniform(0.0, 2.0 * config.episode_seconds * fps)  # start inside a segment
    while t < n:
        k = int(rng.choice(len(weights), p=weights))
        mean = config.neutral_seconds if k == 0 else config.episode_seconds
        length = rng.gamma(4.0, mean / 4.0) * fps
        lo, hi = max(int(np.ceil(t)), 0), min(int(np.ceil(t + length)), n)
        if hi > lo:
            category[lo:hi] = k
            if k:
                phase = (np.arange(lo, hi) - t) / length  # 0..1 through the episode
                onset, offset = rng.uniform(0.15, 0.35, size=2)
                ramp = smoothstep(phase / onset) * smoothstep((1.0 - phase) / offset)
                envelope[lo:hi] = rng.uniform(0.55, 1.0) * ramp
        t += length
    return category, envelope


def simulate_affect(
    rng: np.random.Generator,
    n: int,
    fps: float,
    temperament: Temperament,
    mouth: np.ndarray,
    config: AffectConfig | None = None,
) -> AffectTrack:
    """Latent state of one subject for n frames; `mouth` (n,) is speech mouth opening 0..1."""
    config = config or AffectConfig()
    weights = np.asarray(config.episode_weight) * temperament.preference
    category, envelope = _segments(rng, n, fps, weights / weights.sum(), config)
    envelope = envelope * temperament.expressiveness
    # Each episode shows its prototype with a little per-AU variation; drift keeps faces alive.
    prototypes, prototype_va = config.prototypes()
    jitter = rng.uniform(0.8, 1.15, size=(config.expressions, AU.n_logits))
    expressive = envelope[:, None] * prototypes[category] * jitter[category]  # (n, 12)
    expressive = expressive + ou_process(rng, n, 0.04, 0.5 * fps, AU.n_logits)
    speech = np.zeros((n, AU.n_logits))
    speech[:, AU.names.index("AU25")] = 0.85 * mouth
    speech[:, AU.names.index("AU26")] = 0.6 * mouth**2  # only wide vowels drop the jaw
    au = np.clip(temperament.rest + expressive + speech, 0.0, 1.0)  # (n, 12)

    shift = envelope[:, None] * prototype_va[category] + ou_process(rng, n, 0.08, 1.5 * fps, 2)
    latent = temperament.mood + shift  # (n, 2)
    # Talking raises arousal: half a second of speech activity around each frame.
    latent[:, 1] += 0.2 * uniform_filter1d(mouth, round(0.5 * fps), mode="nearest")
    latent = np.clip(latent, -0.98, 0.98)
    return AffectTrack(
        category=category,
        envelope=envelope,
        valence=latent[:, 0],
        arousal=latent[:, 1],
        au=au,
        cue=np.concatenate([np.clip(expressive, 0.0, 1.0), latent - temperament.mood], axis=1),
    )


def va_bin_probs(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """P(each of the 20 bins) of N(mean, std) clipped to [-1, 1]: (F,) -> (F, 20).

    Mass beyond +/-1 lands in the end bins because a clipped label is -1 or 1 (tasks.va_to_bin).
    """
    edges = VA_EDGES.copy()
    edges[0], edges[-1] = -np.inf, np.inf
    cdf = ndtr((edges[None, :] - mean[:, None]) / std[:, None])  # (F, 21)
    return np.diff(cdf, axis=1)


def label_truth(track: AffectTrack, config: AffectConfig | None = None) -> dict[str, np.ndarray]:
    """The true per-frame label distributions (float32): AU (F, 12), EXPR (F, E), VA (F, 40),
    plus valence_mean, arousal_mean and va_std (F,) of the Gaussian VA label law."""
    config = config or AffectConfig()
    au = expit((track.au - np.asarray(config.au_threshold)) / config.au_temperature)
    prototypes = config.expr_apex * np.concatenate(config.prototypes(), axis=1)  # (E, 14)
    gap = track.cue[:, None, :] - prototypes[None]  # (F, E, 14)
    distance = (gap**2 * np.asarray(config.expr_cue_weight)).sum(-1)  # (F, E)
    expr = np.exp(log_softmax(-distance / config.expr_temperature, axis=1))
    std = config.va_noise[0] + config.va_noise[1] * (1.0 - track.envelope)
    va = np.concatenate([va_bin_probs(track.valence, std), va_bin_probs(track.arousal, std)], axis=1)
    return {
        AU.name: au.astype(np.float32),
        EXPR.name: expr.astype(np.float32),
        VA.name: va.astype(np.float32),
        "valence_mean": track.valence.astype(np.float32),
        "arousal_mean": track.arousal.astype(np.float32),
        "va_std": std.astype(np.float32),
    }


def sample_labels(
    truth: dict[str, np.ndarray], rng: np.random.Generator, config: AffectConfig | None = None
) -> dict[str, np.ndarray]:
    """Annotations drawn from the truth: AU (F, 12) 0/1 float32, EXPR (F,) int64, VA (F, 2) float32.

    Every frame's label follows its true law exactly; the annotator noise is coherent in time
    (Gaussian copula), so labels do not flicker frame to frame.
    """
    config = config or AffectConfig()
    rho = config.label_coherence
    n = truth[AU.name].shape[0]
    uniform = ndtr(coherent_normals(rng, n, rho, AU.n_logits + 1))  # (F, 13) uniforms
    au = (uniform[:, : AU.n_logits] < truth[AU.name]).astype(np.float32)
    cumulative = np.cumsum(truth[EXPR.name].astype(np.float64), axis=1)  # (F, E)
    cumulative /= cumulative[:, -1:]
    expr = (uniform[:, -1:] >= cumulative[:, :-1]).sum(axis=1).astype(np.int64)
    mean = np.stack([truth["valence_mean"], truth["arousal_mean"]], axis=1)  # (F, 2)
    va = np.clip(mean + truth["va_std"][:, None] * coherent_normals(rng, n, rho, 2), -1.0, 1.0)
    return {AU.name: au, EXPR.name: expr, VA.name: va.astype(np.float32)}
