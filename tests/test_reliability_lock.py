"""One writer per run folder: a second writer is refused, a dead holder's lock is taken over."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from emodistill.cli import main
from emodistill.core import runlock
from emodistill.core.errors import InputError
from emodistill.core.runlock import LOCK_NAME, run_lock, this_process

HOLD = textwrap.dedent("""
    import sys, time
    from emodistill.core.runlock import run_lock
    with run_lock(sys.argv[1], command="emodistill train --out RUN (test holder)"):
        print("locked", flush=True)
        time.sleep(120)
""")


def start_holder(run: Path) -> subprocess.Popen:
    """Another process that takes the lock of `run` and keeps it until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(run: Path, age_s: float = 0.0, **fields: object) -> Path:
    """A lock file as another process would leave it: this machine's ids unless overridden."""
    run.mkdir(parents=True, exist_ok=True)
    holder = replace(this_process("emodistill train (someone else)"), **fields)
    lock = run / LOCK_NAME
    lock.write_text(json.dumps(asdict(holder)))
    if age_s:
        then = time.time() - age_s
        os.utime(lock, (then, then))
    return lock


def holder_of(lock: Path) -> dict:
    return json.loads(lock.read_text())


def test_a_second_writer_is_refused_and_a_killed_holders_lock_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        with pytest.raises(InputError) as refused, run_lock(run):
            pass
        message = str(refused.value)
        assert f"pid {holder.pid} on host " in message and "started 20" in message
        assert "(test holder)" in message and str(run / LOCK_NAME) in message
        assert "\n" not in message
        assert holder_of(run / LOCK_NAME)["pid"] == holder.pid  # the refused writer left it alone
    except BaseException:
        holder.kill()
        raise
    holder.kill()  # kill -9: no chance to release the lock
    # Not reaped yet, the dead holder is a zombie, which still answers os.kill(pid, 0).
    deadline = time.time() + 10
    while "Z" not in Path(f"/proc/{holder.pid}/stat").read_text().rpartition(")")[2][:3] and time.time() < deadline:
        time.sleep(0.01)
    assert holder_of(run / LOCK_NAME)["pid"] == holder.pid
    notes: list[str] = []
    with run_lock(run, log=notes.append) as me:
        assert holder_of(run / LOCK_NAME)["token"] == me.token
    holder.wait()
    assert len(notes) == 1 and f"pid {holder.pid}" in notes[0] and "that process is gone" in notes[0]
    assert sorted(p.name for p in run.iterdir()) == []


def test_the_train_command_exits_2_with_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(run), "--quiet"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("emodistill train: error: ") and f"pid {holder.pid}" in err
    assert "\n" not in err and "Traceback" not in err


def test_readers_never_look_at_the_lock(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    write_lock(run, pid=os.getpid())  # a live holder: this very process
    assert main(["evaluate", str(run), "--quiet"]) == 2
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not an emodistill run" in err and "in use by" not in err


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    pid = dead_pid()
    write_lock(run, pid=pid, process_start=None)
    notes: list[str] = []
    with run_lock(run, log=notes.append):
        assert holder_of(run / LOCK_NAME)["pid"] == os.getpid()
    assert len(notes) == 1
    assert notes[0].startswith(f"note: {run}: taking over the lock of pid {pid} on host {this_process().host}, ")
    assert notes[0].endswith(": emodistill train (someone else): that process is gone")
    assert not (run / LOCK_NAME).exists()


def test_a_reused_pid_does_not_keep_a_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    me = this_process()
    assert me.process_start is not None  # Linux: /proc/self/stat
    write_lock(run, pid=os.getpid(), process_start=me.process_start - 1)  # same pid, another process
    with run_lock(run, log=lambda _: None):
        pass


def test_the_lock_is_released_after_an_exception(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="member failed"), run_lock(run):
        assert (run / LOCK_NAME).exists()
        raise RuntimeError("member failed")
    assert not (run / LOCK_NAME).exists()
    with run_lock(run):  # and it can be taken again at once
        pass


def test_a_holder_on_another_host_counts_until_its_lock_is_old(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_lock(run, host="gpu-node-7", pid=dead_pid())  # its pid means nothing here
    with pytest.raises(InputError, match=r"pid \d+ on host gpu-node-7"), run_lock(run):
        pass
    write_lock(run, age_s=runlock.STALE_AFTER_S + 60, host="gpu-node-7", pid=12345)
    notes: list[str] = []
    with run_lock(run, log=notes.append):
        pass
    assert len(notes) == 1 and "has not been refreshed for 1.0 h" in notes[0]


def test_an_unreadable_lock_is_waited_for_then_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("{cut off")
    with pytest.raises(InputError, match="being written"), run_lock(run):
        pass
    old = time.time() - runlock.UNREADABLE_GRACE_S - 5
    os.utime(run / LOCK_NAME, (old, old))
    notes: list[str] = []
    with run_lock(run, log=notes.append):
        pass
    assert "an unknown writer: its lock file is unreadable" in notes[0]


def test_the_holder_keeps_its_lock_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    run = tmp_path / "run"
    with run_lock(run):
        old = time.time() - 600
        os.utime(run / LOCK_NAME, (old, old))
        deadline = time.time() + 5
        while (run / LOCK_NAME).stat().st_mtime < time.time() - 60 and time.time() < deadline:
            time.sleep(0.02)
        assert (run / LOCK_NAME).stat().st_mtime > time.time() - 60


def test_file_systems_without_hard_links_use_o_excl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(runlock.os, "link", no_links)
    run = tmp_path / "run"
    with run_lock(run) as me:
        assert holder_of(run / LOCK_NAME)["token"] == me.token
        with pytest.raises(InputError, match="in use by"), run_lock(run):
            pass
    assert sorted(p.name for p in run.iterdir()) == []


def test_racing_writers_on_a_stale_lock_get_one_winner(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_lock(run, pid=dead_pid(), process_start=None)
    race = textwrap.dedent("""
        import sys, time
        from emodistill.core.errors import InputError
        from emodistill.core.runlock import run_lock
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
        try:
            with run_lock(sys.argv[1], log=lambda _: None):
                print("won", flush=True)
                time.sleep(1.5)
        except InputError:
            print("refused", flush=True)
    """)
    start = str(time.time() + 1.0)  # all start together, after their imports
    writers = [subprocess.Popen([sys.executable, "-c", race, str(run), start], stdout=subprocess.PIPE, text=True)
               for _ in range(4)]
    outcomes = sorted(w.communicate(timeout=30)[0].strip() for w in writers)
    assert outcomes == ["refused"] * 3 + ["won"]
    assert sorted(p.name for p in run.iterdir()) == []
