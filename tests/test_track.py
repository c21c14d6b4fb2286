"""Tests for following faces over time (emodistill.data.frontend.track): detection on schedule,
O-net in between, numbers that stay with a person, the limit on faces."""

from __future__ import annotations

import numpy as np
import pytest
from footage import two_people_frames
from test_media import background, face_frame

from emodistill.core.errors import InputError
from emodistill.data.frontend import Box, Face, FaceTracker
from emodistill.data.frontend.mtcnn import MtcnnDetector


class Recording:
    """A detector that counts its calls."""

    name = "recording"

    def __init__(self, detector) -> None:
        self.detector, self.calls = detector, 0

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.calls += 1
        return self.detector.detect(rgb)


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnDetector:
    return MtcnnDetector()


def test_faces_are_detected_on_schedule_and_followed_in_between(mtcnn):
    pairs = [face_frame(k) for k in range(14)]  # the face moves 8 px right and 2 down a frame
    detector = Recording(mtcnn)
    tracker = FaceTracker(detector, detect_every=5, follower=mtcnn)
    tracked = [tracker.track(rgb) for rgb, _ in pairs]
    assert detector.calls == 3  # frames 0, 5 and 10
    assert all(len(faces) == 1 and faces[0].face_id == 1 for faces in tracked)
    for faces, (_, truth) in zip(tracked, pairs, strict=True):
        assert faces[0].face.box.iou(truth) > 0.5
        (lx, ly), (rx, _) = faces[0].face.landmarks[:2]
        assert truth.x < lx < rx < truth.x + truth.w and truth.y < ly < truth.y + truth.h


def test_a_lost_face_is_searched_for_and_keeps_its_number_near_where_it_was(mtcnn):
    frames = [face_frame(k)[0] for k in range(6)] + [background()] * 3 + [face_frame(k)[0] for k in range(6, 10)]
    detector = Recording(mtcnn)
    tracker = FaceTracker(detector, detect_every=10, follower=mtcnn)
    ids = [[f.face_id for f in tracker.track(rgb)] for rgb in frames]
    # Lost at frame 6 (O-net sees the background): detected on that frame at once, then on every
    # frame while none is followed; back at frame 9 with its number.
    assert ids == [[1]] * 6 + [[]] * 3 + [[1]] * 4
    assert detector.calls == 6  # frame 0, the loss on 6, the search on 7, 8 and 9, frame 10
    tracker.reset()
    far = [face_frame(0)[0], background(), face_frame(20)[0]]  # back 160 px away
    assert [[f.face_id for f in tracker.track(rgb)] for rgb in far] == [[1], [], [2]]


def test_two_people_keep_their_numbers_and_max_faces_keeps_the_largest(mtcnn):
    frames = two_people_frames(12)  # carphone's man on the left, the astronaut on the right
    tracker = FaceTracker(mtcnn, detect_every=4)
    tracked = [tracker.track(rgb) for rgb in frames]
    assert all([f.face_id for f in faces] == [1, 2] for faces in tracked)  # numbered from the left
    assert all(faces[0].face.box.centre[0] < 176 < faces[1].face.box.centre[0] for faces in tracked)
    larger = max(tracked[0], key=lambda f: f.face.box.area)
    one = FaceTracker(mtcnn, detect_every=4, max_faces=1)
    kept = [one.track(rgb) for rgb in frames]
    assert all(len(faces) == 1 and faces[0].face_id == 1 for faces in kept)
    assert all(faces[0].face.box.iou(larger.face.box) > 0.5 for faces in kept)


class Twice:
    """A detector that reports each face twice, a few pixels apart."""

    name = "twice"

    def __init__(self, detector) -> None:
        self.detector = detector

    def detect(self, rgb: np.ndarray) -> list[Face]:
        faces = self.detector.detect(rgb)
        return faces + [Face(Box(f.box.x + 3, f.box.y, f.box.w, f.box.h), f.landmarks + np.array([3, 0]), f.score)
                        for f in faces]


def test_one_face_found_twice_is_followed_once(mtcnn):
    tracker = FaceTracker(Twice(mtcnn), detect_every=2, follower=mtcnn)
    assert [[f.face_id for f in tracker.track(face_frame(k)[0])] for k in range(5)] == [[1]] * 5


def test_tracker_settings_are_checked(mtcnn):
    for setting in ({"detect_every": 0}, {"max_faces": 0}):
        with pytest.raises(InputError, match=f"{next(iter(setting))} must be 1 or more"):
            FaceTracker(mtcnn, **setting)
