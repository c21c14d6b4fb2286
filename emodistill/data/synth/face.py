"""Parametric faces of synthetic identities whose 12 action units are visible geometric changes.

A face is a set of curves on a head ellipsoid, turned by yaw/pitch/roll and projected; each AU
moves the brows, lids, cheeks, nose or lips as FACS describes. Drawn with OpenCV anti-aliasing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from emodistill.tasks import AU

_SHIFT = 4  # fractional bits of OpenCV's sub-pixel drawing
SUPERSAMPLE = 2  # faces are drawn at twice the output size, then area-averaged down
# An aligned crop spans this many face units, centred this far below the head centre.
CROP_SPAN = 2.6
CROP_CENTRE_Y = 0.2
_AU = {name: i for i, name in enumerate(AU.names)}
# BGR, light to dark
_SKIN = np.array([[200, 222, 250], [170, 200, 240], [140, 180, 225], [110, 150, 200], [80, 115, 170],
                  [60, 90, 140], [45, 65, 105]], dtype=np.float64)
_HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 70, 110], [60, 110, 170], [150, 160, 170],
                  [30, 30, 35], [50, 50, 60]], dtype=np.float64)
_IRIS = np.array([[30, 50, 80], [40, 70, 110], [130, 110, 60], [80, 120, 80], [25, 35, 45]], dtype=np.float64)
Colour = tuple[float, float, float]
# A recorded drawing step: points (N, 4), colour, line width in pixels (0 fills the polygon),
# closed line, turned with the torso rather than the head.
_Op = tuple[np.ndarray, Colour, int, bool, bool]


@dataclass(frozen=True)
class Identity:
    """How one synthetic person looks; lengths are in units of half the face width."""

    skin: Colour  # BGR skin tone
    hair: Colour  # BGR hair and brow colour
    iris: Colour  # BGR iris colour
    clothes: Colour  # BGR shirt colour
    head_height: float  # half-height of the head ellipsoid
    jaw_taper: float  # how much narrower the chin is than the cheeks (0..1)
    eye_spacing: float  # eye centre distance from the midline
    eye_width: float  # half-width of an eye
    eye_open: float  # half-height of an open eye
    brow_y: float  # brow height (negative is up)
    brow_thickness: float  # brow thickness at its inner end
    nose_y: float  # height of the nostrils
    nose_width: float  # half-width of the nose wings
    mouth_y: float  # height of the closed lips' meeting line
    mouth_width: float  # half-width of the relaxed mouth
    lip_thickness: float  # upper lip height (the lower lip is a third thicker)
    hairstyle: int  # 0 shaved, 1 short, 2 long
    hairline: float  # forehead hairline height
    glasses: int  # 0 none, 1 round, 2 rectangular frames
    frame_colour: Colour  # BGR colour of the glasses' frames


@dataclass(frozen=True)
class Pose:
    """Where and how the head appears on the canvas."""

    x: float  # head centre, canvas pixels
    y: float  # head centre, canvas pixels
    scale: float  # canvas pixels per face unit (half the face width)
    yaw: float = 0.0  # radians, positive turns the nose to the image's right
    pitch: float = 0.0  # radians, positive tilts the nose up
    roll: float = 0.0  # radians, in-plane rotation


def random_identity(rng: np.random.Generator) -> Identity:
    """Draw one person: face shape, skin tone, hair, eyes, glasses."""
    tone = rng.uniform(0, len(_SKIN) - 1)  # anywhere between two neighbouring palette tones
    skin = np.array([np.interp(tone, np.arange(len(_SKIN)), channel) for channel in _SKIN.T])
    skin = skin * rng.uniform(0.95, 1.05, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    glasses = int(rng.choice(3, p=[0.72, 0.14, 0.14]))
    return Identity(
        skin=_colour(skin),
        hair=_colour(hair),
        iris=_colour(_IRIS[rng.integers(len(_IRIS))]),
        clothes=_colour(rng.uniform(30, 220, 3)),
        head_height=float(rng.uniform(1.22, 1.42)),
        jaw_taper=float(rng.uniform(0.25, 0.5)),
        eye_spacing=float(rng.uniform(0.34, 0.41)),
        eye_width=float(rng.uniform(0.15, 0.19)),
        eye_open=float(rng.uniform(0.065, 0.09)),
        brow_y=float(rng.uniform(-0.36, -0.29)),
        brow_thickness=float(rng.uniform(0.045, 0.075)),
        nose_y=float(rng.uniform(0.33, 0.42)),
        nose_width=float(rng.uniform(0.1, 0.14)),
        mouth_y=float(rng.uniform(0.66, 0.74)),
        mouth_width=float(rng.uniform(0.26, 0.32)),
        lip_thickness=float(rng.uniform(0.06, 0.09)),
        hairstyle=int(rng.choice(3, p=[0.15, 0.5, 0.35])),
        hairline=float(rng.uniform(-0.85, -0.65)),
        glasses=glasses,
        frame_colour=_colour(rng.uniform(10, 90, 3) if rng.random() < 0.7 else rng.uniform(60, 200, 3)),
    )


def _colour(bgr: np.ndarray) -> Colour:
    b, g, r = np.clip(bgr, 0, 255)
    return float(b), float(g), float(r)


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    """Blend colour a towards b by t (0..1); plain floats, as it runs dozens of times a frame."""
    t = min(max(float(t), 0.0), 1.0)
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), a[2] + t * (b[2] - a[2]))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Rx(pitch) Ry(yaw) in image axes (x right, y down, z towards the camera)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


@cache
def _grid(lo: float, hi: float, n: int, endpoint: bool = True) -> np.ndarray:
    """np.linspace, computed once: the same few grids are used for every face of every frame."""
    grid = np.linspace(lo, hi, n, endpoint=endpoint)
    grid.flags.writeable = False
    return grid


def _arc(u: np.ndarray, power: float) -> np.ndarray:
    """(1 - u^2)^power: a bump that is 1 at u = 0 and 0 at u = +/-1."""
    return np.clip(1.0 - u**2, 0.0, 1.0) ** power


def _to_canvas(points: np.ndarray, rotation: np.ndarray, pose: Pose) -> np.ndarray:
    """3D head points (N, 3) -> canvas pixels (N, 2): rotate, project orthographically, place."""
    return (points @ rotation.T)[:, :2] * pose.scale + (pose.x, pose.y)


class _Painter:
    """Records one face's drawing in head coordinates, then projects and draws it in one go.

    Points are rows (x, y, z, on_face): on_face rows hold a face-plane point and a height above
    the head surface in z, lifted onto the ellipsoid at the end. Batching the projection keeps
    the per-frame cost to a few NumPy calls plus the OpenCV drawing.
    """

    def __init__(self, canvas: np.ndarray, who: Identity, pose: Pose):
        self.canvas, self.who, self.pose = canvas, who, pose
        self.rotation = _rotation(pose.yaw, pose.pitch, pose.roll)
        self.body_rotation = _rotation(0.3 * pose.yaw, 0.0, 0.3 * pose.roll)  # the torso turns less
        self.axes = np.array([1.0, who.head_height, 0.95])
        self.drop = 0.0  # jaw drop of the current frame (AU26)
        self.ops: list[_Op] = []
        # Outline basis: two unit vectors orthogonal to the view direction in the sphere the
        # head ellipsoid is a scaling of (see `silhouette`).
        view = self.rotation[2] / self.axes
        first = np.cross(view, [1.0, 0.0, 0.0])
        self.outline_basis = np.stack(
            [
                first / np.linalg.norm(first),
                np.cross(view / np.linalg.norm(view), first) / np.linalg.norm(first),
            ]
        )

    # Geometry -------------------------------------------------------------------------------
    def jaw(self, y: np.ndarray) -> np.ndarray:
        """Vertical shift of face points below the mouth when the jaw drops."""
        return self.drop * np.clip((y - self.who.mouth_y - 0.03) / 0.3, 0.0, 1.0) ** 0.5

    @staticmethod
    def plane(x: np.ndarray, y: np.ndarray, dz: float | np.ndarray = 0.0) -> np.ndarray:
        """Face-plane points `dz` above the head surface, as rows to lift later: (N, 4)."""
        rows = np.empty((max(np.size(x), np.size(y)), 4))
        rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = x, y, dz, 1.0
        return rows

    @staticmethod
    def solid(points: np.ndarray) -> np.ndarray:
        """3D head points (N, 3) as rows: (N, 4)."""
        return np.column_stack([points, np.zeros(len(points))])

    def silhouette(self, grow: float = 1.0, n: int = 72) -> np.ndarray:
        """Outline of the head ellipsoid seen from the camera, tapered to the jaw: (n, 3) points.

        The ellipsoid's outline is where its normal is perpendicular to the view direction: a
        great circle in the sphere the ellipsoid is a scaling of.
        """
        angle = _grid(0.0, 2.0 * np.pi, n, False)[:, None]
        first, second = self.outline_basis
        ring = (np.cos(angle) * first + np.sin(angle) * second) * self.axes * grow  # (n, 3)
        below = np.clip((ring[:, 1] - 0.1) / (self.axes[1] - 0.1), 0.0, 1.0)
        ring[:, 0] *= 1.0 - self.who.jaw_taper * below**1.5
        ring[:, 1] += self.jaw(ring[:, 1])
        return ring

    # Drawing --------------------------------------------------------------------------------
    def fill(self, points: np.ndarray, colour: Colour, body: bool = False) -> None:
        """A filled polygon; `body` points turn with the torso, not the head."""
        self.ops.append((points, colour, 0, False, body))

    def line(self, points: np.ndarray, colour: Colour, width: float, closed: bool = False) -> None:
        """A polyline `width` face units thick (at least one pixel)."""
        self.ops.append((points, colour, max(1, round(width * self.pose.scale)), closed, False))

    def crease(self, x: np.ndarray, y: np.ndarray, strength: float, width: float = 0.018) -> None:
        """A skin fold, darker the stronger the muscle pulls; invisible when slack."""
        if strength > 0.05:
            self.line(self.plane(x, y), _mix(self.who.skin, (0, 0, 0), 0.45 * strength), width)

    def lift(self, rows: np.ndarray) -> np.ndarray:
        """Rows (M, 4) -> 3D head points (M, 3): face-plane rows go onto the ellipsoid."""
        x, y, z, on_face = rows.T
        depth = np.sqrt(np.clip(1.0 - x**2 - (y / self.axes[1]) ** 2, 0.03, 1.0)) * self.axes[2]
        return np.stack([x, y, np.where(on_face > 0, depth + z, z)], axis=1)

    def flush(self) -> None:
        """Lift, project and draw everything recorded, in order: later shapes cover earlier ones."""
        points = self.lift(np.concatenate([op[0] for op in self.ops]))  # (M, 3)
        body = np.repeat([op[4] for op in self.ops], [len(op[0]) for op in self.ops])
        pixels = np.where(
            body[:, None],
            _to_canvas(points, self.body_rotation, self.pose),
            _to_canvas(points, self.rotation, self.pose),
        )  # (M, 2)
        fixed = np.round(pixels * (1 << _SHIFT)).astype(np.int32)
        offsets = np.cumsum([len(op[0]) for op in self.ops])[:-1]
        for (_, colour, width, closed, _), polygon in zip(self.ops, np.split(fixed, offsets), strict=True):
            if width:
                cv2.polylines(self.canvas, [polygon], closed, colour, width, cv2.LINE_AA, _SHIFT)
            else:
                cv2.fillPoly(self.canvas, [polygon], colour, cv2.LINE_AA, _SHIFT)


def anchor(pose: Pose, point: tuple[float, float, float]) -> np.ndarray:
    """Canvas pixel (2,) where head point (x, y, z) in face units lands under `pose`."""
    rotation = _rotation(pose.yaw, pose.pitch, pose.roll)
    return _to_canvas(np.asarray([point], float), rotation, pose)[0]


def _contiguous(mask: np.ndarray) -> np.ndarray:
    """Indices of the single run of True in a circular mask, in order around the circle."""
    if mask.all():
        return np.arange(len(mask))
    first = int(np.flatnonzero(mask & ~np.roll(mask, 1))[0])
    order = (first + np.arange(len(mask))) % len(mask)
    return order[mask[order]]


def _body(p: _Painter) -> None:
    """Long hair behind the head, shoulders in the shirt colour, neck, ears."""
    who = p.who
    if who.hairstyle == 2:
        angle = _grid(-np.pi / 2, np.pi / 2, 24)
        top = np.stack([1.15 * np.sin(angle), -1.1 * who.head_height * np.cos(angle)], 1)
        tail = np.array([[1.2, 1.2], [0.8, 1.55], [-0.8, 1.55], [-1.2, 1.2]])
        outline = np.concatenate([top, tail])
        p.fill(p.solid(np.column_stack([outline, np.full(len(outline), -0.5)])), who.hair)
    shoulders = np.array([[-3.0, 4.0], [-2.7, 2.5], [-1.1, 1.95], [1.1, 1.95], [2.7, 2.5], [3.0, 4.0]])
    p.fill(p.solid(np.column_stack([shoulders, np.zeros(6)])), who.clothes, body=True)
    neck = np.array([[-0.45, 0.6], [0.45, 0.6], [0.5, 2.05], [0.0, 2.35], [-0.5, 2.05]])
    p.fill(
        p.solid(np.column_stack([neck, np.full(5, -0.3)])),
        _mix(who.skin, (0, 0, 0), 0.15),
        body=True,
    )
    angle = _grid(0.0, 2 * np.pi, 16, False)
    for side in (-1.0, 1.0):
        u, v = 0.1 * np.cos(angle) + 0.05, 0.22 * np.sin(angle)
        ear = np.stack([side * (0.95 + 0.7 * u), 0.05 + v, -0.1 - 0.7 * u], 1)
        p.fill(p.solid(ear), _mix(who.skin, (0, 0, 0), 0.1))


def _head(p: _Painter) -> None:
    """Skin of the head and the hair cap above the hairline."""
    who = p.who
    p.fill(p.solid(p.silhouette()), who.skin)
    if who.hairstyle == 0:
        return
    ring = p.silhouette(1.05)
    temple = who.hairline + 0.45
    arc = ring[_contiguous(ring[:, 1] < temple)]
    x = _grid(-0.97, 0.97, 17)
    hairline = p.plane(x, who.hairline + 0.45 * np.abs(x) ** 2.5, 0.01)
    if arc[0, 0] < 0:
        hairline = hairline[::-1]
    p.fill(np.concatenate([p.solid(arc), hairline]), who.hair)


def _brows(p: _Painter, au: np.ndarray) -> None:
    """Brows (AU1 inner raise, AU2 outer raise, AU4 lower and knit) and the folds they make."""
    who = p.who
    a1, a2, a4 = au[_AU["AU1"]], au[_AU["AU2"]], au[_AU["AU4"]]
    u = _grid(0.0, 1.0, 13)
    for side in (-1.0, 1.0):
        inner = np.array([side * (0.12 - 0.05 * a4), who.brow_y + 0.02 - 0.13 * a1 + 0.09 * a4])
        middle = np.array([side * 0.34, who.brow_y - 0.05 - 0.05 * a1 - 0.06 * a2 + 0.05 * a4])
        outer = np.array([side * 0.57, who.brow_y + 0.01 - 0.13 * a2 + 0.02 * a4])
        control = 2.0 * middle - 0.5 * (inner + outer)  # quadratic Bezier through `middle` at u=0.5
        curve = ((1 - u) ** 2)[:, None] * inner + (2 * u * (1 - u))[:, None] * control + (u**2)[:, None] * outer
        half = who.brow_thickness * (1.1 - 0.6 * u) / 2
        edge = np.concatenate([curve[:, 1] - half, (curve[:, 1] + half)[::-1]])
        p.fill(
            p.plane(np.concatenate([curve[:, 0], curve[::-1, 0]]), edge, 0.01),
            _mix(who.hair, (0, 0, 0), 0.2),
        )
        p.crease(np.full(2, side * 0.05), who.brow_y + np.array([0.0, 0.14]), a4, 0.02)  # glabella
    x = _grid(-0.45, 0.45, 15)
    lift = a1 * _arc(x / 0.45, 1.0) + a2 * (np.abs(x) / 0.45) ** 2
    for k in range(3):
        p.crease(x, who.brow_y - 0.2 - 0.09 * k - 0.05 * lift, max(a1, a2) * (1.0 - 0.2 * k), 0.014)


def _eyes(p: _Painter, au: np.ndarray, gaze: tuple[float, float], blink: float) -> None:
    """Eyes (AU6 cheek raise and AU7 lid tightening narrow them from below) with their folds."""
    who = p.who
    a4, a6, a7 = au[_AU["AU4"]], au[_AU["AU6"]], au[_AU["AU7"]]
    upper_open = who.eye_open * (1.0 - 0.2 * a7 - 0.15 * a6 - 0.2 * a4) * (1.0 - blink)
    lower_open = 0.75 * who.eye_open * (1.0 - 0.6 * a7 - 0.45 * a6) * (1.0 - 0.5 * blink)
    u = _grid(-1.0, 1.0, 15)
    dark = _mix(who.skin, (20, 20, 30), 0.8)
    for side in (-1.0, 1.0):
        cx, cy = side * who.eye_spacing, 0.0
        x = cx + u * who.eye_width
        tilt = 0.012 * side * u  # outer corners sit a little higher
        top = cy - upper_open * _arc(u, 0.8) - tilt
        bottom = cy + lower_open * _arc(u, 0.9) * (1.0 - 0.4 * a7 * _arc(u, 0.3)) - tilt
        p.fill(
            p.plane(np.concatenate([x, x[::-1]]), np.concatenate([top, bottom[::-1]])),
            (225, 232, 238),
        )
        for radius, colour in ((0.068, who.iris), (0.03, (15, 15, 15))):
            angle = _grid(0.0, 2 * np.pi, 20, False)
            ix = np.clip(cx + 0.45 * who.eye_width * gaze[0] + radius * np.cos(angle), x[0], x[-1])
            iy = np.clip(
                cy + 0.02 * gaze[1] + radius * np.sin(angle),
                np.interp(ix, x, top),
                np.interp(ix, x, bottom),
            )  # the lids cover the iris
            p.fill(p.plane(ix, iy, 0.01), colour)
        p.line(p.plane(x, top, 0.01), dark, 0.03)
        p.line(p.plane(x, bottom), _mix(who.skin, (0, 0, 0), 0.3 + 0.3 * a7), 0.012 + 0.012 * a7)
        p.crease(x[2:-2], top[2:-2] - 0.05 - 0.3 * upper_open, 0.5, 0.012)  # lid fold
        p.crease(x[3:-1], bottom[3:-1] + 0.06 - 0.03 * a6 + 0.02 * _arc(u[3:-1], 1.0), a6)
        corner = np.array([cx + side * (who.eye_width + 0.03), cy])
        for fan in (-0.6, 0.0, 0.6):  # crow's feet
            ray = corner + np.outer([0.0, 0.11], [side * np.cos(fan), np.sin(fan)])
            p.crease(ray[:, 0], ray[:, 1], a6, 0.014)


def _cheeks_and_nose(p: _Painter, au: np.ndarray, corner: np.ndarray) -> None:
    """Cheek bulges (AU6), nasolabial folds (deepened by AU6, AU10, AU12) and the nose (AU10)."""
    who = p.who
    a6, a10, a12 = au[_AU["AU6"]], au[_AU["AU10"]], au[_AU["AU12"]]
    angle = _grid(0.0, 2 * np.pi, 24, False)
    lift = 0.035 * a10
    for side in (-1.0, 1.0):
        cheek = [side * 0.45 + 0.17 * np.cos(angle), 0.3 - 0.1 * a6 + 0.1 * np.sin(angle)]
        p.fill(p.plane(*cheek), _mix(who.skin, (170, 170, 255), 0.06 + 0.14 * a6))
        t = _grid(0.0, 1.0, 9)
        start = np.array([side * (who.nose_width + 0.04), who.nose_y - 0.05 - lift])
        end = np.array([corner[0] * side + side * 0.07, corner[1] + 0.05])
        fold = start + np.outer(t, end - start) + np.outer(np.sin(np.pi * t), [side * 0.08, 0.0])
        p.crease(fold[:, 0], fold[:, 1], 0.2 + 0.8 * max(a12, a10, 0.7 * a6), 0.02)
    bridge = 0.08 + (who.nose_y - 0.16) * _grid(0.0, 1.0, 6)
    height = 0.25 * _grid(0.3, 1.0, 6)
    p.line(p.plane(np.full(6, 0.06), bridge, height), _mix(who.skin, (0, 0, 0), 0.25), 0.02)
    for side in (-1.0, 1.0):
        wing = _grid(0.0, np.pi, 8)
        wx = side * (who.nose_width * (1.0 + 0.15 * a10) - 0.04 * (1 - np.cos(wing)))
        wy = who.nose_y - lift - 0.05 * np.sin(wing)
        p.line(p.plane(wx, wy, 0.08), _mix(who.skin, (0, 0, 0), 0.3), 0.018)
        nostril = [
            side * 0.05 + 0.032 * np.cos(angle),
            who.nose_y - lift + 0.01 + 0.016 * np.sin(angle),
        ]
        p.fill(p.plane(*nostril, 0.1), _mix(who.skin, (0, 0, 0), 0.55))


def _mouth_corner(who: Identity, au: np.ndarray) -> np.ndarray:
    """(x, y) of the right mouth corner: AU12 pulls it up and out, AU15 down, AU23/AU24 in."""
    a12, a15, a23, a24 = (au[_AU[n]] for n in ("AU12", "AU15", "AU23", "AU24"))
    width = who.mouth_width * (1.0 + 0.3 * a12 - 0.4 * a23 - 0.1 * a24)
    return np.array([width, who.mouth_y - 0.11 * a12 + 0.1 * a15])


def _mouth(p: _Painter, au: np.ndarray, corner: np.ndarray) -> None:
    """Lips: AU10 lifts the upper lip, AU23 tightens, AU24 presses, AU25 parts, AU26 opens."""
    who = p.who
    a10, a15, a23, a24, a25 = (au[_AU[n]] for n in ("AU10", "AU15", "AU23", "AU24", "AU25"))
    u = _grid(-1.0, 1.0, 21)
    x = u * corner[0]
    # Meeting line: a parabola through the corners; pressing the lips (AU24) flattens it.
    base = who.mouth_y + (corner[1] - who.mouth_y) * u**2 * (1.0 - 0.5 * a24)
    raise_upper = 0.075 * a10 * _arc(u, 0.3) * (1.0 - u**4)
    upper_inner = base - 0.6 * raise_upper - 0.02 * a25 * _arc(u, 0.7)
    lower_inner = base + (0.06 * a25 + p.drop) * _arc(u, 0.6)
    thin = 1.0 - 0.55 * a23 - 0.7 * a24
    bow = 1.0 - 0.35 * np.exp(-((u / 0.15) ** 2))  # Cupid's bow
    upper_outer = upper_inner - 0.4 * raise_upper - who.lip_thickness * thin * _arc(u, 0.45) * bow
    lower_outer = lower_inner + 1.35 * who.lip_thickness * thin * _arc(u, 0.5) + 0.03 * a15 * u**2
    lips = _mix(who.skin, (90, 70, 180), 0.4 + 0.2 * max(a23, a24))
    p.fill(
        p.plane(np.concatenate([x, x[::-1]]), np.concatenate([upper_outer, lower_outer[::-1]]), 0.02),
        lips,
    )
    gap = lower_inner - upper_inner
    if gap.max() > 0.01:
        p.fill(
            p.plane(np.concatenate([x, x[::-1]]), np.concatenate([upper_inner, lower_inner[::-1]]), 0.02),
            (40, 30, 60),
        )
        teeth = np.minimum(upper_inner + 0.06 * _arc(u, 0.3), lower_inner)
        p.fill(
            p.plane(np.concatenate([x, x[::-1]]), np.concatenate([upper_inner, teeth[::-1]]), 0.02),
            (215, 225, 230),
        )
    p.line(p.plane(x, base + 0.5 * (gap.clip(0.0, 0.004)), 0.02), _mix(lips, (0, 0, 0), 0.5), 0.012)
    for side in (-1.0, 1.0):  # corner folds: pulled down (AU15) or tightened (AU23, AU24)
        cx, cy = side * corner[0], corner[1]
        p.crease(np.array([cx, cx + side * 0.03]), np.array([cy + 0.02, cy + 0.12]), a15, 0.016)
        p.crease(
            np.array([cx + side * 0.02, cx + side * 0.03]),
            np.array([cy - 0.03, cy + 0.03]),
            max(a23, a24),
            0.016,
        )
    chin = _grid(-0.14, 0.14, 9)
    chin_y = lower_outer[10] + 0.07 + 0.03 * _arc(chin / 0.14, 1.0)
    p.crease(chin, chin_y, a24, 0.016)  # chin boss pushed up by the pressed lips


def _glasses(p: _Painter) -> None:
    """Round or rectangular frames (superellipses) with a bridge and the arms towards the ears."""
    who = p.who
    angle = _grid(0.0, 2 * np.pi, 28, False)
    exponent = 2.0 if who.glasses == 1 else 5.0
    ring = np.stack(
        [
            np.sign(np.cos(angle)) * np.abs(np.cos(angle)) ** (2 / exponent),
            np.sign(np.sin(angle)) * np.abs(np.sin(angle)) ** (2 / exponent),
        ],
        1,
    )
    for side in (-1.0, 1.0):
        cx = side * who.eye_spacing
        p.line(
            p.plane(cx + 0.25 * ring[:, 0], 0.01 + 0.17 * ring[:, 1], 0.08),
            who.frame_colour,
            0.028,
            True,
        )
        arm = p.solid(np.array([[side * (who.eye_spacing + 0.25), -0.02, 0.55], [side * 1.0, -0.02, 0.1]]))
        p.line(arm, who.frame_colour, 0.025)
    bridge = (who.eye_spacing - 0.25) * _grid(-1.0, 1.0, 5)
    p.line(p.plane(bridge, -0.03 - 0.02 * _arc(bridge / 0.12, 1.0), 0.12), who.frame_colour, 0.025)


def draw_face(
    canvas: np.ndarray,
    who: Identity,
    au: np.ndarray,
    pose: Pose,
    gaze: tuple[float, float] = (0.0, 0.0),
    blink: float = 0.0,
) -> None:
    """Draw one person with AU intensities `au` (12,) in [0, 1] onto a BGR uint8 canvas, in place.

    `gaze` (-1..1 right, down) moves the irises; `blink` (0..1) closes the lids.
    """
    p = _Painter(canvas, who, pose)
    p.drop = 0.22 * float(au[_AU["AU26"]])
    corner = _mouth_corner(who, au)
    _body(p)
    _head(p)
    _cheeks_and_nose(p, au, corner)
    _brows(p, au)
    _eyes(p, au, gaze, blink)
    _mouth(p, au, corner)
    if who.glasses:
        _glasses(p)
    p.flush()


# The simulator's 2D landmarks, in this order (27 points): brows inner/middle/outer, eye outer
# and inner corners and lid midpoints, nose bridge, tip and wings, mouth corners and lip
# midpoints (outer and inner), jaw and chin. Each follows the same formula as the drawing.
LANDMARK_NAMES: tuple[str, ...] = (
    *(f"{side}_brow_{part}" for side in ("right", "left") for part in ("inner", "middle", "outer")),
    *(f"{side}_eye_{part}" for side in ("right", "left") for part in ("outer", "inner", "top", "bottom")),
    "nose_bridge", "nose_tip", "right_nose_wing", "left_nose_wing",
    "right_mouth_corner", "left_mouth_corner", "upper_lip_top", "lower_lip_bottom",
    "upper_lip_inner", "lower_lip_inner",
    "right_jaw", "left_jaw", "chin",
)


def _landmark_rows(who: Identity, au: np.ndarray, blink: float, drop: float) -> np.ndarray:
    """The landmarks as painter rows (27, 4): face-plane points with their height above the skin."""
    a = {name: float(au[i]) for name, i in _AU.items()}
    points: list[tuple[float, float, float]] = []
    for side in (-1.0, 1.0):  # the image's left first, as `_brows` draws them
        points += [
            (side * (0.12 - 0.05 * a["AU4"]), who.brow_y + 0.02 - 0.13 * a["AU1"] + 0.09 * a["AU4"], 0.01),
            (side * 0.34, who.brow_y - 0.05 - 0.05 * a["AU1"] - 0.06 * a["AU2"] + 0.05 * a["AU4"], 0.01),
            (side * 0.57, who.brow_y + 0.01 - 0.13 * a["AU2"] + 0.02 * a["AU4"], 0.01),
        ]
    upper_open = who.eye_open * (1.0 - 0.2 * a["AU7"] - 0.15 * a["AU6"] - 0.2 * a["AU4"]) * (1.0 - blink)
    lower_open = 0.75 * who.eye_open * (1.0 - 0.6 * a["AU7"] - 0.45 * a["AU6"]) * (1.0 - 0.5 * blink)
    for side in (-1.0, 1.0):
        cx = side * who.eye_spacing
        points += [
            (cx + side * who.eye_width, -0.012, 0.0),
            (cx - side * who.eye_width, 0.012, 0.0),
            (cx, -upper_open, 0.0),
            (cx, lower_open * (1.0 - 0.4 * a["AU7"]), 0.0),
        ]
    lift = 0.035 * a["AU10"]
    wing = who.nose_width * (1.0 + 0.15 * a["AU10"])
    points += [(0.0, 0.08, 0.08), (0.0, who.nose_y - lift - 0.02, 0.12),
               (-wing, who.nose_y - lift, 0.08), (wing, who.nose_y - lift, 0.08)]
    corner = _mouth_corner(who, au)
    raise_upper = 0.075 * a["AU10"]
    upper_inner = who.mouth_y - 0.6 * raise_upper - 0.02 * a["AU25"]
    lower_inner = who.mouth_y + 0.06 * a["AU25"] + drop
    thin = 1.0 - 0.55 * a["AU23"] - 0.7 * a["AU24"]
    points += [
        (-corner[0], corner[1], 0.02), (corner[0], corner[1], 0.02),
        (0.0, upper_inner - 0.4 * raise_upper - 0.65 * who.lip_thickness * thin, 0.02),
        (0.0, lower_inner + 1.35 * who.lip_thickness * thin, 0.02),
        (0.0, upper_inner, 0.02), (0.0, lower_inner, 0.02),
    ]
    jaw_y, chin_y = 0.72 * who.head_height, 0.97 * who.head_height
    jaw_x = 0.75 * (1.0 - who.jaw_taper * 0.5)
    points += [(-jaw_x, jaw_y + drop, 0.0), (jaw_x, jaw_y + drop, 0.0), (0.0, chin_y + drop, 0.0)]
    rows = np.asarray(points, dtype=np.float64)
    return np.column_stack([rows, np.ones(len(rows))])


def face_landmarks(who: Identity, au: np.ndarray, pose: Pose, blink: float = 0.0) -> np.ndarray:
    """Canvas pixels (27, 2) of the landmarks `draw_face` would draw for this frame."""
    p = _Painter(np.empty((1, 1, 3), np.uint8), who, pose)
    drop = 0.22 * float(au[_AU["AU26"]])
    return _to_canvas(p.lift(_landmark_rows(who, au, blink, drop)), p.rotation, pose)


def render_face(
    who: Identity,
    au: np.ndarray,
    size: int,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    background: Colour = (120, 130, 140),
) -> np.ndarray:
    """One face alone, framed like an aligned crop: (size, size, 3) BGR uint8."""
    big = size * SUPERSAMPLE
    canvas = np.empty((big, big, 3), np.uint8)
    canvas[:] = background
    scale = big / CROP_SPAN
    draw_face(canvas, who, au, Pose(big / 2, big / 2 - CROP_CENTRE_Y * scale, scale, yaw, pitch, roll))
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
