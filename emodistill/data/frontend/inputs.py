"""What the user hands in, classified in one place for `prepare`, `predict` and `submit`: a video
(by its name's suffix), an image (by its suffix or its content), a folder of images, or folders of
numbered face crops (the Aff-wild2 `cropped_aligned` layout, also a `prepare` output)."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodistill.core.errors import InputError
from emodistill.data.crops import CROPS
from emodistill.data.frontend.decode import VIDEO_SUFFIXES, VideoInfo, probe_video
from emodistill.data.frontend.images import is_image_file, read_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROP_SUFFIXES = (".jpg", ".jpeg")  # Aff-wild2 and `prepare` write JPEG crops
GLOB_CHARACTERS = "*?["


def is_image(path: Path) -> bool:
    """An image by its name (a broken `.jpg` is still an image, one that does not decode) or by
    its content (a PNG saved as `.dat`); everything else is taken for a video."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_image_file(path)


def is_media(path: Path) -> bool:
    """A file `prepare` takes from a folder: a video by its suffix or an image."""
    return path.suffix.lower() in VIDEO_SUFFIXES or is_image(path)


@dataclass(frozen=True)
class Source:
    """What a predict input is: one video, one image, a folder of images, face crop folders, or
    frames in memory."""

    path: Path
    # "video" | "image" (one picture) | "image-folder" (independent pictures) | "crops"
    # (cropped_aligned) | "frames" (NumPy RGB frames of one video, in time order)
    kind: str
    files: tuple[Path, ...] = ()  # "image": the image; "image-folder": sorted pictures; "crops": folders
    n_frames: int = 0  # frames to expect (a video's count comes from its header; 0: unknown)
    video: VideoInfo | None = None  # "video" only
    frames: Iterable[np.ndarray] | None = None  # "frames" only: (H, W, 3) uint8 RGB each
    fps: float | None = None  # "frames" only: frame rate for the timestamps; None: no timestamps

    @property
    def is_sequence(self) -> bool:
        """True when frames come in time order and the GRU state carries between them."""
        return self.kind in ("video", "crops", "frames")

    @property
    def has_file_column(self) -> bool:
        return self.kind in ("image-folder", "crops")


def discover(path: Path | str) -> Source:
    """Classify one input; anything that cannot be read is one InputError sentence."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _discover_folder(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes), not a video or an image")
    if is_image(path):
        read_image(path)  # fail now, before any model is loaded
        return Source(path, "image", (path,), 1)
    info = probe_video(path)
    return Source(path, "video", (path,), info.n_frames, info)


def images_in(folder: Path) -> list[Path]:
    """The image files directly in `folder` (by suffix), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_crop_sequence(images: list[Path]) -> bool:
    """Aff-wild2 crops: numbered JPEG files (00001.jpg, ...) of square, already aligned faces."""
    if not all(p.stem.isdigit() and p.suffix.lower() in CROP_SUFFIXES for p in images):
        return False
    height, width = read_image(images[0]).shape[:2]
    return height == width


def _discover_folder(folder: Path) -> Source:
    if (folder / CROPS).is_dir():  # a `prepare` output or Aff-wild2 root: its face crops
        folder = folder / CROPS
    images = images_in(folder)
    if images:
        if _is_crop_sequence(images):
            return Source(folder, "crops", (folder,), len(images))
        return Source(folder, "image-folder", tuple(images), len(images))
    # A `cropped_aligned` root: one sub-folder of numbered crops per video.
    sequences = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        crops = images_in(sub)
        if crops and _is_crop_sequence(crops):
            sequences.append((sub, len(crops)))
    if not sequences:
        raise InputError(
            f"{folder}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}) "
            "and no folders of numbered face crops"
        )
    return Source(folder, "crops", tuple(s for s, _ in sequences), sum(n for _, n in sequences))


def expand_inputs(inputs: Sequence[Path | str], log: Callable[[str], None] = print) -> list[Path]:
    """Files, folders (their images and videos) and glob patterns -> the media files, in the
    order given; a file named twice is kept once, with a note. Nothing found is an InputError
    that says what was looked for."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files += _folder_media(path, log)
        elif path.is_file():
            files.append(path)
        elif any(c in str(given) for c in GLOB_CHARACTERS):
            matches = sorted(Path(m) for m in glob.glob(str(given), recursive=True))
            if not matches:
                raise InputError(f"{given}: no file matches this pattern")
            files += [m for m in matches if m.is_file()]
        else:
            raise InputError(f"{path}: no such video, image or folder")
    unique: dict[Path, Path] = {}
    for path in files:
        key = path.resolve()
        if key in unique:
            log(f"note: {path} is given more than once (first as {unique[key]}); it is used once")
            continue
        unique[key] = path
    if not unique:
        named = ", ".join(str(given) for given in inputs) or "no input"
        raise InputError(f"{named}: nothing to prepare: no videos ({', '.join(VIDEO_SUFFIXES)}) "
                         "and no images (by name or content) were found there")
    return list(unique.values())


def _folder_media(folder: Path, log: Callable[[str], None]) -> list[Path]:
    """The images and videos directly in `folder`, sorted by name."""
    media, others = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        (media if is_media(path) else others).append(path)
    if others:
        log(f"note: {folder}: {len(others)} file(s) that are neither images nor videos were "
            f"skipped (such as {others[0].name})")
    return media
