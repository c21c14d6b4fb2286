"""One writer per run folder: `RUN/.lock` names the process that trains into RUN.

A second writer is refused in one sentence and a lock whose holder is gone is taken over;
the commands that only read a run (evaluate, export, predict) never look at the lock.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from emodistill.core.atomic import disk_full_guard
from emodistill.core.errors import InputError

LOCK_NAME = ".lock"
# The holder touches its lock this often, so a lock's age says whether its holder still runs.
HEARTBEAT_S = 60.0
# A holder that cannot be checked directly (another host, another container's process table)
# counts as gone when its lock has not been touched for this long. An hour is 60 missed
# heartbeats: far beyond NFS attribute caching (60 s at most) and clock skew between
# machines, yet a crashed cluster node blocks its run folder for an hour at most.
STALE_AFTER_S = 3600.0
# A lock file that cannot be parsed is one being written by the O_EXCL fallback, or one whose
# writer died between creating and filling it; after this long it is the second.
UNREADABLE_GRACE_S = 30.0
TAKEOVER_ATTEMPTS = 5  # rounds of "create, or take over a stale lock" before giving up
SHOWN_COMMAND = 160  # characters of the holder's command line quoted in a message
# Errors of os.link on file systems without hard links (FAT, some FUSE and SMB mounts).
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


@dataclass(frozen=True)
class LockHolder:
    """What a lock file says about the process that holds it."""

    host: str  # socket.gethostname() of the holder
    pid: int
    started: str  # ISO 8601 local time the lock was taken
    command: str  # the holder's command line
    token: str  # random, tells this lock apart from a later one of the same pid
    boot_id: str = ""  # Linux boot id: same host name and boot id = the same running machine
    pid_namespace: str = ""  # the holder's pid namespace: its pid means something only in it
    process_start: int | None = None  # clock ticks after boot the holder started (pid reuse)

    def describe(self) -> str:
        command = self.command if len(self.command) <= SHOWN_COMMAND else self.command[:SHOWN_COMMAND] + "..."
        return f"pid {self.pid} on host {self.host}, started {self.started}: {command}"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read_text(Path("/proc/sys/kernel/random/boot_id"))


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _proc_stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (state first), or [] where there is no such file."""
    stat = _read_text(Path(f"/proc/{pid}/stat"))
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    return stat.rpartition(")")[2].split()


def _process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks after boot (/proc/PID/stat field 22), None if unknown."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def this_process(command: str | None = None) -> LockHolder:
    """The holder record of the calling process."""
    pid = os.getpid()
    return LockHolder(
        host=socket.gethostname(),
        pid=pid,
        started=datetime.now().astimezone().isoformat(timespec="seconds"),
        command=command if command is not None else shlex.join(sys.argv),
        token=uuid.uuid4().hex,
        boot_id=_boot_id(),
        pid_namespace=_pid_namespace(),
        process_start=_process_start(pid),
    )


def _parse(text: str) -> LockHolder | None:
    try:
        data = json.loads(text)
        holder = LockHolder(**data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None
    # pid 0 or below would make os.kill ask about a whole process group: not a holder.
    if holder is None or not (isinstance(holder.pid, int) and holder.pid > 0 and isinstance(holder.host, str)):
        return None
    return holder


@dataclass(frozen=True)
class _Seen:
    """A lock file as read once: enough to tell later whether it is still the same file."""

    text: str
    inode: int
    age_s: float  # seconds since its holder last touched it
    holder: LockHolder | None  # None when the file cannot be parsed


def _look(lock: Path) -> _Seen | None:
    """The lock file as it is now, or None if there is none."""
    try:
        text = lock.read_text(encoding="utf-8")
        stat = lock.stat()
    except FileNotFoundError:
        return None
    return _Seen(text, stat.st_ino, max(0.0, time.time() - stat.st_mtime), _parse(text))


def _alive(pid: int, process_start: int | None) -> bool:
    """Whether `pid` (on this machine) is still the process that took the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    fields = _proc_stat(pid)
    # A killed process whose parent has not reaped it (a zombie) still answers os.kill.
    if fields and fields[0] in ("Z", "X"):
        return False
    started = _process_start(pid)
    return process_start is None or started is None or started == process_start


def stale_reason(seen: _Seen, me: LockHolder) -> str | None:
    """Why the lock `seen` no longer protects anything, or None while its holder may run."""
    holder = seen.holder
    if holder is None:
        return "its lock file is unreadable" if seen.age_s > UNREADABLE_GRACE_S else None
    # Host name and boot id together: two machines may share a name, a reboot changes the id.
    if (holder.host, holder.boot_id, holder.pid_namespace) == (me.host, me.boot_id, me.pid_namespace):
        # Its process table is ours, so ask it: a stopped (Ctrl-Z) holder keeps its lock.
        return None if _alive(holder.pid, holder.process_start) else "that process is gone"
    if seen.age_s > STALE_AFTER_S:
        return f"its lock has not been refreshed for {seen.age_s / 3600:.1f} h"
    return None


def _create(path: Path, text: str, token: str) -> bool:
    """Create `path` holding `text` in one step; False if it exists already.

    A complete scratch file is hard-linked to `path`: atomic on local file systems and on NFS
    (where O_EXCL was unreliable before NFSv3), and no reader ever sees a half-written lock.
    File systems without hard links fall back to O_CREAT | O_EXCL.
    """
    scratch = path.with_name(f"{path.name}.{token}.tmp")
    with disk_full_guard(path, "the run lock", partial=scratch):
        scratch.write_text(text, encoding="utf-8")
    try:
        os.link(scratch, path)
    except OSError as error:
        # NFS may report a link that did happen as failed (EEXIST for a retried request whose
        # reply was lost): the link count of the scratch file is the truth.
        if os.stat(scratch).st_nlink == 2:
            return True
        if isinstance(error, FileExistsError):
            return False
        if error.errno not in NO_HARD_LINKS:
            raise
        return _create_exclusive(path, text)
    finally:
        scratch.unlink(missing_ok=True)
    return True


def _create_exclusive(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    # The guard is outside the file, so that a full disk found when closing is caught too.
    with disk_full_guard(path, "the run lock"), os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def _take_over(lock: Path, seen: _Seen, me: LockHolder, reason: str, log: Callable[[str], None]) -> None:
    """Remove the stale lock `seen`, unless another writer replaced it meanwhile.

    Two writers that both found the same stale lock must not each delete the lock the other
    has just made, so the removal itself runs under a short-lived `RUN/.lock.takeover`.
    """
    guard = lock.with_name(f"{lock.name}.takeover")
    if not _create(guard, me.token, me.token):
        guard_seen = _look(guard)
        if guard_seen is not None and guard_seen.age_s > UNREADABLE_GRACE_S:
            guard.unlink(missing_ok=True)  # its writer died in the few lines below
            return
        raise InputError(f"{lock.parent}: another writer is taking over its stale lock right now; "
                         "rerun in a minute")
    try:
        now = _look(lock)
        if now is not None and (now.text, now.inode) == (seen.text, seen.inode):
            lock.unlink(missing_ok=True)
            who = seen.holder.describe() if seen.holder else "an unknown writer"
            log(f"note: {lock.parent}: taking over the lock of {who}: {reason}")
    finally:
        guard.unlink(missing_ok=True)


def acquire(run: Path, me: LockHolder, log: Callable[[str], None]) -> Path:
    """Create `run/.lock` for `me`, taking over a stale one; returns the lock's path."""
    if run.exists() and not run.is_dir():
        raise InputError(f"{run}: the run folder path exists and is not a folder")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{run}: cannot create the run folder ({error.strerror})") from None
    lock = run / LOCK_NAME
    text = json.dumps(asdict(me), indent=2) + "\n"
    for _ in range(TAKEOVER_ATTEMPTS):
        try:
            if _create(lock, text, me.token):
                return lock
        except PermissionError:
            raise InputError(f"{run}: cannot write the run lock {lock} (permission denied)") from None
        seen = _look(lock)
        if seen is None:  # released between our attempt and the look: try again
            continue
        reason = stale_reason(seen, me)
        if reason is None:
            holder = seen.holder.describe() if seen.holder else "a writer whose lock file is being written"
            raise InputError(
                f"{run} is in use by another emodistill writer ({holder}); wait for it to finish, "
                f"or delete {lock} if that process is gone"
            )
        _take_over(lock, seen, me, reason, log)
    raise InputError(f"{run}: could not take the run lock {lock} after {TAKEOVER_ATTEMPTS} tries; "
                     "other writers keep taking it")


def owns(lock: Path, me: LockHolder) -> bool:
    """Whether `lock` is still the one `me` created."""
    seen = _look(lock)
    return seen is not None and seen.holder is not None and seen.holder.token == me.token


def _heartbeat(lock: Path, me: LockHolder, stop: threading.Event) -> None:
    """Touch the lock every HEARTBEAT_S until `stop`, so that its age says the holder runs."""
    while not stop.wait(HEARTBEAT_S):
        try:
            if owns(lock, me):
                os.utime(lock)
        except OSError:
            pass  # a passing network file system error; the next beat tries again


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def run_lock(run: Path, command: str | None = None, log: Callable[[str], None] = _stderr) -> Iterator[LockHolder]:
    """Hold `run/.lock` for the block (created here), released on exit and on any exception.

    `command` is recorded for the message a second writer sees (default: this command line).
    A `kill -9` leaves the lock behind; the next writer on this host finds its process gone
    and takes it over. With `--backend ray` the driver (the `emodistill train` process)
    holds the lock for the whole run: the member tasks, on whichever node, write into RUN
    under it and take no lock of their own.
    """
    run = Path(run)
    me = this_process(command)
    lock = acquire(run, me, log)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, me, stop), name="emodistill-run-lock", daemon=True)
    beat.start()
    try:
        yield me
    finally:
        stop.set()
        beat.join()
        # A forked child (a data-loader worker) inherits this frame but not the lock.
        if os.getpid() == me.pid:
            if owns(lock, me):
                lock.unlink(missing_ok=True)
            else:
                log(f"note: {lock} was taken over by another writer while this one ran; "
                    "check that the two did not train the same members")
