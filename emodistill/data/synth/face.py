"""Parametric faces of synthetic identities whose 12 action units are visible geometric changes.

A face is a set of curves on a head ellipsoid, turned by yaw/pitch/roll and projected; each AU
moves the brows, lids, cheeks, nose or lips as FACS describes. Drawn with OpenCV anti-aliasing.
"""

from __future__ import annotations

import numpy as np

from emodistill.data.synth.identity import Identity, Pose
from emodistill.data.synth.painter import Painter, arc, contiguous, grid, mix, to_canvas
from emodistill.tasks import AU

SUPERSAMPLE = 2  # faces are drawn at twice the output size, then area-averaged down
# An aligned crop spans this many face units, centred this far below the head centre.
CROP_SPAN = 2.6
CROP_CENTRE_Y = 0.2
_AU = {name: i for i, name in enumerate(AU.names)}
def _body(p: Painter) -> None:
    """Long hair behind the head, shoulders in the shirt colour, neck, ears."""
    who = p.who
    if who.hairstyle == 2:
        angle = grid(-np.pi / 2, np.pi / 2, 24)
        top = np.stack([1.15 * np.sin(angle), -1.1 * who.head_height * np.cos(angle)], 1)
        tail = np.array([[1.2, 1.2], [0.8, 1.55], [-0.8, 1.55], [-1.2, 1.2]])
        outline = np.concatenate([top, tail])
        p.fill(p.solid(np.column_stack([outline, np.full(len(outline), -0.5)])), who.hair)
    shoulders = np.array([[-3.0, 4.0], [-2.7, 2.5], [-1.1, 1.95], [1.1, 1.95], [2.7, 2.5], [3.0, 4.0]])
    p.fill(p.solid(np.column_stack([shoulders, np.zeros(6)])), who.clothes, body=True)
    neck = np.array([[-0.45, 0.6], [0.45, 0.6], [0.5, 2.05], [0.0, 2.35], [-0.5, 2.05]])
    p.fill(
        p.solid(np.column_stack([neck, np.full(5, -0.3)])),
        mix(who.skin, (0, 0, 0), 0.15),
        body=True,
    )
    angle = grid(0.0, 2 * np.pi, 16, False)
    for side in (-1.0, 1.0):
        u, v = 0.1 * np.cos(angle) + 0.05, 0.22 * np.sin(angle)
        ear = np.stack([side * (0.95 + 0.7 * u), 0.05 + v, -0.1 - 0.7 * u], 1)
        p.fill(p.solid(ear), mix(who.skin, (0, 0, 0), 0.1))


def _head(p: Painter) -> None:
    """Skin of the head and the hair cap above the hairline."""
    who = p.who
    p.fill(p.solid(p.silhouette()), who.skin)
    if who.hairstyle == 0:
        return
    ring = p.silhouette(1.05)
    temple = who.hairline + 0.45
    arc = ring[contiguous(ring[:, 1] < temple)]
    x = grid(-0.97, 0.97, 17)
    hairline = p.plane(x, who.hairline + 0.45 * np.abs(x) ** 2.5, 0.01)
    if arc[0, 0] < 0:
        hairline = hairline[::-1]
    p.fill(np.concatenate([p.solid(arc), hairline]), who.hair)


def _brows(p: Painter, au: np.ndarray) -> None:
    """Brows (AU1 inner raise, AU2 outer raise, AU4 lower and knit) and the folds they make."""
    who = p.who
    a1, a2, a4 = au[_AU["AU1"]], au[_AU["AU2"]], au[_AU["AU4"]]
    u = grid(0.0, 1.0, 13)
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
            mix(who.hair, (0, 0, 0), 0.2),
        )
        p.crease(np.full(2, side * 0.05), who.brow_y + np.array([0.0, 0.14]), a4, 0.02)  # glabella
    x = grid(-0.45, 0.45, 15)
    lift = a1 * arc(x / 0.45, 1.0) + a2 * (np.abs(x) / 0.45) ** 2
    for k in range(3):
        p.crease(x, who.brow_y - 0.2 - 0.09 * k - 0.05 * lift, max(a1, a2) * (1.0 - 0.2 * k), 0.014)


def _eyes(p: Painter, au: np.ndarray, gaze: tuple[float, float], blink: float) -> None:
    """Eyes (AU6 cheek raise and AU7 lid tightening narrow them from below) with their folds."""
    who = p.who
    a4, a6, a7 = au[_AU["AU4"]], au[_AU["AU6"]], au[_AU["AU7"]]
    upper_open = who.eye_open * (1.0 - 0.2 * a7 - 0.15 * a6 - 0.2 * a4) * (1.0 - blink)
    lower_open = 0.75 * who.eye_open * (1.0 - 0.6 * a7 - 0.45 * a6) * (1.0 - 0.5 * blink)
    u = grid(-1.0, 1.0, 15)
    dark = mix(who.skin, (20, 20, 30), 0.8)
    for side in (-1.0, 1.0):
        cx, cy = side * who.eye_spacing, 0.0
        x = cx + u * who.eye_width
        tilt = 0.012 * side * u  # outer corners sit a little higher
        top = cy - upper_open * arc(u, 0.8) - tilt
        bottom = cy + lower_open * arc(u, 0.9) * (1.0 - 0.4 * a7 * arc(u, 0.3)) - tilt
        p.fill(
            p.plane(np.concatenate([x, x[::-1]]), np.concatenate([top, bottom[::-1]])),
            (225, 232, 238),
        )
        for radius, colour in ((0.068, who.iris), (0.03, (15, 15, 15))):
            angle = grid(0.0, 2 * np.pi, 20, False)
            ix = np.clip(cx + 0.45 * who.eye_width * gaze[0] + radius * np.cos(angle), x[0], x[-1])
            iy = np.clip(
                cy + 0.02 * gaze[1] + radius * np.sin(angle),
                np.interp(ix, x, top),
                np.interp(ix, x, bottom),
            )  # the lids cover the iris
            p.fill(p.plane(ix, iy, 0.01), colour)
        p.line(p.plane(x, top, 0.01), dark, 0.03)
        p.line(p.plane(x, bottom), mix(who.skin, (0, 0, 0), 0.3 + 0.3 * a7), 0.012 + 0.012 * a7)
        p.crease(x[2:-2], top[2:-2] - 0.05 - 0.3 * upper_open, 0.5, 0.012)  # lid fold
        p.crease(x[3:-1], bottom[3:-1] + 0.06 - 0.03 * a6 + 0.02 * arc(u[3:-1], 1.0), a6)
        corner = np.array([cx + side * (who.eye_width + 0.03), cy])
        for fan in (-0.6, 0.0, 0.6):  # crow's feet
            ray = corner + np.outer([0.0, 0.11], [side * np.cos(fan), np.sin(fan)])
            p.crease(ray[:, 0], ray[:, 1], a6, 0.014)


def _cheeks_and_nose(p: Painter, au: np.ndarray, corner: np.ndarray) -> None:
    """Cheek bulges (AU6), nasolabial folds (deepened by AU6, AU10, AU12) and the nose (AU10)."""
    who = p.who
    a6, a10, a12 = au[_AU["AU6"]], au[_AU["AU10"]], au[_AU["AU12"]]
    angle = grid(0.0, 2 * np.pi, 24, False)
    lift = 0.035 * a10
    for side in (-1.0, 1.0):
        cheek = [side * 0.45 + 0.17 * np.cos(angle), 0.3 - 0.1 * a6 + 0.1 * np.sin(angle)]
        p.fill(p.plane(*cheek), mix(who.skin, (170, 170, 255), 0.06 + 0.14 * a6))
        t = grid(0.0, 1.0, 9)
        start = np.array([side * (who.nose_width + 0.04), who.nose_y - 0.05 - lift])
        end = np.array([corner[0] * side + side * 0.07, corner[1] + 0.05])
        fold = start + np.outer(t, end - start) + np.outer(np.sin(np.pi * t), [side * 0.08, 0.0])
        p.crease(fold[:, 0], fold[:, 1], 0.2 + 0.8 * max(a12, a10, 0.7 * a6), 0.02)
    bridge = 0.08 + (who.nose_y - 0.16) * grid(0.0, 1.0, 6)
    height = 0.25 * grid(0.3, 1.0, 6)
    p.line(p.plane(np.full(6, 0.06), bridge, height), mix(who.skin, (0, 0, 0), 0.25), 0.02)
    for side in (-1.0, 1.0):
        wing = grid(0.0, np.pi, 8)
        wx = side * (who.nose_width * (1.0 + 0.15 * a10) - 0.04 * (1 - np.cos(wing)))
        wy = who.nose_y - lift - 0.05 * np.sin(wing)
        p.line(p.plane(wx, wy, 0.08), mix(who.skin, (0, 0, 0), 0.3), 0.018)
        nostril = [
            side * 0.05 + 0.032 * np.cos(angle),
            who.nose_y - lift + 0.01 + 0.016 * np.sin(angle),
        ]
        p.fill(p.plane(*nostril, 0.1), mix(who.skin, (0, 0, 0), 0.55))


def _mouth_corner(who: Identity, au: np.ndarray) -> np.ndarray:
    """(x, y) of the right mouth corner: AU12 pulls it up and out, AU15 down, AU23/AU24 in."""
    a12, a15, a23, a24 = (au[_AU[n]] for n in ("AU12", "AU15", "AU23", "AU24"))
    width = who.mouth_width * (1.0 + 0.3 * a12 - 0.4 * a23 - 0.1 * a24)
    return np.array([width, who.mouth_y - 0.11 * a12 + 0.1 * a15])


def _mouth(p: Painter, au: np.ndarray, corner: np.ndarray) -> None:
    """Lips: AU10 lifts the upper lip, AU23 tightens, AU24 presses, AU25 parts, AU26 opens."""
    who = p.who
    a10, a15, a23, a24, a25 = (au[_AU[n]] for n in ("AU10", "AU15", "AU23", "AU24", "AU25"))
    u = grid(-1.0, 1.0, 21)
    x = u * corner[0]
    # Meeting line: a parabola through the corners; pressing the lips (AU24) flattens it.
    base = who.mouth_y + (corner[1] - who.mouth_y) * u**2 * (1.0 - 0.5 * a24)
    raise_upper = 0.075 * a10 * arc(u, 0.3) * (1.0 - u**4)
    upper_inner = base - 0.6 * raise_upper - 0.02 * a25 * arc(u, 0.7)
    lower_inner = base + (0.06 * a25 + p.drop) * arc(u, 0.6)
    thin = 1.0 - 0.55 * a23 - 0.7 * a24
    bow = 1.0 - 0.35 * np.exp(-((u / 0.15) ** 2))  # Cupid's bow
    upper_outer = upper_inner - 0.4 * raise_upper - who.lip_thickness * thin * arc(u, 0.45) * bow
    lower_outer = lower_inner + 1.35 * who.lip_thickness * thin * arc(u, 0.5) + 0.03 * a15 * u**2
    lips = mix(who.skin, (90, 70, 180), 0.4 + 0.2 * max(a23, a24))
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
        teeth = np.minimum(upper_inner + 0.06 * arc(u, 0.3), lower_inner)
        p.fill(
            p.plane(np.concatenate([x, x[::-1]]), np.concatenate([upper_inner, teeth[::-1]]), 0.02),
            (215, 225, 230),
        )
    p.line(p.plane(x, base + 0.5 * (gap.clip(0.0, 0.004)), 0.02), mix(lips, (0, 0, 0), 0.5), 0.012)
    for side in (-1.0, 1.0):  # corner folds: pulled down (AU15) or tightened (AU23, AU24)
        cx, cy = side * corner[0], corner[1]
        p.crease(np.array([cx, cx + side * 0.03]), np.array([cy + 0.02, cy + 0.12]), a15, 0.016)
        p.crease(
            np.array([cx + side * 0.02, cx + side * 0.03]),
            np.array([cy - 0.03, cy + 0.03]),
            max(a23, a24),
            0.016,
        )
    chin = grid(-0.14, 0.14, 9)
    chin_y = lower_outer[10] + 0.07 + 0.03 * arc(chin / 0.14, 1.0)
    p.crease(chin, chin_y, a24, 0.016)  # chin boss pushed up by the pressed lips


def _glasses(p: Painter) -> None:
    """Round or rectangular frames (superellipses) with a bridge and the arms towards the ears."""
    who = p.who
    angle = grid(0.0, 2 * np.pi, 28, False)
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
    bridge = (who.eye_spacing - 0.25) * grid(-1.0, 1.0, 5)
    p.line(p.plane(bridge, -0.03 - 0.02 * arc(bridge / 0.12, 1.0), 0.12), who.frame_colour, 0.025)


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
    p = Painter(canvas, who, pose)
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
    p = Painter(np.empty((1, 1, 3), np.uint8), who, pose)
    drop = 0.22 * float(au[_AU["AU26"]])
    return to_canvas(p.lift(_landmark_rows(who, au, blink, drop)), p.rotation, pose)
