"""Face crops as Aff-wild2 stores them: `cropped_aligned/<video>/00001.jpg`, frame i of a video's
annotations in crop {i + 1:05d}.jpg; one way to read one, shared by the readers and `predict`."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emodistill.core.errors import InputError

CROPS = "cropped_aligned"  # the folder of crop folders, as Aff-wild2 and `prepare` name it
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


def crop_name(frame_index: int) -> str:
    """0-based frame -> its crop file name: frame 0 is 00001.jpg."""
    return f"{frame_index + 1:05d}.jpg"


def read_crop(path: Path, size: int) -> np.ndarray:
    """One face crop -> (size, size, 3) uint8 RGB, resized with INTER_AREA."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path} could not be read ({err.strerror})") from None
    # OpenCV decodes a truncated JPEG without failing (grey rows at the bottom), so check that
    # the end-of-image marker is there; it cannot occur inside the entropy-coded data.
    if not data.startswith(JPEG_START) or JPEG_END not in data[-64:]:
        raise InputError(f"{path} is not a complete JPEG file (corrupt or truncated)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)  # (H, W, 3) BGR
    if image is None:
        raise InputError(f"{path} could not be decoded as a JPEG image")
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
