"""Tests for IDX reading and the out-of-domain image sets (emodistill.data.ood)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from skimage.data import lfw_subset

from emodistill.core.errors import InputError
from emodistill.data import ood
from emodistill.data.ood import load_ood, read_idx

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX by the format's definition: magic, big-endian dims and data."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["plain-idx3-ubyte", "packed-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_read_idx_round_trips(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4) * 37 % 251 - 100).reshape(2, 3, 4)
    array = array.clip(0) if dtype is np.uint8 else array
    array = array.astype(dtype)
    read = read_idx(write_idx(tmp_path / name, array))
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


def test_read_idx_rejects_malformed_files(tmp_path):
    good = idx_bytes(np.zeros((2, 2), np.uint8))
    cases = {
        "magic.idx": (b"\x01" + good[1:], "bad magic number"),
        "code.idx": (good[:2] + b"\x07" + good[3:], "bad magic number"),
        "header.idx": (good[:6], "header is cut short"),
        "short.idx": (good[:-1], r"holds 3 bytes, but shape \(2, 2\) of uint8 needs 4"),
        "long.idx": (good + b"\x00", "holds 5 bytes"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=rf"{name.replace('.', chr(92) + '.')}: .*{message}"):
            read_idx(tmp_path / name)
    (tmp_path / "broken.gz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(InputError, match=r"broken\.gz: cannot read"):
        read_idx(tmp_path / "broken.gz")


def fake_fashion(folder: Path, n: int = 10) -> Path:
    """n flat 28x28 images, image k filled with the value 10k."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None] * 10, 28 * 28).reshape(n, 28, 28)
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    return folder


def test_load_ood_reads_fashion_mnist_as_rgb(tmp_path):
    folder = fake_fashion(tmp_path / "fashion")
    whole = load_ood(32, directory=folder)
    assert whole.name == "fashion-mnist"
    assert whole.images.shape == (10, 32, 32, 3) and whole.images.dtype == np.uint8
    # A flat image stays flat through any resize, and grey -> RGB copies it to each channel.
    np.testing.assert_array_equal(whole.images, np.arange(10)[:, None, None, None] * 10
                                  + np.zeros((1, 32, 32, 3), np.uint8))
    subset = load_ood(16, directory=folder, limit=4, seed=3)
    values = subset.images[:, 0, 0, 0].tolist()
    assert len(values) == 4 and values == sorted(set(values))
    assert set(values) <= set(range(0, 100, 10))
    again = load_ood(16, directory=folder, limit=4, seed=3)
    np.testing.assert_array_equal(again.images, subset.images)
    assert len(load_ood(16, directory=folder, limit=50)) == 10


def test_explicit_directory_without_the_file_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"empty: no Fashion-MNIST file train-images-idx3-ubyte"):
        load_ood(28, directory=tmp_path / "empty")
    with pytest.raises(InputError, match="must be positive"):
        load_ood(28, directory=fake_fashion(tmp_path / "fashion"), limit=0)


def test_fallback_uses_bundled_nonfaces_and_digits(tmp_path, monkeypatch):
    monkeypatch.setattr(ood, "FASHION_MNIST_DIR", tmp_path / "absent")
    bundled = load_ood(25)
    assert bundled.name == "lfw-nonfaces+digits"
    assert bundled.images.shape == (100 + 1797, 25, 25, 3) and bundled.images.dtype == np.uint8
    # At the native 25 px the first 100 are exactly LFW's non-faces (its second half), in grey.
    nonfaces = np.round(lfw_subset()[100:] * 255).astype(np.uint8)
    np.testing.assert_array_equal(bundled.images[:100], np.repeat(nonfaces[..., None], 3, axis=-1))
    assert load_ood(12, limit=50).images.shape == (50, 12, 12, 3)
