"""A full disk: one sentence naming the file, no partial file left, and a rerun that works.

The tests write into a 2 MiB tmpfs that the fixture mounts and unmounts (root only).
"""

from __future__ import annotations

import errno
import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from emodistill.core.atomic import atomic_write, disk_full_guard, disk_full_sentence
from emodistill.core.checkpoints import load_arrays, load_weights, read_json, save_arrays, save_weights, write_json
from emodistill.core.errors import DiskFullError
from emodistill.data.cache import cached_array
from emodistill.predict.columns import FramePrediction
from emodistill.predict.tables import read_table, write_csv, write_parquet

DISK_BYTES = 2 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 2 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is tested on a size-capped tmpfs, and mounting one needs root")
    if shutil.which("mount") is None:
        pytest.skip("a full disk is tested on a size-capped tmpfs, and there is no `mount` command")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-capped tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        gc.collect()  # memory maps of the test's arrays keep the mount busy
        subprocess.run(["umount", str(disk)], check=True)


def fill(disk: Path, leave: int, name: str = "filler") -> Path:
    """A file that leaves about `leave` bytes free on `disk`; delete it to free the space."""
    stat = os.statvfs(disk)
    filler = disk / name
    filler.write_bytes(b"\0" * max(0, stat.f_bfree * stat.f_frsize - leave))
    return filler


def assert_full_disk_sentence(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert message.startswith(f"{path}: no space left on device while writing ")
    assert "rerun" in message and "\n" not in message


def leftovers(disk: Path) -> list[str]:
    return sorted(p.name for p in disk.rglob("*") if not p.name.startswith("filler") and p.is_file())


def test_member_weights_on_a_full_disk(small_disk: Path) -> None:
    model = torch.nn.Linear(400, 400)  # 641 kB of float32
    path = small_disk / "teacher" / "member-0.safetensors"
    filler = fill(small_disk, leave=300_000)
    with pytest.raises(DiskFullError) as error:
        save_weights(path, model)
    assert_full_disk_sentence(error, path)
    assert leftovers(small_disk) == []  # no temporary file and no half member
    filler.unlink()
    save_weights(path, model)
    copy = torch.nn.Linear(400, 400)
    load_weights(path, copy)
    assert torch.equal(copy.weight, model.weight)


def test_soft_labels_and_records_on_a_full_disk(small_disk: Path) -> None:
    soft = {"AU": np.random.default_rng(0).random((20_000, 12), dtype=np.float32)}  # 960 kB
    path = small_disk / "teacher" / "soft_labels.safetensors"
    record = small_disk / "teacher" / "member-0.json"
    filler = fill(small_disk, leave=200_000)
    with pytest.raises(DiskFullError) as error:
        save_arrays(path, soft)
    assert_full_disk_sentence(error, path)
    fill(small_disk, leave=0, name="filler-2")  # now not even a record fits
    with pytest.raises(DiskFullError) as error:
        write_json(record, {"history": list(range(10_000))})
    assert_full_disk_sentence(error, record)
    assert leftovers(small_disk) == []
    filler.unlink()
    (small_disk / "filler-2").unlink()
    save_arrays(path, soft)
    write_json(record, {"history": [1, 2]})
    assert np.array_equal(load_arrays(path)["AU"], soft["AU"])
    assert read_json(record) == {"history": [1, 2]}


def test_frame_cache_on_a_full_disk(small_disk: Path) -> None:
    cache = small_disk / ".emodistill-cache"
    shape = (100, 48, 48, 3)  # 691 kB
    decoded: list[int] = []

    def decode(out: np.ndarray) -> None:
        out[:] = 7
        decoded.append(len(out))

    filler = fill(small_disk, leave=300_000)
    with pytest.raises(DiskFullError) as error:
        cached_array(cache, "train-frames-48", {"files": {}}, shape, np.uint8, decode)
    assert_full_disk_sentence(error, cache / "train-frames-48.npy")
    # Space is taken before decoding: a memory-mapped write into a full tmpfs would be a SIGBUS.
    assert decoded == []
    assert leftovers(small_disk) == []
    filler.unlink()
    built = cached_array(cache, "train-frames-48", {"files": {}}, shape, np.uint8, decode)
    assert built.status == "cache built" and int(built.array[-1, -1, -1, -1]) == 7
    again = cached_array(cache, "train-frames-48", {"files": {}}, shape, np.uint8, decode)
    assert again.reused and decoded == [100]
    del built, again  # close the memory maps, so that the disk can be unmounted


@pytest.mark.parametrize("suffix, writer", [(".csv", write_csv), (".parquet", write_parquet)])
def test_prediction_tables_on_a_full_disk(small_disk: Path, suffix: str, writer) -> None:
    columns = ["frame", "valence", "arousal"]
    rng = np.random.default_rng(1)

    def predictions() -> Iterator[FramePrediction]:
        for frame in range(30_000):
            valence, arousal = rng.random(2)
            yield FramePrediction({"frame": frame, "valence": valence, "arousal": arousal}, None, None)

    path = small_disk / f"talk.emotions{suffix}"
    filler = fill(small_disk, leave=100_000)
    with pytest.raises(DiskFullError) as error:
        writer(path, predictions(), columns, lambda _: None)
    assert_full_disk_sentence(error, path)
    assert "the prediction table" in str(error.value)
    assert leftovers(small_disk) == []
    filler.unlink()
    writer(path, predictions(), columns, lambda _: None)
    assert len(read_table(path)) == 30_000


def test_report_files_on_a_full_disk(small_disk: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = small_disk / "report"
    report.mkdir()
    filler = fill(small_disk, leave=0)
    with pytest.raises(DiskFullError) as error:
        atomic_write(report / "report.md", lambda tmp: tmp.write_text("# Report\n" * 50_000))
    assert_full_disk_sentence(error, report / "report.md")
    figure = plt.figure()
    plt.plot(np.random.default_rng(2).random(5_000))
    with pytest.raises(DiskFullError) as error, disk_full_guard(report / "roc.png", "a figure"):
        figure.savefig(report / "roc.png", dpi=200)  # matplotlib writes in place
    plt.close(figure)
    assert_full_disk_sentence(error, report / "roc.png")
    assert leftovers(small_disk) == []
    filler.unlink()
    atomic_write(report / "report.md", lambda tmp: tmp.write_text("# Report\n"))
    assert (report / "report.md").read_text() == "# Report\n"


def test_writers_that_hide_the_errno_are_recognised() -> None:
    # safetensors (Rust) and pyarrow (C++) wrap the OS error in their own exceptions.
    from safetensors import SafetensorError

    for raised in (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                   OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"),
                   RuntimeError("export failed: Disk quota exceeded")):
        with pytest.raises(DiskFullError, match=r"^out\.bin: "), disk_full_guard(Path("out.bin")):
            raise raised
    with pytest.raises(ValueError, match="unrelated"), disk_full_guard(Path("out.bin")):
        raise ValueError("unrelated")


def test_the_command_line_turns_an_unguarded_full_disk_into_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import emodistill.models
    from emodistill.cli import main

    def full_disk() -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "data/mine/cropped_aligned/clip/00001.jpg")

    monkeypatch.setattr(emodistill.models, "presets_table", full_disk)
    assert main(["models"]) == 2
    assert capsys.readouterr().err == (
        "emodistill models: error: data/mine/cropped_aligned/clip/00001.jpg: no space left on device; "
        "free some space and rerun the same command\n"
    )
    assert disk_full_sentence(OSError(errno.EACCES, "Permission denied")) is None
