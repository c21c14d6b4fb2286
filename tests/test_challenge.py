"""The ABAW challenges' own scores against scikit-learn, and submission files: written in every
form, read back, and scored 1.0 when written from the ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from emodistill.core.errors import InputError
from emodistill.data.layout import find_layout
from emodistill.evaluation.metrics import ccc
from emodistill.predict.submit import (
    Predictions,
    decisions,
    example_sheet,
    read_sheet,
    score_sheets,
    validation_sheets,
    write_sheet,
)
from emodistill.tasks import task_set
from emodistill.tasks.challenge import challenge_scores, decisions_of

rng = np.random.default_rng(4)
N = 300


def random_case(classes: int) -> tuple[dict, dict]:
    labels = {"AU": (rng.random((N, 12)) < 0.3).astype(np.float32), "EXPR": rng.integers(0, classes, N),
              "VA": rng.uniform(-1, 1, (N, 2)).astype(np.float32)}
    probs = {"AU": rng.random((N, 12)), "EXPR": rng.dirichlet(np.ones(classes), N),
             "VA": np.concatenate([rng.dirichlet(np.ones(20), N), rng.dirichlet(np.ones(20), N)], axis=1)}
    return labels, probs


def va_values(probs: np.ndarray) -> np.ndarray:
    centres = np.linspace(-0.95, 0.95, 20)
    return np.stack([probs[:, :20] @ centres, probs[:, 20:] @ centres], axis=1)


@pytest.mark.parametrize(("release", "classes"), [("ABAW2", 7), ("ABAW6", 8)])
def test_challenge_scores_match_scikit_learn(release: str, classes: int) -> None:
    tasks = task_set(release)
    labels, probs = random_case(classes)
    masks = {"EXPR": np.arange(N) % 5 != 0}  # some frames without a valid expression
    scores = challenge_scores(tasks, tasks.info.scoring, labels, decisions_of(tasks, probs), masks)["scores"]
    expr_true, expr_pred = labels["EXPR"][masks["EXPR"]], probs["EXPR"][masks["EXPR"]].argmax(1)
    expr_f1 = f1_score(expr_true, expr_pred, average="macro", labels=range(classes), zero_division=0)
    au_pred = probs["AU"] > 0.5
    au_f1 = np.mean([f1_score(labels["AU"][:, c], au_pred[:, c], zero_division=0) for c in range(12)])
    va_pred = va_values(probs["VA"])
    p_va = (ccc(labels["VA"][:, 0], va_pred[:, 0]) + ccc(labels["VA"][:, 1], va_pred[:, 1])) / 2
    if release == "ABAW2":
        assert scores["P_EXPR"] == pytest.approx(0.67 * expr_f1 + 0.33 * accuracy_score(expr_true, expr_pred))
        assert scores["P_AU"] == pytest.approx(0.5 * au_f1 + 0.5 * np.mean(au_pred == labels["AU"]))
        assert "P_MTL" not in scores
    else:
        assert scores["P_EXPR"] == pytest.approx(expr_f1)
        assert scores["P_AU"] == pytest.approx(au_f1)
        assert scores["P_MTL"] == pytest.approx(expr_f1 + au_f1 + p_va)
    assert scores["P_VA"] == pytest.approx(p_va)


def write_labels(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """A 2024-layout validation set of two videos whose expressions cover all 8 classes, with
    invalid frames; returns task -> video -> the labels written (invalid markers included)."""
    tasks = task_set("ABAW6")
    annotations = root / "6th_ABAW_Annotations"
    written: dict[str, dict[str, np.ndarray]] = {}
    folders = {"AU": "AU_Detection_Challenge", "EXPR": "EXPR_Recognition_Challenge", "VA": "VA_Estimation_Challenge"}
    for video, n in (("v1", 24), ("v2_left", 20)):
        (root / "cropped_aligned" / "cropped_aligned" / video).mkdir(parents=True)
        values = {"AU": (rng.random((n, 12)) < 0.4).astype(int), "EXPR": np.arange(n) % 8,
                  "VA": np.round(rng.uniform(-1, 1, (n, 2)), 4)}
        values["AU"][3] = -1
        values["EXPR"][5] = -1
        values["VA"][7] = -5
        for task in tasks:
            folder = annotations / folders[task.name] / "Validation_Set"
            folder.mkdir(parents=True, exist_ok=True)
            lines = [",".join(task.names), *(task.annotation_line(np.atleast_1d(row)) for row in values[task.name])]
            (folder / f"{video}.txt").write_text("\n".join(lines) + "\n")
            written.setdefault(task.name, {})[video] = values[task.name]
    return written


def truth_as_predictions(written: dict, tasks) -> Predictions:
    """Predictions whose decisions are the labels: one-hot classes, 0/1 AUs, VA bins at the value."""
    found = Predictions()
    for video in written["AU"]:
        n = len(written["AU"][video])
        expr = np.eye(8)[np.maximum(written["EXPR"][video], 0)]
        va = np.zeros((n, 40))
        centres = np.linspace(-0.95, 0.95, 20)
        for d in range(2):  # two neighbouring bins weighted so the expectation is the value
            value = np.clip(written["VA"][video][:, d], -0.95, 0.95)
            low = np.clip(np.searchsorted(centres, value) - 1, 0, 18)
            share = (centres[low + 1] - value) / (centres[low + 1] - centres[low])
            va[np.arange(n), d * 20 + low] = share
            va[np.arange(n), d * 20 + low + 1] = 1 - share
        found.frames[video] = np.arange(1, n + 1)
        found.probs[video] = {"AU": np.clip(written["AU"][video], 0, 1).astype(float), "EXPR": expr, "VA": va}
    return found


@pytest.mark.parametrize("form", ["single", "per-video"])
def test_a_submission_written_from_the_ground_truth_scores_1(form: str, tmp_path: Path) -> None:
    written = write_labels(tmp_path / "data")
    tasks = task_set("ABAW6")
    layout = find_layout(tmp_path / "data")
    sheets = validation_sheets(layout, tasks, form, tmp_path / "out")
    assert [s.tasks for s in sheets] == [("AU",), ("EXPR",), ("VA",)]
    predictions = truth_as_predictions(written, tasks)
    paths = [write_sheet(s, decisions(s, predictions, tasks)[0], tasks) for s in sheets]
    scores = score_sheets(paths, layout, tasks)["scores"]
    # VA within the 4 decimals the files hold (the values beyond +-0.95 sit at the end bins' centres)
    assert scores["P_AU"] == 1.0 and scores["P_EXPR"] == 1.0 and scores["P_VA"] == pytest.approx(1.0, abs=2e-3)
    if form == "single":
        first = paths[1].read_text().splitlines()[:3]
        assert first == ["image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
                         "v1/00001.jpg,0", "v1/00002.jpg,1"]
        assert len(paths[1].read_text().splitlines()) == 1 + 24 + 20  # every frame of every video
    else:
        assert (paths[0] / "v2_left.txt").read_text().splitlines()[0].startswith("AU1,AU2")


def test_example_files_are_filled_in_order_and_frames_without_a_face_take_the_nearest(tmp_path: Path) -> None:
    tasks = task_set("ABAW6")
    write_labels(tmp_path / "data")
    layout = find_layout(tmp_path / "data")
    example = tmp_path / "CVPR_6th_ABAW_Expr_test_set_example.txt"
    example.write_text("image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n"
                       "v2_left/00003.jpg,0\nv1/00001.jpg,0\nv1/00009.jpg,0\nv9/00001.jpg,0\n")
    sheet = example_sheet(example, tmp_path / "out", tasks, layout)
    assert sheet.path.name == "CVPR_6th_ABAW_Expr_test_set_predictions.txt" and sheet.tasks == ("EXPR",)
    found = Predictions({"v1": np.array([1, 2, 10]), "v2_left": np.array([3])},
                        {"v1": {"EXPR": np.eye(8)[[1, 2, 3]]}, "v2_left": {"EXPR": np.eye(8)[[6]]}})
    decided, nearest, fallback = decisions(sheet, found, tasks)
    # v1 frame 9 takes frame 10's; v9 has no crop at all: the mean of every prediction (a tie
    # between classes 1, 2, 3, 6 at 1/4 each, argmax the first)
    assert decided["EXPR"].tolist() == [6, 1, 3, 1] and (nearest, fallback) == (1, 1)
    path = write_sheet(sheet, decided, tasks)
    assert path.read_text().splitlines() == [
        "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
        "v2_left/00003.jpg,6", "v1/00001.jpg,1", "v1/00009.jpg,3", "v9/00001.jpg,1"]
    assert read_sheet(path, tasks)["EXPR"][("v1", 9)] == 3
    seven = tmp_path / "seven.txt"
    seven.write_text("image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\nv1/00001.jpg,\n")
    with pytest.raises(InputError, match="lists 7 expressions, but the run predicts 8"):
        example_sheet(seven, tmp_path / "out", tasks, layout)


def test_the_multi_task_form_round_trips(tmp_path: Path) -> None:
    tasks = task_set("ABAW6")
    written = write_labels(tmp_path / "data")
    layout = find_layout(tmp_path / "data")
    example = tmp_path / "MTL_Challenge_test_set_release.txt"
    example.write_text("image,valence,arousal,expression,aus\nv1/00002.jpg\nv2_left/00004.jpg\n")
    sheet = example_sheet(example, tmp_path / "out", tasks, layout)
    assert sheet.form == "mtl"
    path = write_sheet(sheet, decisions(sheet, truth_as_predictions(written, tasks), tasks)[0], tasks)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,valence,arousal,expression,aus" and lines[1].count(",") == 15
    back = read_sheet(path, tasks)
    assert back["EXPR"][("v2_left", 4)] == 3 and back["AU"][("v1", 2)].tolist() == written["AU"]["v1"][1].tolist()
