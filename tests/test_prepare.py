"""Tests for `prepare_videos`: Aff-wild2 layout, manifest, no-face frames, resuming, failures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import pytest
from test_media import FPS, background, face_frame, iou, write_video

from emodistill.data.media import Box
from emodistill.data.prepare import prepare_videos
from emodistill.errors import InputError

N_BLANK_FIRST = 3  # background-only frames opening video "alpha": no face, no crop


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory) -> dict[str, tuple[Path, list]]:
    """alpha: 3 background frames then 5 face frames; beta: 4 face frames. Boxes per frame."""
    folder = tmp_path_factory.mktemp("raw")
    alpha = [(background(), None)] * N_BLANK_FIRST + [face_frame(k) for k in range(5)]
    beta = [face_frame(k) for k in range(4)]
    return {
        name: (write_video(folder / f"{name}.mp4", [f for f, _ in pairs]), [b for _, b in pairs])
        for name, pairs in (("alpha", alpha), ("beta", beta))
    }


def read_manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_writes_aff_wild2_layout_and_manifest(two_videos, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_videos([path for path, _ in two_videos.values()], out, size=64,
                             progress=False)
    assert (summary.videos, summary.skipped, summary.frames, summary.faces) == (2, 0, 12, 9)
    alpha = sorted(p.name for p in (out / "cropped_aligned" / "alpha").iterdir())
    assert alpha == [f"{i:05d}.jpg" for i in range(N_BLANK_FIRST + 1, N_BLANK_FIRST + 6)]
    assert len(list((out / "cropped_aligned" / "beta").iterdir())) == 4
    crop = cv2.imread(str(out / "cropped_aligned" / "beta" / "00001.jpg"))
    assert crop.shape == (64, 64, 3)
    for name, (path, _) in two_videos.items():
        copy = out / "videos" / "batch1" / f"{name}.mp4"
        assert copy.samefile(path)  # a hard link: same file system here

    rows = read_manifest(out)
    assert list(rows[0]) == ["video", "frame", "timestamp", "face", "x", "y", "w", "h"]
    expected = [("alpha", i) for i in range(1, 9)] + [("beta", i) for i in range(1, 5)]
    assert [(r["video"], int(r["frame"])) for r in rows] == expected
    truths = two_videos["alpha"][1] + two_videos["beta"][1]
    for row, truth in zip(rows, truths, strict=True):
        assert float(row["timestamp"]) == pytest.approx((int(row["frame"]) - 1) / FPS, abs=1e-3)
        if truth is None:
            assert (row["face"], row["x"], row["w"]) == ("0", "", "")
        else:
            assert row["face"] == "1"
            box = Box(*(float(row[k]) for k in "xywh"))
            assert iou(box, truth) > 0.5
            jpeg = f"{int(row['frame']):05d}.jpg"
            assert (out / "cropped_aligned" / row["video"] / jpeg).is_file()
    assert not (out / ".partial").exists()


def test_rerun_skips_complete_videos(two_videos, tmp_path):
    out = tmp_path / "prepared"
    paths = [path for path, _ in two_videos.values()]
    prepare_videos(paths[:1], out, size=32, progress=False)
    first = (out / "cropped_aligned" / "alpha" / "00004.jpg").stat().st_mtime_ns
    summary = prepare_videos(paths, out, size=32, progress=False)
    assert (summary.videos, summary.skipped, summary.frames) == (1, 1, 4)
    assert (out / "cropped_aligned" / "alpha" / "00004.jpg").stat().st_mtime_ns == first
    assert [r["video"] for r in read_manifest(out)] == ["alpha"] * 8 + ["beta"] * 4


def test_corrupt_video_stops_but_keeps_finished_ones(two_videos, tmp_path):
    out = tmp_path / "prepared"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    alpha, beta = (path for path, _ in two_videos.values())
    with pytest.raises(InputError, match=r"broken\.mp4"):
        prepare_videos([alpha, broken, beta], out, size=32, progress=False)
    assert (out / "cropped_aligned" / "alpha").is_dir()
    assert not (out / "cropped_aligned" / "broken").exists()
    assert not (out / "cropped_aligned" / "beta").exists()
    assert {r["video"] for r in read_manifest(out)} == {"alpha"}
    assert not (out / ".partial").exists()


def test_bad_inputs_fail_before_any_work(two_videos, tmp_path):
    alpha = two_videos["alpha"][0]
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=r"missing\.mp4: no such video file"):
        prepare_videos([alpha, tmp_path / "missing.mp4"], out, progress=False)
    twin = tmp_path / "alpha.avi"
    twin.write_bytes(b"")
    with pytest.raises(InputError, match=r"both become cropped_aligned/alpha"):
        prepare_videos([alpha, twin], out, progress=False)
    with pytest.raises(InputError, match="detect_every"):
        prepare_videos([alpha], out, detect_every=0, progress=False)
    assert not out.exists()
    file_out = tmp_path / "file"
    file_out.write_text("")
    with pytest.raises(InputError, match="not a folder"):
        prepare_videos([alpha], file_out, progress=False)


def test_copies_the_video_when_a_hard_link_is_impossible(two_videos, tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    beta = two_videos["beta"][0]
    summary = prepare_videos([beta], tmp_path / "prepared", size=32, progress=False)
    copy = tmp_path / "prepared" / "videos" / "batch1" / "beta.mp4"
    assert not copy.samefile(beta) and copy.read_bytes() == beta.read_bytes()
    assert str(summary).startswith("prepared 1 videos (0 already done): 4 frames, 4 with a face")
