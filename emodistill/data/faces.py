"""Faces in one picture: dlib's HOG and OpenCV's Haar detectors behind one interface, eye centres
from a dlib landmark model when one is given, and the aligned (by the eyes) or square face crop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from emodistill.core.errors import InputError

DETECTORS = ("dlib", "haar")
# Per frame, dlib (as tuned below) found a face in 93.6% of the default simulator's 12,899 raw
# video frames, Haar in 51.3%; in 96 of skimage's 100 lfw_subset faces, Haar in 74; in under
# half of Haar's time on both (README).
DEFAULT_DETECTOR = "dlib"
# Enlargement of the detector's box on each side, as a fraction of the box size: Haar boxes run
# from the forehead to the chin, while Aff-wild2's crops show the whole face plus some context
# (the crop side is 1.5x the box).
CROP_MARGIN = 0.25
# Where an aligned crop puts the eye centres, as fractions of its side: the mean of the
# simulator's aligned training crops (0.284 apart, eye line at 0.426 of the side, 227 crops), so
# aligned crops frame the face as the crops the models were trained on.
EYE_DISTANCE = 0.28  # between the two eye centres
EYE_HEIGHT = 0.43  # of the eye line, from the top

Eyes = tuple[tuple[float, float], tuple[float, float]]  # (x, y) of the eye on the image's left, right


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

    @classmethod
    def from_centre(cls, cx: float, cy: float, w: float, h: float) -> Box:
        return cls(cx - w / 2, cy - h / 2, w, h)


class Detector(Protocol):
    """Anything that finds the main face of an (H, W, 3) uint8 RGB picture."""

    name: str

    def detect(self, rgb: np.ndarray) -> Box | None: ...


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
    """OpenCV's Haar frontal-face cascade on a downscaled grey frame; keeps the largest face."""

    name = "haar"
    # File in cv2.data.haarcascades. On faces pasted over natural photos at 640x480, "alt2"
    # found 80/80 where "default" found 63/80, and ran about 1.5x faster.
    cascade: str = "haarcascade_frontalface_alt2.xml"
    detect_size: int = 320  # longest side of the grey image searched (frames are never upscaled)
    scale_factor: float = 1.15  # step between search scales (1.1: ~25% slower, no more faces found)
    min_neighbors: int = 5  # overlapping hits needed to accept a face (higher: fewer false faces)
    min_size: int = 24  # smallest face side searched, in pixels of the downscaled image
    # Candidates with fewer overlapping hits than this fraction of the best-supported face are
    # dropped before taking the largest: weak false faces (a helmet rim, a collar) are often
    # bigger than the real one.
    support: float = 0.5
    _classifier: cv2.CascadeClassifier = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._classifier = _cascade_classifier(self.cascade)

    def detect(self, rgb: np.ndarray) -> Box | None:
        """The largest face in an (H, W, 3) uint8 RGB frame, or None."""
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
            return None
        hits = np.asarray(hits).ravel()
        confident = faces[hits >= self.support * hits.max()]
        x, y, w, h = max(confident, key=lambda f: f[2] * f[3])
        # Scale back with the ratios actually used, which rounding makes differ per axis.
        sx, sy = width / grey.shape[1], height / grey.shape[0]
        return Box(float(x * sx), float(y * sy), float(w * sx), float(h * sy))


def _import_dlib():
    """dlib, or None when the wheel is not installed (Haar then stands in)."""
    try:
        import dlib
    except ImportError:
        return None
    return dlib


@dataclass
class DlibDetector:
    """dlib's HOG frontal-face detector (model compiled into the `dlib-bin` wheel) on a
    contrast-equalised grey frame, searched at a few scales; keeps the largest face."""

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
    # dlib's box (brows to upper lip) is scaled by this around its centre and moved down by
    # `box_shift` x its height, so that the crop (1.5x the box) frames the face as the
    # simulator's aligned training crops do: matched to them in 103 raw frames, their side was
    # 1.41x dlib's box (0.94 x 1.5) and their centre 0.06 x its height higher.
    box_scale: float = 0.94
    box_shift: float = -0.06
    _hog: object = field(init=False, repr=False)
    _clahe: cv2.CLAHE = field(init=False, repr=False)

    def __post_init__(self) -> None:
        dlib = _import_dlib()
        if dlib is None:
            raise InputError("dlib is not installed (pip install dlib-bin); use --detector haar")
        self._hog = dlib.get_frontal_face_detector()
        self._clahe = cv2.createCLAHE(clipLimit=self.clahe_clip, tileGridSize=(8, 8))

    def detect(self, rgb: np.ndarray) -> Box | None:
        """The largest face in an (H, W, 3) uint8 RGB frame, or None."""
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
        return None

    def _to_frame(self, rects: list, scores: list[float], scale: float) -> Box:
        """dlib rectangles at `scale` -> the chosen face as a Box in frame pixels."""
        # Faces above dlib's own threshold come first; the largest of them is the subject.
        confident = [r for r, s in zip(rects, scores, strict=True) if s >= 0] or list(rects)
        rect = max(confident, key=lambda r: r.width() * r.height())
        w, h = rect.width() / scale, rect.height() / scale
        cx, cy = (rect.left() + rect.width() / 2) / scale, (rect.top() + rect.height() / 2) / scale
        return Box.from_centre(cx, cy + self.box_shift * h, w * self.box_scale, h * self.box_scale)


def make_detector(name: str | None = None, log: Callable[[str], None] = print) -> Detector:
    """The detector called `name` (default DEFAULT_DETECTOR); dlib falls back to Haar with a note
    when it is not installed. `prepare` and `predict` both build theirs here."""
    name = name or DEFAULT_DETECTOR
    if name not in DETECTORS:
        raise InputError(f"unknown face detector {name!r}; expected {' or '.join(DETECTORS)}")
    if name == "dlib":
        if _import_dlib() is not None:
            return DlibDetector()
        log("note: dlib is not installed (pip install dlib-bin): faces are found by OpenCV's Haar "
            "cascade instead")
    return HaarDetector()


@dataclass
class EyeLocator:
    """Eye centres from a dlib shape model file (5-point: eye corners and nose; or 68-point)."""

    path: Path  # e.g. shape_predictor_5_face_landmarks.dat
    _predictor: object = field(init=False, repr=False)
    _dlib: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        dlib = _import_dlib()
        if dlib is None:
            raise InputError(f"{self.path}: reading a landmark model needs dlib (pip install dlib-bin)")
        if not Path(self.path).is_file():
            raise InputError(f"{self.path}: no such landmark model file")
        try:
            self._predictor = dlib.shape_predictor(str(self.path))
        except RuntimeError:
            raise InputError(f"{self.path}: not a dlib shape predictor file") from None
        self._dlib = dlib

    def locate(self, rgb: np.ndarray, box: Box) -> Eyes:
        """The two eye centres of the face in `box` of an (H, W, 3) uint8 RGB frame."""
        rect = self._dlib.rectangle(round(box.x), round(box.y), round(box.x + box.w),
                                    round(box.y + box.h))
        shape = self._predictor(np.ascontiguousarray(rgb), rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)  # (n, 2)
        if len(points) == 5:  # dlib's layout: corners of one eye, of the other, then the nose
            first, second = points[0:2].mean(0), points[2:4].mean(0)
        elif len(points) == 68:  # iBUG 300-W layout: eye contours at 36-41 and 42-47
            first, second = points[36:42].mean(0), points[42:48].mean(0)
        else:
            raise InputError(f"{self.path}: expected a 5- or 68-point model, got {len(points)} points")
        left, right = sorted((tuple(first), tuple(second)))
        return left, right


def alignment_matrix(eyes: Eyes, size: int) -> np.ndarray:
    """2x3 similarity transform taking the eye centres to their places in a size x size crop:
    eyes level, EYE_DISTANCE x size apart, centred, EYE_HEIGHT x size from the top."""
    (lx, ly), (rx, ry) = eyes
    dx, dy = rx - lx, ry - ly
    distance = float(np.hypot(dx, dy))
    if distance < 1e-6:
        raise ValueError("the two eye centres coincide; no alignment is defined")
    scale = EYE_DISTANCE * size / distance
    cos, sin = scale * dx / distance, scale * dy / distance  # rotate the eye line onto the x axis
    rotation = np.array([[cos, sin], [-sin, cos]])  # (2, 2)
    middle = np.array([(lx + rx) / 2, (ly + ry) / 2])
    target = np.array([size / 2, EYE_HEIGHT * size])
    return np.hstack([rotation, (target - rotation @ middle)[:, None]])  # (2, 3)


def align_face(rgb: np.ndarray, eyes: Eyes, size: int) -> np.ndarray:
    """The face with the given eye centres, rotated level and scaled, (size, size, 3), black beyond
    the frame."""
    matrix = alignment_matrix(eyes, size)
    # INTER_AREA is not available to warpAffine; shrinking by a few times, linear is close enough.
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_face(rgb: np.ndarray, box: Box, size: int, margin: float = CROP_MARGIN) -> np.ndarray:
    """Square crop around `box` grown by `margin` per side, black beyond the frame, size x size."""
    height, width = rgb.shape[:2]
    cx, cy = box.centre
    side = max(1, round(max(box.w, box.h) * (1 + 2 * margin)))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = x0 + side, y0 + side
    inside = rgb[max(0, y0):max(0, min(height, y1)), max(0, x0):max(0, min(width, x1))]
    if inside.size == 0:
        return np.zeros((size, size, 3), np.uint8)
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = side - top - inside.shape[0], side - left - inside.shape[1]
    square = cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)  # (size, size, 3)
