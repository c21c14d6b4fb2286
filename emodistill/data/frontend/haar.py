"""OpenCV's Haar frontal-face cascade (shipped in opencv-python-headless < 5) as a face detector:
boxes only, no landmarks (the tracker's O-net places them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.frontend.face import Box, Face


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
class HaarDetector:
    """The Haar cascade on a downscaled, equalised grey frame."""

    name = "haar"
    # File in cv2.data.haarcascades. On faces pasted over natural photos at 640x480, "alt2"
    # found 80/80 where "default" found 63/80, and ran about 1.5x faster.
    cascade: str = "haarcascade_frontalface_alt2.xml"
    detect_size: int = 320  # longest side of the grey image searched (frames are never upscaled)
    scale_factor: float = 1.15  # step between search scales (1.1: ~25% slower, no more faces found)
    min_neighbors: int = 5  # overlapping hits needed to accept a face (higher: fewer false faces)
    min_size: int = 24  # smallest face side searched, in pixels of the downscaled image
    # Candidates with fewer overlapping hits than this fraction of the best-supported face are
    # dropped: weak false faces (a helmet rim, a collar) are often bigger than the real one.
    support: float = 0.5
    # The cascade's box (brows to chin) scaled by this around its centre and moved down by
    # `box_shift` x its side, so that it frames the face as MTCNN's box does, the box the O-net
    # that places the landmarks expects (medians over 83 faces of the
    # astronaut, carphone and lfw_subset).
    box_scale: float = 1.23
    box_shift: float = 0.03
    _classifier: cv2.CascadeClassifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._classifier = _cascade_classifier(self.cascade)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face of an (H, W, 3) uint8 RGB frame, largest first, without landmarks."""
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
            return []
        hits = np.asarray(hits).ravel()
        # Scale back with the ratios actually used, which rounding makes differ per axis.
        sx, sy = width / grey.shape[1], height / grey.shape[0]
        boxes = [Box.from_centre((x + w / 2) * sx, (y + h / 2 + self.box_shift * h) * sy,
                                 w * sx * self.box_scale, h * sy * self.box_scale)
                 for x, y, w, h in faces[hits >= self.support * hits.max()]]
        return [Face(box, None) for box in sorted(boxes, key=lambda b: -b.area)]
