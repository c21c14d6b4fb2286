"""The drawing machinery of the synthetic faces: points on a head ellipsoid turned by yaw, pitch and
roll and projected, recorded as fills and lines, then drawn with OpenCV's sub-pixel anti-aliasing."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from emodistill.data.synth.identity import Colour, Identity, Pose

_SHIFT = 4  # fractional bits of OpenCV's sub-pixel drawing
# A recorded drawing step: points (N, 4), colour, line width in pixels (0 fills the polygon),
# closed line, turned with the torso rather than the head.
_Op = tuple[np.ndarray, Colour, int, bool, bool]



def mix(a: Colour, b: Colour, t: float) -> Colour:
    """Blend colour a towards b by t (0..1); plain floats, as it runs dozens of times a frame."""
    t = min(max(float(t), 0.0), 1.0)
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), a[2] + t * (b[2] - a[2]))


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Rx(pitch) Ry(yaw) in image axes (x right, y down, z towards the camera)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


@cache
def grid(lo: float, hi: float, n: int, endpoint: bool = True) -> np.ndarray:
    """np.linspace, computed once: the same few grids are used for every face of every frame."""
    grid = np.linspace(lo, hi, n, endpoint=endpoint)
    grid.flags.writeable = False
    return grid


def arc(u: np.ndarray, power: float) -> np.ndarray:
    """(1 - u^2)^power: a bump that is 1 at u = 0 and 0 at u = +/-1."""
    return np.clip(1.0 - u**2, 0.0, 1.0) ** power


def to_canvas(points: np.ndarray, rotation: np.ndarray, pose: Pose) -> np.ndarray:
    """3D head points (N, 3) -> canvas pixels (N, 2): rotate, project orthographically, place."""
    return (points @ rotation.T)[:, :2] * pose.scale + (pose.x, pose.y)


class Painter:
    """Records one face's drawing in head coordinates, then projects and draws it in one go.

    Points are rows (x, y, z, on_face): on_face rows hold a face-plane point and a height above
    the head surface in z, lifted onto the ellipsoid at the end. Batching the projection keeps
    the per-frame cost to a few NumPy calls plus the OpenCV drawing.
    """

    def __init__(self, canvas: np.ndarray, who: Identity, pose: Pose):
        self.canvas, self.who, self.pose = canvas, who, pose
        self.rotation = head_rotation(pose.yaw, pose.pitch, pose.roll)
        self.body_rotation = head_rotation(0.3 * pose.yaw, 0.0, 0.3 * pose.roll)  # the torso turns less
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
        angle = grid(0.0, 2.0 * np.pi, n, False)[:, None]
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
            self.line(self.plane(x, y), mix(self.who.skin, (0, 0, 0), 0.45 * strength), width)

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
            to_canvas(points, self.body_rotation, self.pose),
            to_canvas(points, self.rotation, self.pose),
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
    rotation = head_rotation(pose.yaw, pose.pitch, pose.roll)
    return to_canvas(np.asarray([point], float), rotation, pose)[0]


def contiguous(mask: np.ndarray) -> np.ndarray:
    """Indices of the single run of True in a circular mask, in order around the circle."""
    if mask.all():
        return np.arange(len(mask))
    first = int(np.flatnonzero(mask & ~np.roll(mask, 1))[0])
    order = (first + np.arange(len(mask))) % len(mask)
    return order[mask[order]]
