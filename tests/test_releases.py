"""Every Aff-wild2 release's layout on tiny generated folders: found without a flag, named, read
with its task set (7 or 8 expressions); the copies people unpack differently; bad layouts in one
sentence; `--release` overriding the folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from emodistill.cli import main
from emodistill.core.errors import InputError
from emodistill.data.affwild import load_split
from emodistill.data.layout import find_layout
from emodistill.data.synth import generate
from emodistill.data.synth.affect import AffectConfig, AffectTrack, label_truth
from emodistill.tasks import RELEASES, task_set

# release -> (annotation files, expressions)
EXPECTED = {"ABAW2": ("task folders", 7), "ABAW3": ("task folders", 8), "ABAW4": ("multi-task files", 8),
            "ABAW5": ("task folders", 8), "ABAW6": ("task folders", 8), "ABAW7": ("multi-task files", 8),
            "ABAW8": ("task folders", 8)}


def tiny(root: Path, release: str) -> Path:
    generate(root, videos=6, frames=10, size=16, seed=2, progress=False, release=release)
    return root


@pytest.fixture(scope="module")
def abaw6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny(tmp_path_factory.mktemp("abaw6") / "data", "ABAW6")


@pytest.mark.parametrize("release", list(RELEASES))
def test_each_release_is_found_named_and_read_with_its_classes(release: str, tmp_path: Path) -> None:
    root = tiny(tmp_path / "data", release)
    layout = find_layout(root)
    assert layout.release.name == release and layout.labels_from == EXPECTED[release][0]
    for split in ("train", "val"):
        data, summary = load_split(root, split, size=16, progress=False)
        assert str(summary).startswith(f"release {RELEASES[release].label}, ")
        assert data.tasks.release == release and data.tasks["EXPR"].n_classes == EXPECTED[release][1]
        assert len(data) > 0 and set(data.tasks_present) == {"AU", "EXPR", "VA"}
        assert data.truth is not None and data.truth["EXPR"].shape[1] == EXPECTED[release][1]


def test_the_simulator_draws_other_as_a_class_of_its_own(abaw6: Path) -> None:
    # "Other" is a state of the simulated faces: at the apex of its episode the truth says Other
    config = AffectConfig.for_expressions(8)
    prototypes, prototype_va = config.prototypes()
    n = 3
    track = AffectTrack(category=np.full(n, 7), envelope=np.ones(n), valence=np.full(n, prototype_va[7, 0]),
                        arousal=np.full(n, prototype_va[7, 1]), au=np.tile(prototypes[7], (n, 1)),
                        cue=np.tile(np.concatenate([prototypes[7], prototype_va[7]]), (n, 1)))
    assert (label_truth(track, config)["EXPR"].argmax(1) == 7).all()
    assert AffectConfig.for_expressions(7) == AffectConfig()  # the 2021 simulation is unchanged
    assert {p.name for p in abaw6.glob("cropped_aligned/*")} == {"cropped_aligned", "cropped_aligned_new_50_vids"}
    assert any(p.name.endswith("_left") for p in (abaw6 / "cropped_aligned").rglob("*_left"))


def test_copies_unpacked_another_way_are_read_alike(abaw6: Path, tmp_path: Path) -> None:
    reference, _ = load_split(abaw6, "train", size=16, progress=False)
    moved = tmp_path / "copy"
    shutil.copytree(abaw6, moved, ignore=shutil.ignore_patterns(".emodistill-cache"))
    # the annotation root one level deeper and spelled with spaces; the EXPR folder of other
    # 2024 code; crops under batch folders
    (moved / "6th ABAW Annotations").mkdir()
    (moved / "6th_ABAW_Annotations").rename(moved / "6th ABAW Annotations" / "6th ABAW Annotations")
    annotations = moved / "6th ABAW Annotations" / "6th ABAW Annotations"
    (annotations / "EXPR_Recognition_Challenge").rename(annotations / "EXPR_Classification_Challenge")
    (moved / "batch1").mkdir()
    (moved / "batch2").mkdir()
    (moved / "cropped_aligned" / "cropped_aligned").rename(moved / "batch1" / "cropped_aligned")
    (moved / "cropped_aligned" / "cropped_aligned_new_50_vids").rename(moved / "batch2" / "cropped_aligned_new_50_vids")
    data, summary = load_split(moved, "train", size=16, progress=False)
    assert "release ABAW6 (2024)" in str(summary)
    np.testing.assert_array_equal(data.frames, reference.frames)
    np.testing.assert_array_equal(data.labels["EXPR"], reference.labels["EXPR"])


def test_a_folder_without_the_edition_in_its_name_reads_as_2022_and_release_names_it(abaw6: Path,
                                                                                  tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(abaw6, copy, ignore=shutil.ignore_patterns(".emodistill-cache"))
    (copy / "6th_ABAW_Annotations").rename(copy / "labels")
    data, summary = load_split(copy, "val", size=16, progress=False)
    assert data.tasks["EXPR"].n_classes == 8 and "does not name its edition" in str(summary)
    data, summary = load_split(copy, "val", size=16, progress=False, release="abaw5")
    assert data.tasks.release == "ABAW5" and "as asked (--release)" in str(summary)


def test_other_in_2021_data_says_which_release_to_pass(tmp_path: Path) -> None:
    root = tiny(tmp_path / "data", "ABAW2")
    path = next((root / "annotations" / "EXPR_Set" / "Train_Set").glob("*.txt"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "7", *lines[2:]]) + "\n")
    shutil.rmtree(root / "truth")  # the simulator's 7-class truth would not fit a forced 2022+ read
    with pytest.raises(InputError, match=rf"{path.name}:2: EXPR is 7, the class 'Other' .* --release abaw6"):
        load_split(root, "train", size=16, progress=False)
    data, _ = load_split(root, "train", size=16, progress=False, release="ABAW6")  # read as 2022+: valid
    assert data.tasks["EXPR"].n_classes == 8 and 7 in data.labels["EXPR"][data.masks["EXPR"]]


def test_multi_task_files_read_with_or_without_header_and_name_a_bad_row(tmp_path: Path) -> None:
    root = tiny(tmp_path / "data", "ABAW4")
    path = root / "4th_ABAW_Annotations" / "training_set_annotations.txt"
    with_header, _ = load_split(root, "train", size=16, progress=False)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("image,valence,arousal,expression,AU1")
    path.write_text("\n".join(lines[1:]) + "\n")
    without, _ = load_split(root, "train", size=16, progress=False)
    np.testing.assert_array_equal(with_header.frame_index, without.frame_index)
    # the frames are sparse: every third (of those with a face crop)
    assert (with_header.frame_index % 3 == 0).all() and len(np.unique(with_header.frame_index)) > 1
    path.write_text("\n".join([lines[0], lines[1], "synth-0000/00004.jpg,0.1,0.2"]) + "\n")
    with pytest.raises(InputError, match=rf"{path.name}:3: expected 16 comma-separated fields"):
        load_split(root, "train", size=16, progress=False)


def test_an_unknown_layout_is_one_sentence_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "mine" / "faces").mkdir(parents=True)
    (tmp_path / "mine" / "notes").mkdir()
    assert main(["train", "--data", str(tmp_path / "mine"), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "holds faces/, notes/; expected annotations/{AU,EXPR,VA}_Set" in error
    assert not (tmp_path / "run" / "run.json").exists()  # nothing written for a failed start
    assert main(["synth", "--out", str(tmp_path / "s"), "--release", "abaw9", "--quiet"]) == 2
    assert "invalid choice: 'ABAW9'" in capsys.readouterr().err


def test_task_sets_round_trip_and_describe_themselves() -> None:
    eight = task_set("abaw6")
    assert eight["EXPR"].names[-1] == "Other" and eight["EXPR"].n_logits == 8
    assert type(eight).from_dict(eight.as_dict()) == eight
    assert eight.describe() == "AU (12), EXPR (8 classes, with Other), VA (valence, arousal)"
    with pytest.raises(InputError, match="unknown release 'ABAW1'"):
        task_set("ABAW1")
