"""In-the-wild nuisance around the faces: head motion, camera, occluders and imperfect crops.

A raw video frame holds one or two people in a room under uneven light, with blur and sensor
noise; the aligned crop is cut from it with the small shift, scale and roll errors an aligner makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from emodistill.data.synth.face import CROP_CENTRE_Y, CROP_SPAN, SUPERSAMPLE, draw_face, face_landmarks
from emodistill.data.synth.identity import Identity, Pose
from emodistill.data.synth.painter import anchor
from emodistill.data.synth.signals import ou_process, smoothstep

RAW_SCALE = 1.7  # raw frame height per crop size: the crop is cut from a wider view
_NOISE_MARGIN = 32  # pixels of slack in the noise bank, so each frame reads a shifted window


@dataclass
class Occluder:
    """A hand or object passing in front of the face."""

    kind: str  # "hand" | "object"
    colour: tuple[float, float, float]  # BGR
    path: np.ndarray  # (F, 2) position in face units relative to the head centre
    presence: np.ndarray  # (F,) 0 out of view .. 1 fully in place


@dataclass
class HeadTrack:
    """Per-frame appearance of one subject in the raw video and the aligner's errors."""

    yaw: np.ndarray  # (F,) radians
    pitch: np.ndarray  # (F,) radians
    roll: np.ndarray  # (F,) radians
    x: np.ndarray  # (F,) head centre, fraction of the subject's slot width
    y: np.ndarray  # (F,) head centre, fraction of the frame height
    zoom: np.ndarray  # (F,) head size relative to a 1:1 crop
    gaze: np.ndarray  # (F, 2) iris offset, -1..1
    blink: np.ndarray  # (F,) lid closure 0..1
    crop_shift: np.ndarray  # (F, 2) aligner's centre error, face units
    crop_scale: np.ndarray  # (F,) aligner's scale error factor
    crop_roll: np.ndarray  # (F,) roll the aligner leaves in the crop, radians
    occluder: Occluder | None  # a hand or object in front of the face, if any
    found: np.ndarray  # (F,) bool, False where the face detector lost the face (no crop)


@dataclass
class Camera:
    """What the camera adds to a whole raw video."""

    background: np.ndarray  # (2H, 2W, 3) uint8, the room at the drawing resolution
    light: np.ndarray  # (H, W, 3) float32 gain: light falloff and colour cast
    exposure: np.ndarray  # (F,) float32 overall gain drift
    blur: np.ndarray  # (F,) Gaussian blur sigma in raw pixels (defocus, motion)
    noise: np.ndarray  # (2, H + margin, W + margin, 3) float32 sensor noise bank


def _blinks(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Lid closure of blinks every few seconds, each about 0.2 s."""
    closure = np.zeros(n)
    t = rng.uniform(0.0, 3.0) * fps
    while t < n:
        frames = np.arange(n)
        closure = np.maximum(closure, smoothstep(1.0 - np.abs(frames - t) / (0.1 * fps)))
        t += rng.gamma(4.0, 0.9) * fps
    return closure


def _occluder(rng: np.random.Generator, n: int, fps: float, skin: tuple[float, float, float]) -> Occluder:
    """A hand raised to the mouth, cheek or chin (or a cup, a phone) and taken away again."""
    kind = "hand" if rng.random() < 0.7 else "object"
    target = np.array([(0.0, 0.75), (0.55, 0.35), (-0.55, 0.35), (0.0, 1.05)][rng.integers(4)])
    start = target + np.array([rng.uniform(-1.0, 1.0), 3.0])  # comes up from below the frame
    centre, length = rng.uniform(0.2, 0.8) * n, rng.uniform(0.6, 2.0) * fps
    frames = np.arange(n)
    presence = smoothstep((frames - centre + length / 2) / (0.25 * fps)) * smoothstep(
        (centre + length / 2 - frames) / (0.25 * fps)
    )
    colour = tuple(np.asarray(skin) * 0.95) if kind == "hand" else tuple(rng.uniform(30, 230, 3))
    return Occluder(
        kind=kind,
        colour=colour,
        path=start + presence[:, None] * (target - start),
        presence=presence,
    )


def head_track(rng: np.random.Generator, n: int, fps: float, skin: tuple[float, float, float]) -> HeadTrack:
    """Smooth random head motion, gaze, blinks, alignment errors and occasional occlusion."""
    yaw = rng.normal(0.0, 0.15) + ou_process(rng, n, 0.2, 1.2 * fps)[:, 0]
    occluder = _occluder(rng, n, fps, skin) if rng.random() < 0.25 else None
    found = np.abs(yaw) < 0.8  # near-profile views defeat the detector
    if occluder is not None and rng.random() < 0.2:
        found &= occluder.presence < 0.95
    if rng.random() < 0.1:  # a short dropout for no visible reason, as real detectors have
        start = rng.integers(n)
        found[start : start + rng.integers(2, 8)] = False
    return HeadTrack(
        yaw=np.clip(yaw, -0.85, 0.85),
        pitch=rng.normal(0.0, 0.08) + ou_process(rng, n, 0.1, 1.0 * fps)[:, 0],
        roll=rng.normal(0.0, 0.08) + ou_process(rng, n, 0.06, 1.5 * fps)[:, 0],
        x=0.5 + ou_process(rng, n, 0.04, 2.0 * fps)[:, 0],
        y=0.45 + ou_process(rng, n, 0.03, 2.0 * fps)[:, 0],
        zoom=np.exp(rng.normal(0.0, 0.08) + ou_process(rng, n, 0.04, 2.0 * fps)[:, 0]),
        gaze=np.clip(ou_process(rng, n, 0.45, 0.4 * fps, 2), -1.0, 1.0),
        blink=_blinks(rng, n, fps),
        crop_shift=rng.normal(0.0, 0.05, 2) + ou_process(rng, n, 0.025, 0.3 * fps, 2),
        crop_scale=np.exp(rng.normal(0.0, 0.04) + ou_process(rng, n, 0.02, 0.3 * fps)[:, 0]),
        crop_roll=rng.normal(0.0, 0.03) + ou_process(rng, n, 0.03, 0.5 * fps)[:, 0],
        occluder=occluder,
        found=found,
    )


def raw_shape(size: int, subjects: int) -> tuple[int, int]:
    """(height, width) of the raw video: one square slot per subject, even for H.264."""
    height = 2 * round(RAW_SCALE * size / 2)
    return height, height * subjects


def _room(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blurred room: a wall gradient with a few out-of-focus panels (door, window, shelf)."""
    wall = rng.uniform(60, 210, 3)
    ramp = np.linspace(1.0 + rng.uniform(-0.2, 0.2), 1.0, height)[:, None, None]  # (H, 1, 1)
    room = np.broadcast_to(ramp * wall, (height, width, 3)).astype(np.uint8).copy()
    for _ in range(rng.integers(1, 5)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = (
            x0 + rng.integers(width // 8, width // 2),
            y0 + rng.integers(height // 8, height // 2),
        )
        cv2.rectangle(room, (int(x0), int(y0)), (int(x1), int(y1)), tuple(rng.uniform(20, 240, 3)), -1)
    return cv2.GaussianBlur(room, (0, 0), height / 60)


def camera(rng: np.random.Generator, n: int, fps: float, size: int, subjects: int) -> Camera:
    """Room, lighting, exposure drift, blur and sensor noise of one raw video."""
    height, width = raw_shape(size, subjects)
    yy, xx = np.mgrid[-1 : 1 : height * 1j, -1 : 1 : width * 1j]
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.45)
    falloff = 1.0 + strength * (np.cos(angle) * xx + np.sin(angle) * yy)  # light from one side
    tint = 1.0 + rng.normal(0.0, 0.06, 3)
    light = (falloff[..., None] * tint).astype(np.float32)  # (H, W, 3)
    blur_base = rng.uniform(0.0, 1.0) * size / 112
    shake = np.maximum(ou_process(rng, n, 1.0, fps)[:, 0] - 1.0, 0.0)  # occasional motion blur
    noise = rng.standard_normal((2, height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3), dtype=np.float32)
    return Camera(
        background=_room(rng, height * SUPERSAMPLE, width * SUPERSAMPLE),
        light=light,
        exposure=(rng.uniform(0.7, 1.2) * np.exp(ou_process(rng, n, 0.05, 2.0 * fps)[:, 0])).astype(np.float32),
        blur=blur_base + 0.8 * shake * size / 112,
        noise=noise * np.float32(rng.uniform(1.5, 7.0)),
    )


def _pose(track: HeadTrack, t: int, slot: int, height: int) -> Pose:
    """The head's pose at frame t, in pixels of the supersampled canvas."""
    scale = SUPERSAMPLE * height / RAW_SCALE / CROP_SPAN * track.zoom[t]
    return Pose(
        x=SUPERSAMPLE * height * (slot + track.x[t]),
        y=SUPERSAMPLE * height * track.y[t],
        scale=scale,
        yaw=track.yaw[t],
        pitch=track.pitch[t],
        roll=track.roll[t],
    )


def _point(xy: np.ndarray) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))


def _draw_occluder(canvas: np.ndarray, occluder: Occluder, t: int, pose: Pose) -> None:
    """Draw a hand (palm, four fingers, thumb) or a rounded object in front of the face."""
    if occluder.presence[t] < 0.02:
        return
    centre = anchor(Pose(pose.x, pose.y, pose.scale, roll=pose.roll), (*occluder.path[t], 1.5))
    unit, colour = pose.scale, occluder.colour
    if occluder.kind == "object":
        half = np.array([0.28, 0.5]) * unit
        cv2.rectangle(canvas, _point(centre - half), _point(centre + half), colour, -1, cv2.LINE_AA)
        shine = tuple(min(c + 40, 255) for c in colour)
        cv2.line(
            canvas,
            _point(centre + [-0.6, -1.0] * half),
            _point(centre + [-0.6, 0.8] * half),
            shine,
            max(1, int(0.06 * unit)),
            cv2.LINE_AA,
        )
        return
    palm = centre + np.array([0.0, 0.35 * unit])
    cv2.ellipse(
        canvas,
        _point(palm),
        (int(0.33 * unit), int(0.38 * unit)),
        0,
        0,
        360,
        colour,
        -1,
        cv2.LINE_AA,
    )
    crease = tuple(c * 0.8 for c in colour)
    for k, lean in enumerate((-0.3, -0.1, 0.1, 0.3)):
        base = palm + np.array([-0.24 + 0.16 * k, -0.2]) * unit
        tip = base + np.array([lean, -1.0]) * (0.45 - 0.05 * abs(k - 1.5)) * unit
        # A darker, wider stroke under each finger outlines it against the palm and the face.
        for shade, width in ((crease, 0.15), (colour, 0.12)):
            cv2.line(canvas, _point(base), _point(tip), shade, max(1, int(width * unit)), cv2.LINE_AA)
    thumb = palm + np.array([0.3, 0.0]) * unit
    cv2.line(
        canvas,
        _point(thumb),
        _point(thumb + np.array([0.3, -0.25]) * unit),
        colour,
        max(1, int(0.13 * unit)),
        cv2.LINE_AA,
    )


def _crop_transform(track: HeadTrack, t: int, pose: Pose, size: int) -> np.ndarray:
    """2x3 affine from raw-frame pixels to the aligned crop, with the aligner's errors."""
    raw_pose = Pose(
        pose.x / SUPERSAMPLE,
        pose.y / SUPERSAMPLE,
        pose.scale / SUPERSAMPLE,
        pose.yaw,
        pose.pitch,
        pose.roll,
    )
    # The aligner centres on the visible face (landmarks), which turns with the head.
    centre = anchor(raw_pose, (track.crop_shift[t, 0], CROP_CENTRE_Y + track.crop_shift[t, 1], 0.6))
    zoom = size / (CROP_SPAN * raw_pose.scale * track.crop_scale[t])
    angle = pose.roll - track.crop_roll[t]
    cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
    rotate = np.array([[cos, sin], [-sin, cos]])  # undo the head roll: crops come out upright
    return np.column_stack([rotate, size / 2 - rotate @ centre])


def render(
    camera: Camera,
    people: list[tuple[Identity, HeadTrack, np.ndarray]],
    size: int,
    rng: np.random.Generator,
) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]:
    """Yield (raw BGR frame (H, W, 3), [aligned crop (size, size, 3) per person], [landmarks
    (27, 2) per person]) for every frame.

    Landmarks are in crop coordinates divided by `size` (0..1 inside the crop), carried through
    the same aligner transform as the crop. `people` holds each subject's identity, head track
    and AU intensities (F, 12), left to right.
    """
    height, width = camera.light.shape[:2]
    for t in range(len(camera.exposure)):
        canvas = camera.background.copy()  # (2H, 2W, 3)
        poses = [_pose(track, t, slot, height) for slot, (_, track, _) in enumerate(people)]
        for (who, track, au), pose in zip(people, poses, strict=True):
            draw_face(canvas, who, au[t], pose, tuple(track.gaze[t]), float(track.blink[t]))
            if track.occluder is not None:
                _draw_occluder(canvas, track.occluder, t, pose)
        frame = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        frame *= camera.light * camera.exposure[t]
        if camera.blur[t] > 0.3:
            frame = cv2.GaussianBlur(frame, (0, 0), float(camera.blur[t]))
        dy, dx = rng.integers(0, _NOISE_MARGIN, 2)
        frame += camera.noise[t % 2, dy : dy + height, dx : dx + width]
        raw = np.clip(frame, 0, 255).astype(np.uint8)
        transforms = [_crop_transform(track, t, pose, size) for (_, track, _), pose in zip(people, poses, strict=True)]
        crops = [
            cv2.warpAffine(raw, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for affine in transforms
        ]
        landmarks = []
        for (who, track, au), pose, affine in zip(people, poses, transforms, strict=True):
            raw_points = face_landmarks(who, au[t], pose, float(track.blink[t])) / SUPERSAMPLE  # (27, 2)
            landmarks.append((raw_points @ affine[:, :2].T + affine[:, 2]) / size)
        yield raw, crops, landmarks
