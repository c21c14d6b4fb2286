"""dlib's HOG frontal-face detector (its model compiled into the `dlib-bin` wheel) as a face
detector: boxes only, no landmarks (the tracker's O-net places them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.frontend.face import Box, Face


def import_dlib():
    """dlib, or None when the wheel is not installed (Haar then stands in)."""
    try:
        import dlib
    except ImportError:
        return None
    return dlib


@dataclass
class DlibDetector:
    """The HOG detector on a contrast-equalised grey frame, searched at a few scales."""

    name = "dlib"
    detect_size: int = 320  # longest side searched at scale 1 (larger frames are downscaled to it)
    # Scales tried in turn until one finds a face. dlib's image pyramid steps by 5/6 from an 80 px
    # window, so the 190 px raw frames of the simulator (faces about 80 px) fell between its
    # levels: (1, 1.25, 1.6) found 96% of them, 1 alone 82%.
    scales: tuple[float, ...] = (1.0, 1.25, 1.6)
    # Below dlib's own 0: on the simulator's frames -0.3 took the rate from 90% to 96% and found
    # no face in 200 non-face pictures (lfw_subset non-faces and photo tiles), as at 0.
    threshold: float = -0.3
    # CLAHE before HOG: dark faces on dark backgrounds have weak gradients (73% -> 90% found on
    # the simulator at threshold 0, no change on lfw_subset).
    clahe_clip: float = 2.0
    # dlib's box (brows to upper lip) scaled by this around its centre and moved down by
    # `box_shift` x its side, so that it frames the face as MTCNN's box does, the box the O-net
    # that places the landmarks expects (medians over 112 faces of the
    # astronaut, carphone and lfw_subset).
    box_scale: float = 1.15
    box_shift: float = -0.04
    _hog: object = field(init=False, repr=False)
    _clahe: cv2.CLAHE = field(init=False, repr=False)

    def __post_init__(self) -> None:
        dlib = import_dlib()
        if dlib is None:
            raise InputError("dlib is not installed (pip install dlib-bin); use --detector mtcnn or haar")
        self._hog = dlib.get_frontal_face_detector()
        self._clahe = cv2.createCLAHE(clipLimit=self.clahe_clip, tileGridSize=(8, 8))

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face of an (H, W, 3) uint8 RGB frame, largest first, without landmarks."""
        height, width = rgb.shape[:2]
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (H, W), C-contiguous
        base = self.detect_size / max(height, width)
        if base < 1.0:
            grey = cv2.resize(grey, None, fx=base, fy=base, interpolation=cv2.INTER_AREA)
        else:
            base = 1.0
        grey = self._clahe.apply(grey)
        for scale in self.scales:
            # dlib reads only C-contiguous arrays correctly: on a padded view (PyAV's frames) its
            # results changed with unrelated memory contents. cv2's outputs are contiguous.
            image = grey if scale == 1.0 else cv2.resize(grey, None, fx=scale, fy=scale,
                                                         interpolation=cv2.INTER_LINEAR)
            rects, scores, _ = self._hog.run(image, 0, self.threshold)
            if rects:
                return self._to_frame(rects, scores, base * scale)
        return []

    def _to_frame(self, rects: list, scores: list[float], scale: float) -> list[Face]:
        """dlib rectangles at `scale` -> Faces in frame pixels, largest first."""
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            w, h = rect.width() / scale, rect.height() / scale
            cx, cy = (rect.left() + rect.width() / 2) / scale, (rect.top() + rect.height() / 2) / scale
            box = Box.from_centre(cx, cy + self.box_shift * h, w * self.box_scale, h * self.box_scale)
            faces.append(Face(box, None, float(score)))
        return sorted(faces, key=lambda face: -face.box.area)
