"""The CSV manifest beside the annotation files (emodistill.data.manifest), the audio cache, and
label records of both forms."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_affwild import LINES, SIZE, format_row
from test_audio import write_video

from emodistill.core.errors import InputError
from emodistill.data import audio
from emodistill.data.affwild import load_split
from emodistill.data.annotations import read_labels
from emodistill.data.layout import find_layout
from emodistill.tasks import PAPER_TASKS


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
