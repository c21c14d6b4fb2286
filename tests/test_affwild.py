"""Tests for the Aff-wild2 reader, the CSV manifest and the frame/audio caches
(emodistill.data.affwild, manifest, cache)."""

from __future__ import annotations

import hashlib
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
from emodistill.data.annotations import read_labels
from emodistill.data.layout import find_layout
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


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("affwild")
    return root, write_root(root)


@pytest.fixture
def root(built: tuple[Path, dict], tmp_path: Path) -> Path:
    """A private copy of the fixture root, free to change."""
    copy = tmp_path / "data"
    shutil.copytree(built[0], copy, ignore=shutil.ignore_patterns(cache.CACHE_FOLDER))
    return copy


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


def write_manifest(path: Path, tables: dict, with_split: bool = True) -> None:
    """The same labels as the annotation files, as a CSV manifest (rows in scrambled order).

    Invalid AU rows keep their marker and invalid VA rows are empty cells: both mean no label.
    """
    columns = [c for task in PAPER_TASKS for c in (("expr",) if task.name == "EXPR" else task.names)]
    lines = []
    for split, per_task in LINES.items():
        videos = sorted({video for per_video in per_task.values() for video in per_video})
        for video in videos:
            n = max(per_video.get(video, 0) for per_video in per_task.values())
            for frame in range(n):
                cells = [video, str(frame + 1), *([split] if with_split else [])]
                for task in PAPER_TASKS:
                    table = tables.get((split, task.name, video))
                    width = 1 if task.name == "EXPR" else len(task.names)
                    row = table[frame] if table is not None and frame < len(table) else None
                    if row is None or (task.name == "VA" and task.invalid in row):
                        cells += [""] * width
                    else:
                        cells += format_row(row).split(",")
                lines.append(",".join(cells))
    order = np.random.default_rng(2).permutation(len(lines))
    header = ",".join(["video", "frame", *(["split"] if with_split else []), *columns])
    path.write_text("\n".join([header, *(lines[i] for i in order)]) + "\n")


@pytest.mark.parametrize("split_name", ["train", "val"])
def test_manifest_gives_the_same_split_as_annotation_files(
    built: tuple[Path, dict], tmp_path: Path, split_name: str
) -> None:
    data_root, tables = built
    csv = tmp_path / "labels.csv"
    write_manifest(csv, tables)
    from_files, _ = load_split(data_root, split_name, size=SIZE, cache_dir=tmp_path / "a",
                               progress=False)
    from_csv, summary = load_split(data_root, split_name, size=SIZE, cache_dir=tmp_path / "b",
                                   progress=False, labels=csv)
    assert summary.source == str(csv)
    assert from_csv.video_names == from_files.video_names and from_csv.fps == from_files.fps
    for field in ("video", "frame_index", "frames"):
        np.testing.assert_array_equal(getattr(from_csv, field), getattr(from_files, field))
    for task in PAPER_TASKS:
        np.testing.assert_array_equal(from_csv.masks[task.name], from_files.masks[task.name])
        np.testing.assert_array_equal(from_csv.labels[task.name], from_files.labels[task.name])
        assert from_csv.labels[task.name].dtype == from_files.labels[task.name].dtype


def test_manifest_in_the_root_and_without_split_column(
    root: Path, built: tuple[Path, dict]
) -> None:
    shutil.rmtree(root / "annotations")
    write_manifest(root / "labels.csv", built[1], with_split=False)
    train, summary = load_split(root, "train", size=SIZE, progress=False)
    assert any("no split column" in note and "80/20" in note for note in summary.notes)

    def by_hash(video: str) -> str:  # SHA-256 of the raw video's name, first 8 bytes, mod 100
        base = video.removesuffix("_left").removesuffix("_right")
        value = int.from_bytes(hashlib.sha256(base.encode()).digest()[:8], "big")
        return "train" if value % 100 < 80 else "val"

    videos = ("v1", "v2_left", "v2_right", "v3")
    assert train.video_names == [v for v in videos if by_hash(v) == "train"]
    val, _ = load_split(root, "val", size=SIZE, progress=False)
    assert val.video_names == [v for v in videos if by_hash(v) == "val"]
    assert train.video_names and val.video_names


MANIFEST_ERRORS = [
    (2, "v1,1,train,0,1,,,,,,,,,,,3,0.1,0.2",
     "the AU columns must be all filled or all empty, got 2 of 12 filled"),
    (3, "v1,2,train,,,,,,,,,,,,,9,,", "expr is 9; expected an integer 0..6 (-1 = no label)"),
    (3, "v1,1,train,,,,,,,,,,,,,1,,", "frame 1 of video 'v1' is listed twice"),
    (2, "v1,0,train,,,,,,,,,,,,,1,,", "frame '0' is not a positive integer"),
    (2, "v1,1,test,,,,,,,,,,,,,1,,", "split 'test' is not train or val"),
    (3, "v1,2,val,,,,,,,,,,,,,1,,", "video 'v1' has rows in both train and val"),
    (2, "v1,1,train,,,,", "expected 18 comma-separated columns as in the header, got 7"),
]


@pytest.mark.parametrize(("line", "row", "message"), MANIFEST_ERRORS)
def test_manifest_errors_name_file_and_line(
    built: tuple[Path, dict], tmp_path: Path, line: int, row: str, message: str
) -> None:
    csv = tmp_path / "labels.csv"
    header = "video,frame,split," + ",".join(PAPER_TASKS["AU"].names) + ",expr,valence,arousal"
    first = "v1,1,train,,,,,,,,,,,,,1,,"
    csv.write_text("\n".join([header, *([first] if line == 3 else []), row]) + "\n")
    with pytest.raises(InputError, match=re.escape(f"{csv}:{line}: {message}")):
        load_split(built[0], "train", size=SIZE, cache_dir=tmp_path, progress=False, labels=csv)
    csv.write_text("video,frame,split,expr\n")
    with pytest.raises(InputError, match=r"lacks the column\(s\) au1, au2"):
        load_split(built[0], "train", size=SIZE, cache_dir=tmp_path, progress=False, labels=csv)


def test_audio_windows_are_cached_per_row(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split, summary = load_split(root, "train", size=SIZE, audio=True, progress=False)
    assert split.audio.shape == (63, 64, 64) and split.audio.dtype == np.float32
    assert summary.audio_cache == "cache built"
    v1 = np.flatnonzero(split.video == 0)
    expected = audio.log_mel_per_frame(
        audio.decode_audio(root / "videos" / "batch1" / "v1.mp4"), 16000, 24, 25.0
    )
    np.testing.assert_allclose(split.audio[v1], expected[split.frame_index[v1]], atol=1e-5)
    # Frame size does not matter to the audio cache: another size reuses it.
    monkeypatch.setattr(audio, "decode_audio", lambda *args: pytest.fail("audio decoded again"))
    _, summary = load_split(root, "train", size=SIZE * 2, audio=True, progress=False)
    assert summary.audio_cache == "cache reused" and summary.cache == "cache built"
    monkeypatch.undo()

    with pytest.raises(InputError, match=r"video v3 has no raw file under .*--modality v"):
        load_split(root, "val", size=SIZE, audio=True, progress=False)
    write_video(root / "videos" / "batch2" / "v2.avi", 20, 20)  # no audio track now
    with pytest.raises(InputError, match=r"v2\.avi has no audio track; the audio-visual model"):
        load_split(root, "train", size=SIZE, audio=True, progress=False)


def test_label_records_of_both_forms_match(built: tuple[Path, dict], tmp_path: Path) -> None:
    """The annotation reader and the manifest reader parse to the same per-video records."""
    csv = tmp_path / "labels.csv"
    write_manifest(csv, built[1])
    from_files = read_labels(find_layout(built[0]), "train", PAPER_TASKS)
    from_csv = read_labels(find_layout(built[0], labels=csv), "train", PAPER_TASKS)
    assert from_files.videos.keys() == from_csv.videos.keys()
    for video, per_task in from_files.videos.items():
        assert per_task.keys() == from_csv.videos[video].keys()
        for name, labels in per_task.items():
            other = from_csv.videos[video][name]
            # Invalid VA rows are empty cells in the manifest, so only valid rows line up.
            np.testing.assert_array_equal(labels.frame_index[labels.valid],
                                          other.frame_index[other.valid])
            np.testing.assert_array_equal(labels.values[labels.valid], other.values[other.valid])


def test_manifest_row_without_labels_is_still_a_frame(
    built: tuple[Path, dict], tmp_path: Path
) -> None:
    csv = tmp_path / "labels.csv"
    header = "video,frame,split," + ",".join(PAPER_TASKS["AU"].names) + ",expr,valence,arousal"
    csv.write_text(f"{header}\nv1,3,train,,,,,,,,,,,,,,,\n\nv1,1,train,,,,,,,,,,,,,5,,\n")
    split, summary = load_split(built[0], "train", size=SIZE, cache_dir=tmp_path, progress=False,
                                labels=csv)
    assert split.frame_index.tolist() == [0, 2]
    assert summary.labelled == {"AU": 0, "EXPR": 1, "VA": 0}
    assert split.masks["EXPR"].tolist() == [True, False] and split.labels["EXPR"][0] == 5
