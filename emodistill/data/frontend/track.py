"""Every face of a video followed over time, each with a number (1, 2, ...) that stays with the
person while they stay in view.

The detector runs every k-th frame; in between, MTCNN's O-net on each face's last box moves the
box and landmarks along (about a millisecond a face). A face O-net no longer sees is searched
for at once by the detector, and a face that comes back near where it was lost gets its number
back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from emodistill.core.errors import InputError
from emodistill.data.frontend.detectors import Detector, make_detector
from emodistill.data.frontend.face import Box, Face
from emodistill.data.frontend.mtcnn import MtcnnDetector

# Full detection every k-th frame: how late a face that walks in beside another is found (15
# frames: half a second at 30 frames/s). Between detections the O-net follows the faces it has;
# a lost face triggers a detection on its frame, and while no face is followed the detector runs
# on every frame, so a face entering an empty scene is found at once. Detection is most of the
# front end's time: on the bench's 640x480 video, side by side while other programs loaded the
# cores, 128 frames/s with k = 10, 226 with k = 20, and 40 for dlib on every frame.
DETECT_EVERY = 15


@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame, with the number of the person it belongs to."""

    face_id: int  # 1, 2, ... in order of appearance (left to right among faces found together)
    face: Face  # box and landmarks in frame pixels (smoothed over the last frames)


@dataclass
class _Track:
    face_id: int
    face: Face
    seen: int  # the last frame (counted from `reset`) the face was found on
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per frame of the box centre, averaged

    def expected(self, frame: int) -> Box:
        """Where the box should be on `frame`: moved on by its speed on the frame after it was
        seen, where it was after that (a face that was away has not kept its course)."""
        steps = min(1, frame - self.seen)
        box = self.face.box
        return Box(box.x + self.velocity[0] * steps, box.y + self.velocity[1] * steps, box.w, box.h)


def _corners(boxes: list[Box]) -> np.ndarray:
    """Boxes -> (N, 4) x1, y1, x2, y2."""
    return np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float64).reshape(-1, 4)


def _pairs(first: list[Box], second: list[Box], least: float) -> list[tuple[int, int]]:
    """Index pairs (i, j) matching boxes of `first` to boxes of `second` one to one, maximising
    the summed overlap; only pairs whose intersection over union reaches `least`."""
    if not first or not second:
        return []
    overlap = np.array([[a.iou(b) for b in second] for a in first])  # (N, M)
    rows, cols = linear_sum_assignment(-overlap)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if overlap[i, j] >= least]


@dataclass
class FaceTracker:
    """Detector + O-net follower + identities, one frame at a time (call `reset` between videos).

    `prepare` and `predict` run every frame and image through one of these (an image is a video
    of one frame), so both find and follow faces the same way.
    """

    detector: Detector = field(default_factory=make_detector)
    # Full detection on frames 0, k, 2k, ... (1: every frame), and on every frame while no face
    # is followed.
    detect_every: int = DETECT_EVERY
    max_faces: int | None = None  # follow at most this many faces (largest first); None: all
    # O-net's face probability under which a followed face counts as lost. Followed through
    # carphone (a man turning his head in a car) the face never scored under 0.98; O-net on the
    # plain background where a face had just been scored 0.001.
    keep: float = 0.6
    match: float = 0.3  # overlap (IoU) for a detection to be a face already followed
    duplicate: float = 0.5  # two followed boxes overlapping more than this are one face
    memory: int = 50  # frames a lost face keeps its number for coming back at the same place
    # Weight of the newest position in the moving average of box and landmarks (1: none), which
    # steadies the crops; a face moving by more than `jump` x its size restarts the average.
    smoothing: float = 0.6
    jump: float = 0.5
    # O-net, which follows faces and places the landmarks of detectors that give none.
    follower: MtcnnDetector | None = None
    _tracks: list[_Track] = field(default_factory=list, init=False, repr=False)
    _frame: int = field(default=0, init=False, repr=False)
    _next_id: int = field(default=1, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise InputError(f"detect_every must be 1 or more, got {self.detect_every}")
        if self.max_faces is not None and self.max_faces < 1:
            raise InputError(f"max_faces must be 1 or more, got {self.max_faces}")
        if self.follower is None:
            self.follower = self.detector if isinstance(self.detector, MtcnnDetector) else MtcnnDetector()

    def reset(self) -> None:
        """Forget every face (call between videos)."""
        self._tracks, self._frame, self._next_id = [], 0, 1

    def track(self, rgb: np.ndarray) -> list[TrackedFace]:
        """The faces of the next (H, W, 3) uint8 RGB frame, by face_id."""
        frame = self._frame
        self._frame += 1
        following = any(t.seen == frame - 1 for t in self._tracks)
        detected = not following or frame % self.detect_every == 0
        if detected:
            self._take_detections(rgb, frame, before_following=True)
        followed = [t for t in self._tracks if t.seen == frame - 1]
        faces = self.follower.refine(rgb, _corners([t.expected(frame) for t in followed]))
        lost = False
        for track, face in zip(followed, faces, strict=True):
            if face.score >= self.keep:
                self._update(track, face, frame)
            else:
                lost = True
        if lost and not detected:
            self._take_detections(rgb, frame, before_following=False)
        self._drop_duplicates(frame)
        self._tracks = [t for t in self._tracks if frame - t.seen <= self.memory]
        return [TrackedFace(t.face_id, t.face) for t in sorted(self._tracks, key=lambda t: t.face_id)
                if t.seen == frame]

    def _take_detections(self, rgb: np.ndarray, frame: int, before_following: bool) -> None:
        """Detect every face. One on a face in view updates it; one on a face lost within
        `memory` frames brings it back, and any other starts a new track, both while fewer than
        `max_faces` are in view (largest first)."""
        found = self.detector.detect(rgb)
        unplaced = [f for f in found if f.landmarks is None]
        if unplaced:  # the detector gives boxes only: O-net places the landmarks
            placed = iter(self.follower.refine(rgb, _corners([f.box for f in unplaced])))
            found = [next(placed) if f.landmarks is None else f for f in found]
        # In view: found on this frame, or on the last one and about to be followed.
        in_view = {id(t) for t in self._tracks if t.seen == frame or (before_following and t.seen == frame - 1)}
        waiting = [t for t in self._tracks if t.seen < frame]
        matched = dict((j, waiting[i]) for i, j in _pairs([t.expected(frame) for t in waiting],
                                                          [f.box for f in found], self.match))
        free = len(found) if self.max_faces is None else self.max_faces - len(in_view)
        new = []
        for j in sorted(range(len(found)), key=lambda j: -found[j].box.area):
            track = matched.get(j)
            if track is not None and id(track) in in_view:
                self._update(track, found[j], frame)
            elif free > 0:
                free -= 1
                if track is None:
                    new.append(found[j])
                else:
                    self._update(track, found[j], frame)
        for face in sorted(new, key=lambda f: f.box.centre[0]):  # numbered left to right
            self._tracks.append(_Track(self._next_id, face, frame))
            self._next_id += 1

    def _update(self, track: _Track, face: Face, frame: int) -> None:
        """Move a track to `face`, averaged with where it was expected unless it jumped or was
        lost; and its speed."""
        old, expected = track.face, track.expected(frame)
        a = self.smoothing
        (ex, ey), (nx, ny) = expected.centre, face.box.centre
        moved = float(np.hypot(nx - ex, ny - ey)) > self.jump * max(old.box.w, old.box.h)
        if track.seen == frame - 1 and not moved:
            (ox, oy) = old.box.centre
            track.velocity = (a * (nx - ox) + (1 - a) * track.velocity[0], a * (ny - oy) + (1 - a) * track.velocity[1])
            shift = np.array([expected.x - old.box.x, expected.y - old.box.y])
            box = Box(*(a * new + (1 - a) * was for new, was in zip(
                (face.box.x, face.box.y, face.box.w, face.box.h), (expected.x, expected.y, old.box.w, old.box.h),
                strict=True)))
            face = Face(box, a * face.landmarks + (1 - a) * (old.landmarks + shift), face.score)
        else:
            track.velocity = (0.0, 0.0)
        track.face, track.seen = face, frame

    def _drop_duplicates(self, frame: int) -> None:
        """Two tracks on one face (a new detection beside a followed face, or a follower that
        slid onto its neighbour): the younger one goes."""
        current = sorted((t for t in self._tracks if t.seen == frame), key=lambda t: t.face_id)
        dropped = {younger.face_id for i, older in enumerate(current) for younger in current[i + 1:]
                   if older.face.box.iou(younger.face.box) > self.duplicate}
        self._tracks = [t for t in self._tracks if t.face_id not in dropped]
