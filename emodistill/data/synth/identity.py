"""Who a synthetic face belongs to and where it is: an identity's traits (face shape, skin, hair,
eyes, glasses) drawn at random, and the head pose of one frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# BGR, light to dark
_SKIN = np.array([[200, 222, 250], [170, 200, 240], [140, 180, 225], [110, 150, 200], [80, 115, 170],
                  [60, 90, 140], [45, 65, 105]], dtype=np.float64)
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 70, 110], [60, 110, 170], [150, 160, 170],
                  [30, 30, 35], [50, 50, 60]], dtype=np.float64)
_IRIS = np.array([[30, 50, 80], [40, 70, 110], [130, 110, 60], [80, 120, 80], [25, 35, 45]], dtype=np.float64)
Colour = tuple[float, float, float]


@dataclass(frozen=True)
class Identity:
    """How one synthetic person looks; lengths are in units of half the face width."""

    skin: Colour  # BGR skin tone
    hair: Colour  # BGR hair and brow colour
    iris: Colour  # BGR iris colour
    clothes: Colour  # BGR shirt colour
    head_height: float  # half-height of the head ellipsoid
    jaw_taper: float  # how much narrower the chin is than the cheeks (0..1)
    eye_spacing: float  # eye centre distance from the midline
    eye_width: float  # half-width of an eye
    eye_open: float  # half-height of an open eye
    brow_y: float  # brow height (negative is up)
    brow_thickness: float  # brow thickness at its inner end
    nose_y: float  # height of the nostrils
    nose_width: float  # half-width of the nose wings
    mouth_y: float  # height of the closed lips' meeting line
    mouth_width: float  # half-width of the relaxed mouth
    lip_thickness: float  # upper lip height (the lower lip is a third thicker)
    hairstyle: int  # 0 shaved, 1 short, 2 long
    hairline: float  # forehead hairline height
    glasses: int  # 0 none, 1 round, 2 rectangular frames
    frame_colour: Colour  # BGR colour of the glasses' frames


@dataclass(frozen=True)
class Pose:
    """Where and how the head appears on the canvas."""

    x: float  # head centre, canvas pixels
    y: float  # head centre, canvas pixels
    scale: float  # canvas pixels per face unit (half the face width)
    yaw: float = 0.0  # radians, positive turns the nose to the image's right
    pitch: float = 0.0  # radians, positive tilts the nose up
    roll: float = 0.0  # radians, in-plane rotation


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw one person: face shape, skin tone, hair, eyes, glasses."""
    tone = rng.uniform(0, len(_SKIN) - 1)  # anywhere between two neighbouring palette tones
    skin = np.array([np.interp(tone, np.arange(len(_SKIN)), channel) for channel in _SKIN.T])
    skin = skin * rng.uniform(0.95, 1.05, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    glasses = int(rng.choice(3, p=[0.72, 0.14, 0.14]))
    return Identity(
        skin=_colour(skin),
        hair=_colour(hair),
        iris=_colour(_IRIS[rng.integers(len(_IRIS))]),
        clothes=_colour(rng.uniform(30, 220, 3)),
        head_height=float(rng.uniform(1.22, 1.42)),
        jaw_taper=float(rng.uniform(0.25, 0.5)),
        eye_spacing=float(rng.uniform(0.34, 0.41)),
        eye_width=float(rng.uniform(0.15, 0.19)),
        eye_open=float(rng.uniform(0.065, 0.09)),
        brow_y=float(rng.uniform(-0.36, -0.29)),
        brow_thickness=float(rng.uniform(0.045, 0.075)),
        nose_y=float(rng.uniform(0.33, 0.42)),
        nose_width=float(rng.uniform(0.1, 0.14)),
        mouth_y=float(rng.uniform(0.66, 0.74)),
        mouth_width=float(rng.uniform(0.26, 0.32)),
        lip_thickness=float(rng.uniform(0.06, 0.09)),
        hairstyle=int(rng.choice(3, p=[0.15, 0.5, 0.35])),
        hairline=float(rng.uniform(-0.85, -0.65)),
        glasses=glasses,
        frame_colour=_colour(rng.uniform(10, 90, 3) if rng.random() < 0.7 else rng.uniform(60, 200, 3)),
    )


def _colour(bgr: np.ndarray) -> Colour:
    b, g, r = np.clip(bgr, 0, 255)
    return float(b), float(g), float(r)
