"""Tests for face detection, eye landmarks and alignment (emodistill.data.faces)."""

from __future__ import annotations

from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
from skimage import data as skdata

from emodistill.core.errors import InputError
from emodistill.data import faces
from emodistill.data.faces import (
    EYE_DISTANCE,
    EYE_HEIGHT,
    Box,
    DlibDetector,
    EyeLocator,
    HaarDetector,
    align_face,
    alignment_matrix,
    crop_face,
    make_detector,
)
from emodistill.data.media import FaceTracker

SIDE = 112  # aligned crop side
EYE_OFFSET = 17  # half the distance between the eyes of the drawn face, in face units
EYE_RADIUS = 5


def drawn_face(angle: float, scale: float, centre: tuple[float, float],
               size: int = 200) -> tuple[np.ndarray, tuple, list, Box]:
    """A cartoon face on grey, rolled by `angle` radians: the image, the two eye centres (image
    left first), the 5 dlib-layout points (corners of each eye, nose) and its box."""
    image = np.full((size, size, 3), 90, np.uint8)
    c = np.asarray(centre, dtype=float)
    roll = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def at(x: float, y: float) -> np.ndarray:
        return c + scale * (roll @ np.array([x, y]))

    def pixel(point: np.ndarray) -> tuple[int, int]:
        return round(float(point[0])), round(float(point[1]))

    # Drawn with 4 bits of sub-pixel precision, so the eye centres are exact to 1/16 px.
    shift = 4

    def fixed(point: np.ndarray) -> tuple[int, int]:
        return round(float(point[0]) * 16), round(float(point[1]) * 16)

    cv2.ellipse(image, pixel(at(0, 0)), (round(40 * scale), round(52 * scale)),
                float(np.degrees(angle)), 0, 360, (210, 180, 160), -1)
    eyes = (at(-EYE_OFFSET, -10), at(EYE_OFFSET, -10))
    for eye in eyes:
        cv2.circle(image, fixed(eye), round(EYE_RADIUS * scale * 16), (30, 30, 30), -1,
                   cv2.LINE_AA, shift)
    nose = at(0, 8)
    cv2.circle(image, pixel(nose), 3, (150, 110, 100), -1)
    cv2.line(image, pixel(at(-12, 25)), pixel(at(12, 25)), (120, 40, 40), 2)
    points = [at(-23, -10), at(-11, -10), at(11, -10), at(23, -10), nose]
    box = Box(c[0] - 45 * scale, c[1] - 50 * scale, 90 * scale, 100 * scale)
    return image, (tuple(eyes[0]), tuple(eyes[1])), points, box


def dark_blob_centres(crop: np.ndarray) -> list[tuple[float, float]]:
    """Centroids (x, y) of the two dark eye discs in a crop, left one first."""
    dark = (crop < 60).all(-1).astype(np.uint8)  # the eyes' grey 30; the mouth is red
    count, _, stats, centroids = cv2.connectedComponentsWithStats(dark)
    x, y, w, h, area = stats.T
    inner = (x > 0) & (y > 0) & (x + w < crop.shape[1]) & (y + h < crop.shape[0])  # no black border
    blobs = [centroids[i] for i in range(1, count) if inner[i] and area[i] > 10]
    return sorted((float(x), float(y)) for x, y in blobs)


def targets(size: int) -> list[tuple[float, float]]:
    half = EYE_DISTANCE * size / 2
    return [(size / 2 - half, EYE_HEIGHT * size), (size / 2 + half, EYE_HEIGHT * size)]


def test_alignment_matrix_takes_the_eyes_to_their_places():
    eyes = ((61.3, 97.2), (118.9, 71.5))  # rolled by about -24 degrees
    matrix = alignment_matrix(eyes, SIDE)
    moved = [matrix @ np.array([x, y, 1.0]) for x, y in eyes]
    assert np.allclose(moved, targets(SIDE), atol=1e-9)
    linear = matrix[:, :2]
    assert np.allclose(linear @ linear.T, np.eye(2) * np.linalg.det(linear))  # a similarity
    with pytest.raises(ValueError, match="coincide"):
        alignment_matrix(((5.0, 5.0), (5.0, 5.0)), SIDE)


@pytest.mark.parametrize(("angle", "scale"), [(0.0, 1.0), (-0.35, 1.3), (0.3, 0.8)])
def test_aligned_crop_puts_the_drawn_eyes_level_at_the_targets(angle, scale):
    image, eyes, _, _ = drawn_face(angle, scale, (97.0, 104.0))
    crop = align_face(image, eyes, SIDE)
    assert crop.shape == (SIDE, SIDE, 3) and crop.dtype == np.uint8
    found = dark_blob_centres(crop)
    assert len(found) == 2
    assert np.abs(np.array(found) - targets(SIDE)).max() < 1.0
    assert abs(found[0][1] - found[1][1]) < 0.5  # level


@pytest.fixture(scope="module")
def tiny_landmark_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-point dlib shape model trained on drawn faces (a fraction of a second)."""
    rng = np.random.default_rng(0)
    images, shapes = [], []
    for _ in range(40):
        image, _, points, box = drawn_face(rng.uniform(-0.4, 0.4), rng.uniform(0.8, 1.2),
                                           tuple(100 + rng.uniform(-10, 10, 2)))
        rect = dlib.rectangle(round(box.x), round(box.y), round(box.x + box.w), round(box.y + box.h))
        parts = [dlib.point(round(x), round(y)) for x, y in points]
        images.append(image)
        shapes.append([dlib.full_object_detection(rect, parts)])
    options = dlib.shape_predictor_training_options()
    options.tree_depth, options.cascade_depth, options.num_trees_per_cascade_level = 3, 8, 60
    options.oversampling_amount, options.nu, options.num_threads = 10, 0.1, 1
    path = tmp_path_factory.mktemp("landmarks") / "five-points.dat"
    dlib.train_shape_predictor(images, shapes, options).save(str(path))
    return path


def test_tracker_aligns_by_the_eyes_of_a_landmark_model(tiny_landmark_model):
    image, eyes, _, box = drawn_face(0.25, 1.1, (95.0, 102.0))
    locator = EyeLocator(tiny_landmark_model)
    located = locator.locate(image, box)
    assert np.abs(np.array(located) - np.array(eyes)).max() < 2.0

    # The tracker cuts the face of a box with the landmark model when it has one, else square.
    crop = FaceTracker(crop_size=SIDE, eyes=locator).cut(image, box, SIDE)
    found = dark_blob_centres(crop)
    assert np.abs(np.array(found) - targets(SIDE)).max() < 2.5
    assert abs(found[0][1] - found[1][1]) < 1.5
    square = FaceTracker(crop_size=SIDE).cut(image, box, SIDE)
    assert np.array_equal(square, crop_face(image, box, SIDE))


def test_landmark_model_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"absent\.dat: no such landmark model file"):
        EyeLocator(tmp_path / "absent.dat")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"junk\.dat: not a dlib shape predictor file"):
        EyeLocator(junk)


def lfw_pictures(first: int, last: int) -> list[np.ndarray]:
    """lfw_subset images first..last-1, 25 x 25 grey upscaled to 100 x 100 RGB."""
    grey = (skdata.lfw_subset()[first:last] * 255).astype(np.uint8)
    return [np.dstack([cv2.resize(g, (100, 100), interpolation=cv2.INTER_CUBIC)] * 3)
            for g in grey]


def test_dlib_finds_real_faces_and_no_face_in_non_faces():
    detector = DlibDetector()
    found = sum(detector.detect(face) is not None for face in lfw_pictures(0, 100))
    false = sum(detector.detect(other) is not None for other in lfw_pictures(100, 200))
    assert found >= 90  # measured: 96 of 100 (Haar: 74)
    assert false == 0


def test_dlib_reads_padded_frames_as_their_copy():
    # PyAV's frames are views with padded rows; dlib misreads such arrays, so the detector must
    # not hand them over as they are.
    picture = skdata.astronaut()
    padded = np.zeros((picture.shape[0], picture.shape[1] + 7, 3), np.uint8)
    padded[:, :picture.shape[1]] = picture
    view = padded[:, :picture.shape[1]]
    assert not view.flags.c_contiguous
    detector = DlibDetector()
    assert detector.detect(view) == detector.detect(picture) is not None


def test_make_detector_falls_back_to_haar_without_dlib(monkeypatch):
    assert isinstance(make_detector(), DlibDetector)
    assert isinstance(make_detector("haar"), HaarDetector)
    with pytest.raises(InputError, match=r"unknown face detector 'mtcnn'; expected dlib or haar"):
        make_detector("mtcnn")
    monkeypatch.setattr(faces, "_import_dlib", lambda: None)
    notes = []
    detector = make_detector("dlib", log=notes.append)
    assert isinstance(detector, HaarDetector)
    assert len(notes) == 1 and "dlib is not installed" in notes[0] and "\n" not in notes[0]
