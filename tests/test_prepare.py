"""Tests for `prepare`: Aff-wild2 layout, manifest, images, labels by image, resuming, failures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import pytest
from test_media import FPS, background, face_frame, iou, write_video

from emodistill.core.errors import InputError
from emodistill.data.affwild import load_split
from emodistill.data.frontend import LANDMARK_COLUMNS, Box
from emodistill.data.prepare import prepare

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
    summary = prepare([path for path, _ in two_videos.values()], out, size=64,
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
    assert list(rows[0]) == ["video", "frame", "timestamp", "face", "face_id", "x", "y", "w", "h", *LANDMARK_COLUMNS]
    expected = [("alpha", i) for i in range(1, 9)] + [("beta", i) for i in range(1, 5)]
    assert [(r["video"], int(r["frame"])) for r in rows] == expected
    truths = two_videos["alpha"][1] + two_videos["beta"][1]
    for row, truth in zip(rows, truths, strict=True):
        assert float(row["timestamp"]) == pytest.approx((int(row["frame"]) - 1) / FPS, abs=1e-3)
        if truth is None:
            assert (row["face"], row["face_id"], row["x"], row["w"], row["eye_left_x"]) == ("0", "", "", "", "")
        else:
            assert (row["face"], row["face_id"]) == ("1", "1")
            box = Box(*(float(row[k]) for k in "xywh"))
            assert iou(box, truth) > 0.5
            eye_x, eye_y = float(row["eye_left_x"]), float(row["eye_left_y"])
            assert truth.x < eye_x < truth.x + truth.w and truth.y < eye_y < truth.y + truth.h
            jpeg = f"{int(row['frame']):05d}.jpg"
            assert (out / "cropped_aligned" / row["video"] / jpeg).is_file()
    assert not (out / ".partial").exists()


def test_every_person_gets_a_folder_of_aligned_crops(two_people, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare([two_people], out, size=48, progress=False)
    assert (summary.frames, summary.people) == (60, 2)
    assert summary.crops >= 2 * 57 and "2 people followed" in str(summary)
    folders = sorted(p.name for p in (out / "cropped_aligned").iterdir())
    assert folders == ["two-people_face1", "two-people_face2"]
    rows = read_manifest(out)
    for row in rows:  # face 1 is carphone's man, on the left half; face 2 the astronaut
        assert row["video"] == f"two-people_face{row['face_id']}"
        assert (float(row["x"]) + float(row["w"]) / 2 < 176) == (row["face_id"] == "1")
        assert (out / "cropped_aligned" / row["video"] / f"{int(row['frame']):05d}.jpg").is_file()
    # The crops train as two subjects of one raw video (its sound and frame rate), as
    # Aff-wild2's _left and _right do.
    au = ",".join(["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26"])
    (out / "labels.csv").write_text(f"video,frame,split,{au},expr,valence,arousal\n" + "".join(
        f"two-people_face{face},{frame},train,{','.join('0' * 12)},{face},0.1,0.2\n"
        for face in (1, 2) for frame in range(1, 11)))
    split, _ = load_split(out, "train", size=32, progress=False)
    assert split.video_names == ["two-people_face1", "two-people_face2"]
    assert split.labels["EXPR"].tolist() == [1] * 10 + [2] * 10


def test_rerun_skips_complete_videos(two_videos, tmp_path):
    out = tmp_path / "prepared"
    paths = [path for path, _ in two_videos.values()]
    prepare(paths[:1], out, size=32, progress=False)
    first = (out / "cropped_aligned" / "alpha" / "00004.jpg").stat().st_mtime_ns
    summary = prepare(paths, out, size=32, progress=False)
    assert (summary.videos, summary.skipped, summary.frames) == (1, 1, 4)
    assert (out / "cropped_aligned" / "alpha" / "00004.jpg").stat().st_mtime_ns == first
    assert [r["video"] for r in read_manifest(out)] == ["alpha"] * 8 + ["beta"] * 4


def test_corrupt_video_stops_but_keeps_finished_ones(two_videos, tmp_path):
    out = tmp_path / "prepared"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300))
    alpha, beta = (path for path, _ in two_videos.values())
    with pytest.raises(InputError, match=r"broken\.mp4"):
        prepare([alpha, broken, beta], out, size=32, progress=False)
    assert (out / "cropped_aligned" / "alpha").is_dir()
    assert not (out / "cropped_aligned" / "broken").exists()
    assert not (out / "cropped_aligned" / "beta").exists()
    assert {r["video"] for r in read_manifest(out)} == {"alpha"}
    assert not (out / ".partial").exists()


def test_bad_inputs_fail_before_any_work(two_videos, tmp_path):
    alpha = two_videos["alpha"][0]
    out = tmp_path / "prepared"
    with pytest.raises(InputError, match=r"missing\.mp4: no such video, image or folder"):
        prepare([alpha, tmp_path / "missing.mp4"], out, progress=False)
    twin = tmp_path / "alpha.avi"
    twin.write_bytes(b"")
    with pytest.raises(InputError, match=r"both become cropped_aligned/alpha"):
        prepare([alpha, twin], out, progress=False)
    second = tmp_path / "alpha_face2.mp4"  # the folder alpha's second person would get
    second.write_bytes(b"")
    with pytest.raises(InputError, match=r"could both become cropped_aligned/alpha_face2 \(the folder of a second"):
        prepare([second, alpha], out, progress=False)
    with pytest.raises(InputError, match="detect_every"):
        prepare([alpha], out, detect_every=0, progress=False)
    assert not out.exists()
    file_out = tmp_path / "file"
    file_out.write_text("")
    with pytest.raises(InputError, match="not a folder"):
        prepare([alpha], file_out, progress=False)


def test_copies_the_video_when_a_hard_link_is_impossible(two_videos, tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError("cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    beta = two_videos["beta"][0]
    summary = prepare([beta], tmp_path / "prepared", size=32, progress=False)
    copy = tmp_path / "prepared" / "videos" / "batch1" / "beta.mp4"
    assert not copy.samefile(beta) and copy.read_bytes() == beta.read_bytes()
    assert str(summary).startswith("prepared 1 videos and 0 images (0 already done): 4 frames, "
                                   "4 with a face (100.0% found by mtcnn), 1 person followed, 4 crops")


def write_image(path: Path, rgb, extension: str) -> Path:
    """Encode `rgb` as `extension` (".png", ".webp", ".jpg") whatever `path` is called."""
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """Two face pictures (one a WEBP and one a PNG, both named .jpg), a blank one, and a text file."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    write_image(folder / "anna.jpg", face_frame(0)[0], ".webp")
    write_image(folder / "ben.jpg", face_frame(5)[0], ".png")
    write_image(folder / "wall.png", background(), ".png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_prepare_takes_images_folders_and_patterns(image_folder, two_videos, tmp_path):
    out = tmp_path / "prepared"
    notes = []
    extra = write_image(tmp_path / "cara.jpeg", face_frame(9)[0], ".jpg")
    beta = two_videos["beta"][0]
    # The folder, a pattern that names anna.jpg again, one image file and a video.
    inputs = [image_folder, str(image_folder / "an*.jpg"), extra, beta]
    summary = prepare(inputs, out, size=48, progress=False, log=notes.append)
    assert (summary.images, summary.videos, summary.frames, summary.faces) == (4, 1, 8, 7)
    assert str(summary).startswith("prepared 1 videos and 4 images (0 already done): 8 frames, "
                                   "7 with a face (87.5% found by mtcnn), 4 people followed, 7 crops")
    assert sum("anna.jpg is given more than once" in n for n in notes) == 1
    assert sum("notes.txt" in n for n in notes) == 1
    for stem in ("anna", "ben", "cara"):
        assert sorted(p.name for p in (out / "cropped_aligned" / stem).iterdir()) == ["00001.jpg"]
        assert cv2.imread(str(out / "cropped_aligned" / stem / "00001.jpg")).shape == (48, 48, 3)
    assert not any((out / "cropped_aligned" / "wall").iterdir())  # no face: no crop
    assert sorted(p.name for p in (out / "videos" / "batch1").iterdir()) == ["beta.mp4"]
    rows = {r["video"]: r for r in read_manifest(out)}
    assert list(rows) == ["anna", "ben", "beta", "cara", "wall"] and len(read_manifest(out)) == 8
    assert (rows["anna"]["frame"], rows["anna"]["timestamp"], rows["anna"]["face"]) == ("1", "", "1")
    assert iou(Box(*(float(rows["anna"][k]) for k in "xywh")), face_frame(0)[1]) > 0.5
    assert (rows["wall"]["face"], rows["wall"]["x"]) == ("0", "")
    again = prepare([image_folder / "*.jpg"], out, size=48, progress=False, log=notes.append)
    assert (again.images, again.skipped) == (0, 2)


def test_image_inputs_that_cannot_be_read_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"faces/\*\.png: no file matches this pattern"):
        prepare([str(tmp_path / "faces" / "*.png")], tmp_path / "out", progress=False)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut off")
    with pytest.raises(InputError, match=r"broken\.jpg: not a readable image"):
        prepare([broken], tmp_path / "out", progress=False)


def test_nothing_to_prepare_and_a_fake_jpg_are_one_sentence_and_exit_2(tmp_path, capsys):
    from emodistill.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no media here")
    assert main(["prepare", str(empty), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "empty: nothing to prepare: no videos (.mp4" in said and "no images" in said
    fake = tmp_path / "holiday.jpg"  # text under an image's name: an image that does not decode
    fake.write_text("not a picture")
    assert main(["prepare", str(fake), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.endswith("holiday.jpg: not a readable image") and "video" not in said


def test_labels_csv_by_image_trains_on_prepared_images(image_folder, tmp_path):
    out = tmp_path / "prepared"
    prepare([image_folder], out, size=32, progress=False, log=lambda _: None)
    au = ",".join(["AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24",
                   "AU25", "AU26"])
    (out / "labels.csv").write_text(
        f"image,split,{au},expr,valence,arousal\n"
        f"pictures/anna.jpg,train,{','.join('0' * 12)},4,0.5,0.1\n"
        f"ben.jpg,train,,,,,,,,,,,,,2,,\n"
        f"anna.jpg,train,{','.join('1' * 12)},6,-0.5,-0.1\n"  # a repeat: noted, not used
        f"wall.png,train,,,,,,,,,,,,,1,,\n"  # no face was found: no crop, counted as missing
    )
    split, summary = load_split(out, "train", size=32, progress=False)
    assert split.video_names == ["anna", "ben"]
    assert split.labels["EXPR"].tolist() == [4, 2]
    assert split.masks["AU"].tolist() == [True, False]
    assert split.labels["AU"][0].tolist() == [0.0] * 12
    repeats = [n for n in summary.notes if "listed again" in n]
    assert repeats == [f"{out / 'labels.csv'}:4: image 'anna.jpg' is listed again (first on line "
                       "2); only its first line is used"]
