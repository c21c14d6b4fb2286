"""Still images: recognised by their content (never their name), decoded upright as RGB, and the
JPEG crops `prepare` writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emodistill.core.errors import InputError

# The first bytes of the image formats OpenCV decodes, so that a file is taken for an image by
# what it holds (a WEBP or PNG saved under a .jpg name is common), never by its extension.
IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"BM",  # BMP
    b"II*\x00", b"MM\x00*",  # TIFF, either byte order
)


def is_image_file(path: Path) -> bool:
    """True when the file's first bytes are those of an image OpenCV reads (JPEG, PNG, WEBP, BMP,
    TIFF), whatever its name ends in."""
    with Path(path).open("rb") as handle:
        head = handle.read(12)
    webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return webp or head.startswith(IMAGE_SIGNATURES)


def read_image(path: Path) -> np.ndarray:
    """An image file decoded by its content as (H, W, 3) uint8 RGB, upright: OpenCV applies the
    EXIF orientation a phone writes. An unreadable one is an InputError naming it."""
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3)


def write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    """An (H, W, 3) uint8 RGB image as a JPEG file of the given quality (1-100)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path} as JPEG")
    Path(path).write_bytes(encoded.tobytes())
