"""Tests for the face detectors on real faces, their table, and alignment to the template
(emodistill.data.frontend: mtcnn, dlib_hog, haar, detectors, align)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from safetensors.numpy import load_file
from skimage import data as skdata

from emodistill.core.errors import InputError
from emodistill.data.frontend import DETECTORS, make_detector
from emodistill.data.frontend import dlib_hog as dlib_module
from emodistill.data.frontend.align import (
    EYE_DISTANCE,
    EYE_HEIGHT,
    MEAN_SHAPE,
    TEMPLATE,
    align_face,
    alignment_matrix,
    box_from_landmarks,
    similarity,
)
from emodistill.data.frontend.dlib_hog import DlibDetector
from emodistill.data.frontend.haar import HaarDetector
from emodistill.data.frontend.mtcnn import WEIGHTS, MtcnnDetector, nms

SIDE = 112  # aligned crop side


def lfw_pictures(first: int, last: int, side: int = 100) -> list[np.ndarray]:
    """lfw_subset images first..last-1, 25 x 25 grey upscaled to side x side RGB."""
    grey = (skdata.lfw_subset()[first:last] * 255).astype(np.uint8)
    return [np.dstack([cv2.resize(g, (side, side), interpolation=cv2.INTER_CUBIC)] * 3) for g in grey]


@pytest.fixture(scope="module")
def mtcnn() -> MtcnnDetector:
    return MtcnnDetector()


def test_mtcnn_finds_real_faces_with_landmarks_and_no_face_in_non_faces(mtcnn):
    faces = [mtcnn.detect(picture) for picture in lfw_pictures(0, 100)]
    assert sum(len(found) > 0 for found in faces) >= 90  # measured: 94 of 100
    assert sum(len(mtcnn.detect(other)) > 0 for other in lfw_pictures(100, 200)) == 0
    # The landmarks lie in the face: eyes above the nose, the nose above the mouth, image left
    # before image right.
    for found in faces:
        for face in found:
            (lx, ly), (rx, ry), (_, ny), (mlx, mly), (mrx, mry) = face.landmarks
            assert lx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)
            assert 0.5 < face.score <= 1.0


def test_mtcnn_weights_are_plain_tensors_in_the_package():
    tensors = load_file(str(WEIGHTS))  # safetensors: no code runs on loading
    nets = MtcnnDetector().nets
    expected = {f"{prefix}.{name}" for prefix, net in zip(("pnet", "rnet", "onet"), nets, strict=True)
                for name in net.state_dict()}
    assert set(tensors) == expected and WEIGHTS.stat().st_size < 3_000_000
    assert (WEIGHTS.parent / "LICENSE-MTCNN.md").is_file()


def test_mtcnn_finds_a_small_face_dlib_misses(mtcnn):
    # The astronaut's face shrunk to about 40 px, under dlib's 80 px window.
    small = cv2.resize(skdata.astronaut(), (200, 200), interpolation=cv2.INTER_AREA)
    found = mtcnn.detect(small)
    assert len(found) == 1 and 25 < found[0].box.w < 50
    assert DlibDetector(scales=(1.0,)).detect(small) == []


def test_follower_moves_a_shifted_box_back_onto_the_face(mtcnn):
    picture = skdata.astronaut()
    face = mtcnn.detect(picture)[0]
    box = face.box
    shifted = np.array([[box.x + 15, box.y - 10, box.x + box.w + 15, box.y + box.h - 10]])
    followed = mtcnn.refine(picture, shifted)[0]
    assert followed.score > 0.9
    assert followed.box.iou(box) > 0.8
    assert np.abs(followed.landmarks - face.landmarks).max() < 4.0


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 0, 2]  # best first; boxes 0 and 1 overlap by 81/119
    assert nms(boxes, scores, 0.5).tolist() == [3, 1, 2]
    assert nms(boxes, scores, 0.7, by_min=True).tolist() == [3, 1, 2]  # box 3 lies wholly inside box 0


def test_dlib_finds_real_faces_and_no_face_in_non_faces():
    detector = DlibDetector()
    found = sum(len(detector.detect(face)) > 0 for face in lfw_pictures(0, 100))
    false = sum(len(detector.detect(other)) > 0 for other in lfw_pictures(100, 200))
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
    assert [f.box for f in detector.detect(view)] == [f.box for f in detector.detect(picture)] != []


def test_the_detector_table_builds_each_and_falls_back_to_haar_without_dlib(monkeypatch):
    assert list(DETECTORS) == ["mtcnn", "dlib", "haar"]
    assert isinstance(make_detector(), MtcnnDetector)
    assert isinstance(make_detector("dlib"), DlibDetector)
    assert isinstance(make_detector("haar"), HaarDetector)
    with pytest.raises(InputError, match=r"unknown face detector 'yunet'; expected one of mtcnn, dlib, haar"):
        make_detector("yunet")
    monkeypatch.setattr(dlib_module, "import_dlib", lambda: None)
    notes = []
    detector = make_detector("dlib", log=notes.append)
    assert isinstance(detector, HaarDetector)
    assert len(notes) == 1 and "dlib is not installed" in notes[0] and "\n" not in notes[0]


# ------------------------------------------------------------------------------ alignment


def test_template_puts_the_eyes_where_the_training_crops_have_them():
    (lx, ly), (rx, ry) = TEMPLATE[:2]
    assert (ly, ry) == (EYE_HEIGHT, EYE_HEIGHT) and rx - lx == pytest.approx(EYE_DISTANCE)
    assert (lx + rx) / 2 == pytest.approx(0.5)
    mirrored = TEMPLATE[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]  # left and right swapped
    assert np.allclose(mirrored, TEMPLATE)
    assert TEMPLATE[2, 1] < TEMPLATE[3, 1] and TEMPLATE.max() < 1  # nose above the mouth, inside


def test_similarity_recovers_a_known_transform_and_fits_noisy_points_in_least_squares():
    angle, scale, shift = np.radians(-24), 1.7, np.array([31.0, -12.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = MEAN_SHAPE * 40 + 100
    moved = points @ (scale * rotation).T + shift
    assert np.allclose(similarity(points, moved), np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)
    noisy = moved + np.random.default_rng(0).normal(0, 2, moved.shape)
    fitted = similarity(points, noisy)
    linear = fitted[:, :2]
    assert np.allclose(linear @ linear.T, np.eye(2) * np.linalg.det(linear))  # a similarity, no shear
    # Least squares: no small change of the fit lowers the summed squared error.
    error = lambda m: ((np.c_[points, np.ones(5)] @ m.T - noisy) ** 2).sum()  # noqa: E731
    assert all(error(fitted) <= error(fitted + d) for d in np.eye(6).reshape(6, 2, 3) * 1e-3)
    with pytest.raises(ValueError, match="coincide"):
        similarity(np.ones((5, 2)), noisy)


def drawn_face(angle: float, eye_distance: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """A grey picture with a face drawn at the mean shape, rolled by `angle` radians: dark eye
    discs, a nose dot and mouth corners, and its exact five landmarks (5, 2)."""
    image = np.full((240, 240, 3), 90, np.uint8)
    roll = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = np.asarray(centre) + eye_distance * MEAN_SHAPE @ roll.T  # (5, 2)
    cv2.ellipse(image, tuple(int(v) for v in points[:2].mean(0) + np.array([0, eye_distance * 0.5])),
                (round(eye_distance * 1.0), round(eye_distance * 1.3)), float(np.degrees(angle)), 0, 360,
                (210, 180, 160), -1)
    for i, (x, y) in enumerate(points):
        colour = (30, 30, 30) if i < 2 else (150, 60, 60)
        cv2.circle(image, (round(x * 16), round(y * 16)), round(eye_distance * 0.12 * 16), colour, -1,
                   cv2.LINE_AA, 4)  # 4 bits of sub-pixel precision: centres exact to 1/16 px
    return image, points


def dark_blob_centres(crop: np.ndarray) -> list[tuple[float, float]]:
    """Centroids (x, y) of the dark eye discs in a crop, left one first (not the black beyond
    the frame, which touches the crop's edge)."""
    dark = (crop < 60).all(-1).astype(np.uint8)  # the eyes' grey 30; nose and mouth are red
    _, _, stats, centroids = cv2.connectedComponentsWithStats(dark)
    x, y, w, h, area = stats.T
    inner = (x > 0) & (y > 0) & (x + w < crop.shape[1]) & (y + h < crop.shape[0])
    return sorted((float(cx), float(cy)) for i, (cx, cy) in enumerate(centroids) if i and inner[i] and area[i] > 5)


@pytest.mark.parametrize(("angle", "eye_distance", "upscale"),
                         [(0.0, 40.0, 1), (-0.35, 55.0, 1), (0.3, 25.0, 1), (0.2, 60.0, 3)])
def test_aligned_crop_puts_the_drawn_eyes_level_at_the_template(angle, eye_distance, upscale):
    image, points = drawn_face(angle, eye_distance, (120.0, 100.0))
    if upscale > 1:  # a face filling a large frame: shrunk by averaging before the warp
        image = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
        points = points * upscale + (upscale - 1) / 2  # the same spot of the larger picture
    crop = align_face(image, points, SIDE)
    assert crop.shape == (SIDE, SIDE, 3) and crop.dtype == np.uint8
    found = dark_blob_centres(crop)
    assert len(found) == 2
    assert np.abs(np.array(found) - TEMPLATE[:2] * SIDE).max() < 1.0
    assert abs(found[0][1] - found[1][1]) < 0.5  # level
    matrix = alignment_matrix(points, SIDE)
    assert np.allclose(np.c_[points, np.ones(5)] @ matrix.T, TEMPLATE * SIDE, atol=1e-6)


def test_an_aligned_crop_passes_through_the_front_end_unchanged(mtcnn):
    """The template frames a face as the crops the models learn from: aligning an aligned crop
    again (found anew by MTCNN, at twice the size) gives back nearly the same crop, and its
    landmarks sit on the template within the spread of real faces."""
    picture = skdata.astronaut()
    crop = align_face(picture, mtcnn.detect(picture)[0].landmarks, SIDE)
    bigger = cv2.resize(crop, (2 * SIDE, 2 * SIDE), interpolation=cv2.INTER_CUBIC)
    again = mtcnn.detect(bigger)
    assert len(again) == 1
    landmarks = again[0].landmarks / 2  # in pixels of the 112 px crop
    assert np.abs(landmarks - TEMPLATE * SIDE).max() < 0.06 * SIDE
    realigned = align_face(bigger, again[0].landmarks, SIDE)
    assert np.abs(realigned.astype(int) - crop).mean() < 12


def test_face_box_from_landmarks_reads_like_a_detected_one(mtcnn):
    for picture in (skdata.astronaut(), *lfw_pictures(0, 5, side=160)):
        for face in mtcnn.detect(picture):
            assert box_from_landmarks(face.landmarks).iou(face.box) > 0.6
    box = box_from_landmarks(MEAN_SHAPE * 10 + 50)
    assert (box.x, box.y, box.w, box.h) == pytest.approx((50 - 10.8, 50 - 10.3, 21.6, 27.6))
