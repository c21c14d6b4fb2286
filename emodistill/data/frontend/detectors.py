"""The face detectors by name: one table row each, so a new detector is one file and one row.

Every detector finds all faces of an (H, W, 3) uint8 RGB frame, largest first; one that gives no
landmarks (dlib, Haar) has them placed by MTCNN's O-net on its box (the tracker does that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.frontend.face import Face


class Detector(Protocol):
    """Anything that finds the faces of a picture."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]: ...


@dataclass(frozen=True)
class DetectorKind:
    """One row of the table: how to build a detector, and what to say about it."""

    make: Callable[[], Detector]
    about: str  # a line for --help


def _mtcnn() -> Detector:
    from emodistill.data.frontend.mtcnn import MtcnnDetector

    return MtcnnDetector()


def _dlib() -> Detector:
    from emodistill.data.frontend.dlib_hog import DlibDetector

    return DlibDetector()


def _haar() -> Detector:
    from emodistill.data.frontend.haar import HaarDetector

    return HaarDetector()


# Chosen by measurement on real faces (docs/FRONTEND.md): MTCNN found the most faces, from the
# smallest, with no false face on the non-face pictures, and is the one that places landmarks.
DETECTORS: dict[str, DetectorKind] = {
    "mtcnn": DetectorKind(_mtcnn, "MTCNN (PyTorch, weights shipped): faces from 20 px, five landmarks"),
    "dlib": DetectorKind(_dlib, "dlib's HOG frontal-face detector (dlib-bin wheel)"),
    "haar": DetectorKind(_haar, "OpenCV's Haar cascade"),
}
DEFAULT_DETECTOR = "mtcnn"


def make_detector(name: str | None = None, log: Callable[[str], None] = print) -> Detector:
    """The detector called `name` (default DEFAULT_DETECTOR); dlib falls back to Haar with a note
    when it is not installed. `prepare` and `predict` both build theirs here."""
    name = name or DEFAULT_DETECTOR
    if name not in DETECTORS:
        raise InputError(f"unknown face detector {name!r}; expected one of {', '.join(DETECTORS)}")
    if name == "dlib":
        from emodistill.data.frontend.dlib_hog import import_dlib

        if import_dlib() is None:
            log("note: dlib is not installed (pip install dlib-bin): faces are found by OpenCV's Haar "
                "cascade instead")
            name = "haar"
    return DETECTORS[name].make()
