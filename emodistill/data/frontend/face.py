"""A face in a frame as every part of the front end passes it on: its box, its five landmarks and
how sure the detector was."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The five landmarks, in this order everywhere (rows of `Face.landmarks`, the output columns, a
# landmarks file). "Left" and "right" are as seen in the image, not the person's own.
LANDMARKS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
LANDMARK_COLUMNS = tuple(f"{name}_{axis}" for name in LANDMARKS for axis in ("x", "y"))


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

    @property
    def area(self) -> float:
        return self.w * self.h

    @classmethod
    def from_centre(cls, cx: float, cy: float, w: float, h: float) -> Box:
        return cls(cx - w / 2, cy - h / 2, w, h)

    def iou(self, other: Box) -> float:
        """Intersection over union of two boxes (0 when they do not touch)."""
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True, eq=False)
class Face:
    """One face found in a frame."""

    box: Box
    landmarks: np.ndarray | None  # (5, 2) x, y in frame pixels, LANDMARKS order; None: not known
    score: float = 1.0  # the detector's confidence: a probability for MTCNN, else 1
