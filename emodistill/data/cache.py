"""Memory-mapped caches of decoded arrays, rebuilt only when the files they came from change.

A cache is `<key>.npy` (opened with np.load(mmap_mode="r")) beside `<key>.json`, its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emodistill.core.atomic import atomic_write, reserve_space

CACHE_VERSION = 1  # bump when the layout or the decoding changes, to invalidate old caches
CACHE_FOLDER = ".emodistill-cache"  # inside the data root, when it is writable


@dataclass
class Cached:
    """A cache array ready to use, and what happened to get it."""

    array: np.ndarray  # read-only memory map of `path`
    path: Path  # the .npy file
    reused: bool  # True when nothing was decoded
    status: str  # "cache reused" | "cache built" | "cache rebuilt: N files changed"


def default_cache_dir(root: Path) -> Path:
    """`ROOT/.emodistill-cache`, or a per-root folder in the user cache if ROOT is read-only."""
    local = root / CACHE_FOLDER
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.resolve()).encode("utf-8")).hexdigest()[:16]
    return user_cache / "emodistill" / f"{root.name}-{digest}"


def file_signature(path: Path) -> list[int]:
    """[size, mtime in ns]: changes when a file is rewritten or touched."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_files(old: dict, new: dict) -> int:
    """Files added, removed or changed between the "files" sections of two fingerprints."""
    old_groups, new_groups = old.get("files", {}), new["files"]
    count = 0
    for group in old_groups.keys() | new_groups.keys():
        before, after = old_groups.get(group, {}), new_groups.get(group, {})
        if before != after:
            names = before.keys() | after.keys()
            count += sum(before.get(name) != after.get(name) for name in names)
    return count


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _open(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """The cached array, or None if it is missing, unreadable or not the expected shape."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return array if array.shape == shape and array.dtype == dtype else None


def cached_array(
    cache_dir: Path,
    key: str,
    fingerprint: dict,
    shape: tuple[int, ...],
    dtype: np.dtype | type,
    fill: Callable[[np.ndarray], None],
) -> Cached:
    """Reuse `<cache_dir>/<key>.npy` if its fingerprint matches, else build it with `fill`.

    `fingerprint` is JSON-ready (str keys, lists, numbers) and must hold a "files" section,
    {group: {file name: signature}}, whose differences are counted in the status. `fill`
    receives a writable (shape) memory map and must set every element.
    """
    dtype = np.dtype(dtype)
    npy, meta = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    wanted = {"version": CACHE_VERSION, "shape": list(shape), "dtype": dtype.str, **fingerprint}
    old = _read_json(meta)
    if old == wanted:
        array = _open(npy, shape, dtype)
        if array is not None:
            return Cached(array, npy, True, "cache reused")
    if old is None:
        status = "cache built"
    else:
        changed = changed_files(old, wanted)
        status = f"cache rebuilt: {changed} files changed" if changed else "cache rebuilt"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A crash mid-build must not leave the old fingerprint beside a half-written array.
    meta.unlink(missing_ok=True)

    def write_array(temp: Path) -> None:
        array = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=shape)
        reserve_space(temp)  # a full disk is then an error here, not a SIGBUS inside `fill`
        fill(array)
        array.flush()
        del array

    atomic_write(npy, write_array, what="the cache")
    atomic_write(meta, lambda temp: temp.write_text(json.dumps(wanted), encoding="utf-8"), what="the cache")
    return Cached(np.load(npy, mmap_mode="r"), npy, False, status)
