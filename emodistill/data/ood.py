"""Out-of-domain images for the OOD-detection test: Fashion-MNIST, as the paper (Sec. 5.2).

Where Fashion-MNIST is not installed, non-face images bundled with scikit-image and
scikit-learn stand in, so the test still runs offline.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emodistill.core.errors import InputError

# Put there by Debian's dataset-fashion-mnist package.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
OOD_LIMIT = 5000  # OOD images scored by default (and as many validation frames)
FASHION_MNIST_TRAIN = "train-images-idx3-ubyte"  # read as .gz, or uncompressed

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtypes.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class OODSet:
    """A named set of out-of-domain images."""

    name: str  # "fashion-mnist" or "lfw-nonfaces+digits"
    images: np.ndarray  # (N, S, S, 3) uint8 RGB

    def __len__(self) -> int:
        return int(self.images.shape[0])


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed, as a native-order array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: cannot read the IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: the IDX header is cut short ({ndim} dimensions announced)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise InputError(
            f"{path}: the IDX data holds {len(raw) - header} bytes, but shape {shape} of "
            f"{dtype.name} needs {expected - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_ood(
    size: int,
    directory: Path | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> OODSet:
    """Fashion-MNIST training images as (N, size, size, 3) RGB, or bundled non-faces without it.

    `limit` keeps a random subset of that many images (chosen with `seed`). The bundled
    fallback is used only when `directory` is not given and the default folder lacks the file.
    """
    if size < 1 or (limit is not None and limit < 1):
        raise InputError(f"the OOD image size and limit must be positive, got {size} and {limit}")
    folder = FASHION_MNIST_DIR if directory is None else Path(directory)
    found = [p for p in (folder / f"{FASHION_MNIST_TRAIN}.gz", folder / FASHION_MNIST_TRAIN)
             if p.is_file()]
    if found:
        grey = read_idx(found[0])
        if grey.ndim != 3 or grey.dtype != np.uint8:
            raise InputError(f"{found[0]}: expected uint8 images (N, H, W), got "
                             f"{grey.dtype.name} of shape {grey.shape}")
        return OODSet("fashion-mnist", _to_rgb(_subset(grey, limit, seed), size))
    if directory is not None:
        raise InputError(f"{folder}: no Fashion-MNIST file {FASHION_MNIST_TRAIN}.gz in this folder")
    nonfaces, digits = _bundled_nonfaces()
    images = np.concatenate([_to_rgb(nonfaces, size), _to_rgb(digits, size)])
    return OODSet("lfw-nonfaces+digits", _subset(images, limit, seed))


# scikit-image's bundled pictures without a person in them: natural photos, then textures.
NONFACE_PICTURES = ("rocket", "coffee", "chelsea", "hubble_deep_field", "immunohistochemistry", "moon", "coins",
                    "clock", "retina", "cell", "brick", "grass", "gravel")
NONFACE_TILES = 24  # square crops of each picture


def load_nonfaces(size: int, seed: int = 0) -> OODSet:
    """Real non-face pictures as a face model's input might meet them, (N, size, size, 3) RGB:
    square crops of 1/4 to all of the short side of scikit-image's bundled photos and textures
    (`NONFACE_TILES` of each), and LFW's 100 background patches."""
    from skimage import data

    rng = np.random.default_rng(seed)
    tiles = []
    for name in NONFACE_PICTURES:
        picture = np.asarray(getattr(data, name)())
        picture = picture if picture.ndim == 3 else np.repeat(picture[..., None], 3, axis=-1)
        picture = picture[..., :3].astype(np.uint8)  # (H, W, 3) RGB
        short = min(picture.shape[:2])
        for _ in range(NONFACE_TILES):
            side = int(rng.integers(short // 4, short + 1))
            top, left = (int(rng.integers(0, n - side + 1)) for n in picture.shape[:2])
            tiles.append(cv2.resize(picture[top : top + side, left : left + side], (size, size),
                                    interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR))
    nonfaces, _ = _bundled_nonfaces()
    return OODSet("scikit-image photos and textures, LFW non-faces", np.concatenate([np.stack(tiles),
                                                                                     _to_rgb(nonfaces, size)]))


def _subset(images: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded random subset of `limit` images, kept in their original order."""
    if limit is None or limit >= len(images):
        return images
    keep = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[keep]


def _bundled_nonfaces() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's 100 LFW background patches (25x25) and scikit-learn's digits (8x8), uint8."""
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    # lfw_subset(): the first 100 images are faces, the last 100 non-faces, floats in [0, 1].
    nonfaces = np.round(lfw_subset()[100:] * 255).astype(np.uint8)  # (100, 25, 25)
    digits = np.round(load_digits().images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16
    return nonfaces, digits


def _to_rgb(grey: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) uint8 grey -> (N, size, size, 3) RGB, written in place (60,000 at 112: 2.3 GB)."""
    interpolation = cv2.INTER_AREA if size < min(grey.shape[1:]) else cv2.INTER_LINEAR
    rgb = np.empty((len(grey), size, size, 3), np.uint8)
    for image, target in zip(grey, rgb, strict=True):
        small = cv2.resize(image, (size, size), interpolation=interpolation)  # (size, size)
        cv2.cvtColor(small, cv2.COLOR_GRAY2RGB, dst=target)
    return rgb
