"""What `prepare` and `predict` do to every upright frame: find and follow its faces (or take the
landmarks the user gave) and cut each one out, aligned, at the sizes asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emodistill.data.frontend.align import align_face
from emodistill.data.frontend.detectors import make_detector
from emodistill.data.frontend.face import Face
from emodistill.data.frontend.given import GivenLandmarks, read_landmarks_file
from emodistill.data.frontend.track import DETECT_EVERY, FaceTracker, TrackedFace


@dataclass(frozen=True)
class FaceCrop:
    """One face of one frame, cut out."""

    face_id: int  # the person (1, 2, ...), stable over a video
    face: Face  # box and landmarks in pixels of the frame
    crop: np.ndarray  # (S, S, 3) uint8, aligned to the template
    display: np.ndarray | None  # (D, D, 3) uint8, the same at the display size; None if not asked


@dataclass
class FrontEnd:
    """Faces found and followed by a tracker, or read from a landmarks file, then aligned."""

    tracker: FaceTracker | None  # None: every face comes from `given`
    crop_size: int = 112  # side of the aligned crops, in pixels (Aff-wild2: 112)
    given_path: Path | None = None  # a landmarks file (format: emodistill.data.frontend.given)
    _given: GivenLandmarks | None = field(default=None, init=False, repr=False)
    _video: str | None = field(default=None, init=False, repr=False)  # whose rows `_given` holds

    @classmethod
    def build(cls, detector: str | None = None, crop_size: int = 112, detect_every: int = DETECT_EVERY,
              max_faces: int | None = None, landmarks: Path | str | None = None,
              log: Callable[[str], None] = print) -> FrontEnd:
        """The front end `prepare` and `predict` use: `detector` by name (default MTCNN), or
        the landmarks file `landmarks` instead of any detector."""
        if landmarks is not None:
            front = cls(None, crop_size, Path(landmarks))
            front.start()  # read the file now, so a mistake in it stops before any other work
            return front
        return cls(FaceTracker(make_detector(detector, log), detect_every=detect_every, max_faces=max_faces), crop_size)

    @property
    def source(self) -> str:
        """Where the faces come from, for summary lines: the detector's name or the file's."""
        return self.tracker.detector.name if self.tracker is not None else str(self.given_path)

    def start(self, video: str | None = None) -> None:
        """Begin a new video or image (`video`: its file stem, for a landmarks file's `video`
        column): forget the faces followed so far."""
        if self.tracker is not None:
            self.tracker.reset()
        elif self._given is None or video != self._video:  # the pictures of a folder share one read
            self._given, self._video = read_landmarks_file(self.given_path, video), video

    def faces(self, rgb: np.ndarray, number: int, display_size: int | None = None) -> list[FaceCrop]:
        """The faces of frame `number` (1-based) of the current video, an (H, W, 3) uint8 RGB
        array, by face_id."""
        found: list[TrackedFace] = self.tracker.track(rgb) if self.tracker is not None else self._given.faces(number)
        return [FaceCrop(t.face_id, t.face, align_face(rgb, t.face.landmarks, self.crop_size),
                         None if display_size is None else align_face(rgb, t.face.landmarks, display_size))
                for t in found]
