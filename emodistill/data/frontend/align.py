"""Aligned face crops like Aff-wild2's `cropped_aligned`: the similarity transform (rotation,
uniform scale, shift) that best takes a face's five landmarks onto a fixed template.

`prepare` and `predict` both cut their crops here, so a model sees the same framing in both.
"""

from __future__ import annotations

import cv2
import numpy as np

from emodistill.data.frontend.face import Box

# Where the eye centres land, as fractions of the crop's side: the mean of the simulator's
# aligned training crops (0.284 apart, eye line at 0.426 of the side, 227 crops), which were made
# to frame faces as Aff-wild2's 112x112 crops do. The models are trained on those crops.
EYE_DISTANCE = 0.28  # between the two eye centres
EYE_HEIGHT = 0.43  # of the eye line, from the top
# The mean shape of a face in units of its eye distance, from the midpoint between the eyes (y
# down): MTCNN's landmarks on 94 lfw_subset faces, the astronaut and 12 carphone frames, made
# symmetric: nose tip 0.56 below the eyes, mouth corners 1.08 below and 0.84 apart.
MEAN_SHAPE = np.array([(-0.5, 0.0), (0.5, 0.0), (0.0, 0.56), (-0.42, 1.08), (0.42, 1.08)])  # (5, 2)
# The template: the five points as fractions of the crop's side, (5, 2) x, y. Eyes at
# (0.36, 0.43) and (0.64, 0.43), nose tip at (0.5, 0.587), mouth corners at (0.382, 0.732) and
# (0.618, 0.732).
TEMPLATE = np.array([0.5, EYE_HEIGHT]) + EYE_DISTANCE * MEAN_SHAPE
# MTCNN's face box in the same units as MEAN_SHAPE (its mean on the same faces): a face given by
# landmarks alone gets this box, so its x, y, w, h read like a detected face's.
FACE_BOX = np.array([(-1.08, -1.03), (1.08, 1.73)])  # (2, 2) top-left, bottom-right


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 similarity transform (no reflection) taking the points `source` (N, 2) closest to
    `target` (N, 2) in least squares (Umeyama 1991, Eq. 40-42)."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mean_s, mean_t = source.mean(0), target.mean(0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance = (centred_s**2).sum() / len(source)
    if variance < 1e-12:
        raise ValueError("the landmarks coincide; no alignment is defined")
    covariance = centred_t.T @ centred_s / len(source)  # (2, 2)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign)) / variance
    shift = mean_t - scale * rotation @ mean_s
    return np.hstack([scale * rotation, shift[:, None]])  # (2, 3)


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 transform from frame pixels to a size x size aligned crop, for a face's (5, 2)
    landmarks."""
    return similarity(landmarks, TEMPLATE * size)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The face with these (5, 2) landmarks of an (H, W, 3) frame, warped onto the template:
    (size, size, 3) uint8, black beyond the frame."""
    landmarks = np.asarray(landmarks, np.float64)
    matrix = alignment_matrix(landmarks, size)
    scale = float(np.hypot(*matrix[:, 0]))  # crop pixels per frame pixel
    if scale < 0.5:
        # warpAffine samples without averaging, so shrinking a large face more than 2x in it
        # aliases: the part of the frame the crop covers is first shrunk to the crop's scale
        # by averaging (INTER_AREA), and the warp then only rotates and shifts.
        corners = np.array([(0, 0, 1), (size, 0, 1), (0, size, 1), (size, size, 1)], np.float64)
        covered = corners @ cv2.invertAffineTransform(matrix).T  # (4, 2) in frame pixels
        height, width = rgb.shape[:2]
        x0, y0 = np.clip(np.floor(covered.min(0)).astype(int), 0, [width, height])
        x1, y1 = np.clip(np.ceil(covered.max(0)).astype(int), 0, [width, height])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return np.zeros((size, size, 3), np.uint8)
        small = cv2.resize(rgb[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rgb, matrix = small, alignment_matrix((landmarks - [x0, y0]) * scale, size)
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def box_from_landmarks(landmarks: np.ndarray) -> Box:
    """The axis-aligned box around where MTCNN's box would be for a face with these (5, 2)
    landmarks (FACE_BOX carried from the mean shape onto the face)."""
    to_face = similarity(MEAN_SHAPE, landmarks)  # (2, 3)
    (x0, y0), (x1, y1) = FACE_BOX
    corners = np.array([(x0, y0, 1), (x1, y0, 1), (x0, y1, 1), (x1, y1, 1)]) @ to_face.T  # (4, 2)
    left, top = corners.min(0)
    right, bottom = corners.max(0)
    return Box(float(left), float(top), float(right - left), float(bottom - top))
