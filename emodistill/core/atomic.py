"""Files written whole or not at all: a temporary file beside the final name, fsync, rename.

A full disk is one sentence naming the final file and leaves no partial file behind.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from emodistill.core.errors import DiskFullError

NO_SPACE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# Writers in Rust or C++ (safetensors, pyarrow, the ONNX exporter) raise their own exception
# types, often without an errno; their messages carry the OS wording, which is all there is.
NO_SPACE_WORDS = {
    "no space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "storagefull": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "os error 122": errno.EDQUOT,
}
NEARLY_FULL_BYTES = 1 << 20  # free space below which a short write is taken for a full disk
ADVICE = "free some space and rerun the same command (no partial file was kept)"


def no_space_errno(error: BaseException) -> int | None:
    """ENOSPC or EDQUOT when `error` (or an exception it was raised from) is a full disk."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE_ERRNOS:
            return current.errno
        text = str(current).lower()
        for words, code in NO_SPACE_WORDS.items():
            if words in text:
                return code
        current = current.__cause__ or current.__context__
    return None


def disk_full_error(path: Path | str, code: int, what: str = "it") -> DiskFullError:
    """The one-sentence error for a write of `path` that ran out of space."""
    return DiskFullError(f"{path}: {NO_SPACE_ERRNOS[code]} while writing {what}; {ADVICE}")


def disk_full_sentence(error: OSError) -> str | None:
    """The one sentence for a full disk met by a writer without a guard, else None."""
    code = no_space_errno(error)
    if code is None:
        return None
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{NO_SPACE_ERRNOS[code]}; free some space and rerun the same command"


@contextmanager
def disk_full_guard(path: Path, what: str = "it", partial: Path | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into `DiskFullError` naming `path`.

    `partial` (default `path`) is removed first: a writer that writes in place (matplotlib,
    a plain write_text) would otherwise leave a cut-off file under `path`.
    """
    try:
        yield
    except Exception as error:
        code = no_space_errno(error)
        # NumPy reports a short write as "N requested and M written", without an errno; the
        # file system, asked before the partial file is removed, tells whether it was full.
        if code is None and isinstance(error, OSError) and error.errno is None and _nearly_full(path.parent):
            code = errno.ENOSPC
        if code is None:
            raise
        (partial or path).unlink(missing_ok=True)
        raise disk_full_error(path, code, what) from None


def _nearly_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    # root may write into the blocks reserved for it, others may not.
    free_blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
    return free_blocks * stat.f_frsize < NEARLY_FULL_BYTES


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "it") -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then move it into place.

    `what` names the file in the full-disk sentence ("the frame cache").
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)  # mkstemp makes 0600; a run folder is often shared by a team or a cluster
    try:
        with disk_full_guard(path, what, partial=tmp):
            write(tmp)
            # Network file systems report a full disk only when the data reach the server.
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def reserve_space(path: Path) -> None:
    """Allocate every block of a (sparse) file now.

    A memory-mapped write into a hole of a full disk kills the process with SIGBUS instead of
    raising ENOSPC; allocating first turns that into an ordinary OSError here.
    """
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as error:
            # Other errors (EOPNOTSUPP, EINVAL) mean a file system without fallocate: the
            # writes still work there, only a full disk is a SIGBUS again.
            if error.errno in NO_SPACE_ERRNOS:
                raise
