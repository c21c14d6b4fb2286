"""Tests for the Aff-wild2 reader, the CSV manifest and the frame/audio caches
(emodistill.data.affwild, manifest, cache)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_audio import write_video

from emodistill.core.errors import InputError
from emodistill.data import audio, cache
from emodistill.data.affwild import load_split
from emodistill.tasks import PAPER_TASKS, Task

CROP, SIZE = 16, 8  # crops on disk, and the size the tests ask for
# Lines per annotation file: split -> task -> video. EXPR's train folder has the 2020 spelling.
LINES = {
    "train": {"AU": {"v1": 24, "v2_left": 20}, "EXPR": {"v1": 18, "v2_right": 20},
              "VA": {"v1": 24, "v2_left": 16, "v2_right": 20}},
    "val": {"AU": {"v3": 12}, "EXPR": {"v3": 12}, "VA": {"v3": 10}},
}
FOLDER = {("train", "AU"): "Train_Set", ("train", "EXPR"): "Training_Set",
          ("train", "VA"): "Train_Set", ("val", "AU"): "Validation_Set",
          ("val", "EXPR"): "Validation_Set", ("val", "VA"): "Validation_Set"}
INVALID_ROWS = {"AU": (1, 4), "EXPR": (2,), "VA": (3,)}  # rows written with the marker
MISSING_CROP = ("v1", 5)  # 00006.jpg is deleted
FPS = {"v1": 25.0, "v2_left": 20.0, "v2_right": 20.0, "v3": 30.0}  # v3 has no raw video


def label_table(task: Task, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random labels (n, columns) as written, the invalid marker on INVALID_ROWS."""
    if task.kind == "binary":
        table = rng.integers(0, 2, (n, 12)).astype(float)
    elif task.kind == "categorical":
        table = rng.integers(0, 7, (n, 1)).astype(float)
    else:
        table = rng.uniform(-1, 1, (n, 2)).round(3)
    table[[r for r in INVALID_ROWS[task.name] if r < n]] = task.invalid
    return table


def format_row(row: np.ndarray) -> str:
    return ",".join(f"{v:g}" for v in row)


def annotation_path(root: Path, split: str, task: str, video: str) -> Path:
    folder = root / "annotations" / PAPER_TASKS[task].annotation_dir / FOLDER[split, task]
    return folder / f"{video}.txt"


def write_root(root: Path) -> dict[tuple[str, str, str], np.ndarray]:
    """An Aff-wild2-layout root; returns the label tables by (split, task, video)."""
    rng = np.random.default_rng(0)
    tables = {}
    frames_of: dict[str, int] = {}
    for split, per_task in LINES.items():
        for name, per_video in per_task.items():
            task = PAPER_TASKS[name]
            for video, n in per_video.items():
                table = tables[split, name, video] = label_table(task, n, rng)
                path = annotation_path(root, split, name, video)
                path.parent.mkdir(parents=True, exist_ok=True)
                header = "valence,arousal" if name == "VA" else ",".join(task.names)
                path.write_text("\n".join([header, *map(format_row, table)]) + "\n")
                frames_of[video] = max(frames_of.get(video, 0), n)
    for video, n in frames_of.items():
        folder = root / "cropped_aligned" / video
        folder.mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 256, (CROP, CROP, 3), np.uint8)
            cv2.imwrite(str(folder / f"{i + 1:05d}.jpg"), image)
    (root / "cropped_aligned" / MISSING_CROP[0] / f"{MISSING_CROP[1] + 1:05d}.jpg").unlink()
    (root / "videos" / "batch1").mkdir(parents=True)
    (root / "videos" / "batch2").mkdir(parents=True)
    write_video(root / "videos" / "batch1" / "v1.mp4", 24, 25, tone_hz=440.0)
    write_video(root / "videos" / "batch2" / "v2.avi", 20, 20, tone_hz=880.0)
    return tables


def expected_rows(split: str) -> list[tuple[str, int]]:
    """(video, frame) rows a split must hold, sorted: every annotated frame with a crop."""
    rows = set()
    for per_video in LINES[split].values():
        for video, n in per_video.items():
            rows.update((video, i) for i in range(n))
    rows.discard(MISSING_CROP)
    return sorted(rows)


def reference_crop(root: Path, video: str, frame: int) -> np.ndarray:
    image = cv2.imread(str(root / "cropped_aligned" / video / f"{frame + 1:05d}.jpg"))
    return cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[..., ::-1]


def test_train_split_merges_the_three_tasks(built: tuple[Path, dict], tmp_path: Path) -> None:
    data_root, tables = built
    split, summary = load_split(data_root, "train", size=SIZE, cache_dir=tmp_path, progress=False)
    rows = expected_rows("train")
    assert split.name == "train" and len(split) == len(rows) == 63
    assert split.video_names == ["v1", "v2_left", "v2_right"]
    pairs = zip(split.video, split.frame_index, strict=True)
    assert [(split.video_names[v], int(f)) for v, f in pairs] == rows
    assert split.frames.shape == (63, SIZE, SIZE, 3) and split.frames.dtype == np.uint8
    for task in PAPER_TASKS:
        for r, (video, frame) in enumerate(rows):
            table = tables.get(("train", task.name, video))
            written = table[frame] if table is not None and frame < len(table) else None
            valid = written is not None and task.invalid not in written
            assert split.masks[task.name][r] == valid
            label = split.labels[task.name][r]
            np.testing.assert_allclose(label, (written if task.name != "EXPR" else written[0])
                                       if valid else 0, rtol=1e-6)
    assert split.labels["EXPR"].dtype == np.int64 and split.labels["VA"].shape == (63, 2)
    for r in (0, 30, 62):
        np.testing.assert_array_equal(split.frames[r], reference_crop(data_root, *rows[r]))
    assert split.fps == {name: FPS[name] for name in split.video_names}
    assert split.audio is None and split.truth is None
    assert summary.missing_crops == 1 and summary.frames == 63 and summary.videos == 3
    # Invalid markers: AU rows 1 and 4 of 2 files, EXPR row 2 of 2, VA row 3 of 3.
    assert summary.invalid == {"AU": 4, "EXPR": 2, "VA": 3}
    assert summary.labelled == {"AU": 24 - 1 - 2 + 20 - 2, "EXPR": 18 - 1 - 1 + 20 - 1,
                                "VA": 24 - 1 - 1 + 16 - 1 + 20 - 1}
    assert "63 frames of 3 videos" in str(summary) and "1 annotated frames without a crop" in str(
        summary)


def test_val_split_and_a_video_without_raw_file(built: tuple[Path, dict], tmp_path: Path) -> None:
    split, summary = load_split(built[0], "val", size=SIZE, cache_dir=tmp_path, progress=False)
    assert split.video_names == ["v3"] and len(split) == 12
    assert split.masks["VA"][10:].sum() == 0  # the VA file has 10 lines for 12 frames
    assert split.fps == {"v3": 30.0}
    assert any("no raw video" in note and "v3" in note for note in summary.notes)


def test_truth_is_read_for_the_rows(root: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arrays = {}
    (root / "truth").mkdir()
    for video in ("v1", "v2_left", "v2_right"):
        arrays[video] = {t.name: rng.random((24, t.n_logits)).astype(np.float32) for t in PAPER_TASKS}
        np.savez(root / "truth" / f"{video}.npz", **arrays[video])
    split, _ = load_split(root, "train", size=SIZE, cache_dir=tmp_path, progress=False)
    for task in PAPER_TASKS:
        expected = [arrays[split.video_names[v]][task.name][f]
                    for v, f in zip(split.video, split.frame_index, strict=True)]
        np.testing.assert_array_equal(split.truth[task.name], np.stack(expected))
    (root / "truth" / "v2_right.npz").unlink()
    with pytest.raises(InputError, match=r"v2_right\.npz is missing"):
        load_split(root, "train", size=SIZE, cache_dir=tmp_path, progress=False)


BAD_LINES = [
    ("AU", "0,1,0,1,0,1,0,1,0,1,0", "expected 12 comma-separated AU values, got 11"),
    ("AU", "0,2,0,0,0,0,0,0,0,0,0,0", "AU2 is 2; expected 0 or 1 (-1 = no label)"),
    ("AU", "0,1,0,1,0,1,0,1,0,1,0,-5", "AU26 is -5; expected 0 or 1 (-1 = no label)"),
    ("EXPR", "9", "expr is 9; expected an integer 0..6 (-1 = no label)"),
    ("EXPR", "2.5", "expr is 2.5; expected an integer 0..6"),
    ("EXPR", "1,2", "expected one EXPR value, got 2"),
    ("VA", "1.7,0.2", "valence is 1.7; expected a number in [-1, 1] (-5 = no label)"),
    ("VA", "0.1,abc", "arousal 'abc' is not a number"),
    ("VA", "0.1", "expected 2 comma-separated VA values, got 1"),
]


@pytest.mark.parametrize(("task", "line", "message"), BAD_LINES)
def test_a_malformed_line_names_file_and_line(
    root: Path, tmp_path: Path, task: str, line: str, message: str
) -> None:
    path = annotation_path(root, "train", task, "v1")
    lines = path.read_text().splitlines()
    lines[3] = line  # the third frame, line 4 counting the header
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:4: {message}")):
        load_split(root, "train", size=SIZE, cache_dir=tmp_path, progress=False)


def test_a_header_that_looks_like_data_is_still_skipped(root: Path, tmp_path: Path) -> None:
    path = annotation_path(root, "train", "EXPR", "v1")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")  # header gone: the first label line is line 1
    split, summary = load_split(root, "train", size=SIZE, cache_dir=tmp_path, progress=False)
    assert any("looks like data" in note for note in summary.notes)
    # 17 label lines remain, now read as frames 0..16.
    v1 = split.video == split.video_names.index("v1")
    assert split.frame_index[v1 & split.masks["EXPR"]].max() <= 16


def test_bad_folders_are_clear_errors(root: Path, tmp_path: Path) -> None:
    def load(where: Path, split: str = "train") -> None:
        load_split(where, split, size=SIZE, cache_dir=tmp_path, progress=False)

    with pytest.raises(InputError, match="is not a folder"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty" / "photos").mkdir(parents=True)
    with pytest.raises(InputError, match=r"is no Aff-wild2 layout this version knows: it holds photos/; "
                                         r"expected annotations/.*labels\.csv manifest"):
        load(tmp_path / "empty")
    with pytest.raises(InputError, match="unknown split 'test'"):
        load(root, "test")
    (root / "annotations" / "AU_Set" / "Training_Set").mkdir()
    with pytest.raises(InputError, match="holds both Train_Set and Training_Set"):
        load(root)
    (root / "annotations" / "AU_Set" / "Training_Set").rmdir()
    shutil.rmtree(root / "cropped_aligned" / "v3")
    with pytest.raises(InputError, match=re.escape(
        "the val split has no frames: none of the 12 frames listed in "
        f"{root / 'annotations'}/*/Validation_Set has a crop in {root / 'cropped_aligned'}"
    )):
        load(root, "val")
    for task in PAPER_TASKS:
        shutil.rmtree(root / "annotations" / task.annotation_dir / "Validation_Set")
    with pytest.raises(InputError, match="the val split has no labelled frames"):
        load(root, "val")
    annotation_path(root, "train", "VA", "v1").write_text("")
    with pytest.raises(InputError, match=r"v1\.txt is empty"):
        load(root)
    shutil.rmtree(root / "annotations")
    (root / "annotations").mkdir()
    with pytest.raises(InputError, match=r"is no Aff-wild2 layout this version knows: it holds annotations/, "):
        load(root)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[: len(data) // 2], "is not a complete JPEG file"),
    (lambda data: b"\xff\xd8" + b"junk" * 30 + b"\xff\xd9", "could not be decoded as a JPEG"),
])
def test_a_corrupt_crop_names_the_file(root: Path, tmp_path: Path, damage, message: str) -> None:
    crop = root / "cropped_aligned" / "v2_left" / "00007.jpg"
    crop.write_bytes(damage(crop.read_bytes()))
    with pytest.raises(InputError, match=re.escape(f"{crop} {message}")):
        load_split(root, "train", size=SIZE, cache_dir=tmp_path, progress=False)


def test_a_corrupt_raw_video_names_the_file(root: Path, tmp_path: Path) -> None:
    raw = root / "videos" / "batch1" / "v1.mp4"
    raw.write_bytes(raw.read_bytes()[:200])
    with pytest.raises(InputError, match=re.escape(f"{raw} could not be opened as a video")):
        load_split(root, "train", size=SIZE, cache_dir=tmp_path, progress=False)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, summary = load_split(root, "train", size=SIZE, progress=False)
    assert summary.cache == "cache built" and not summary.cache_reused
    npy = root / cache.CACHE_FOLDER / f"train-frames-{SIZE}.npy"
    assert summary.cache_path == npy and npy.with_suffix(".json").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("a crop was decoded although the cache is valid")

    with monkeypatch.context() as patch:
        patch.setattr(cv2, "imdecode", no_decoding)
        patch.setattr(audio, "decode_audio", no_decoding)  # visual loading never reads audio
        second, summary = load_split(root, "train", size=SIZE, progress=False)
    assert summary.cache == "cache reused" and summary.cache_reused
    assert isinstance(second.frames, np.memmap) and not second.frames.flags.writeable
    np.testing.assert_array_equal(second.frames, first.frames)

    crop = root / "cropped_aligned" / "v2_right" / "00003.jpg"
    stat = crop.stat()
    os.utime(crop, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _, summary = load_split(root, "train", size=SIZE, progress=False)
    assert summary.cache == "cache rebuilt: 1 files changed"

    # Editing a label (same rows) must not re-decode the crops: only the changed crop counts.
    cv2.imwrite(str(crop), np.full((CROP, CROP, 3), 200, np.uint8))
    path = annotation_path(root, "train", "VA", "v1")
    path.write_text(path.read_text().replace("\n", "\r\n"))
    third, summary = load_split(root, "train", size=SIZE, progress=False)
    assert summary.cache == "cache rebuilt: 1 files changed"
    row = third.video_names.index("v2_right"), 2
    r = int(np.flatnonzero((third.video == row[0]) & (third.frame_index == row[1]))[0])
    np.testing.assert_array_equal(third.frames[r], reference_crop(root, "v2_right", 2))
    np.testing.assert_array_equal(third.frames[:r], first.frames[:r])


def test_read_only_root_caches_in_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache.os, "access", lambda *args: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    folder = cache.default_cache_dir(tmp_path / "data")
    assert folder.parent == tmp_path / "user" / "emodistill" and folder.name.startswith("data-")
