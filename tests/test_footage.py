"""`predict` on real footage (issue 28's checks): a man in a car, two people side by side, a phone
video stored sideways, a photo turned by 20 degrees, and landmarks given in a file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data as skdata
from test_predict import reference_probs

from emodistill.cli import main
from emodistill.core.errors import InputError
from emodistill.data.frontend import LANDMARK_COLUMNS, FrontEnd, iter_frames
from emodistill.predict import Predictor
from emodistill.tasks import AU

HALF = 176  # the two-people video: carphone's man left of x = 176, the astronaut right of it


def quiet(run: Path, **options) -> Predictor:
    return Predictor(run, device="cpu", log=lambda _: None, **options)


@pytest.fixture(scope="module")
def two_table(tiny_run: Path, two_people: Path) -> pd.DataFrame:
    return quiet(tiny_run, batch_frames=8).predict(two_people)


def test_carphone_is_one_person_followed_through_the_clip(tiny_run: Path, carphone: Path):
    table = quiet(tiny_run).predict(carphone)
    assert table["frame"].tolist() == list(range(1, 121))  # one row a frame: one person
    assert table["face"].mean() >= 0.95  # measured: 120 of 120
    assert set(table["face_id"].dropna()) == {1}
    found = table[table["face"] == 1]
    assert found[list(LANDMARK_COLUMNS)].notna().all().all()
    inside = (found["x"] < found["eye_left_x"]) & (found["eye_left_x"] < found["eye_right_x"]) & (
        found["eye_right_x"] < found["x"] + found["w"]) & (found["y"] < found["eye_left_y"]) & (
        found["eye_left_y"] < found["mouth_left_y"]) & (found["mouth_left_y"] < found["y"] + found["h"])
    assert inside.all()


def test_two_people_get_a_row_each_and_keep_their_numbers(two_table: pd.DataFrame):
    rows_per_frame = two_table.groupby("frame").size()
    assert len(rows_per_frame) == 60 and (rows_per_frame == 2).mean() >= 0.95  # measured: all 60
    assert sorted(two_table["face_id"].dropna().unique()) == [1, 2]
    centre = two_table["x"] + two_table["w"] / 2
    assert (centre[two_table["face_id"] == 1] < HALF).all()  # numbered from the left
    assert (centre[two_table["face_id"] == 2] > HALF).all()


def test_each_person_has_a_gru_state_of_their_own(tiny_run: Path, two_people: Path, two_table: pd.DataFrame):
    """Each person's rows equal that person's crops predicted as one sequence on their own, so
    the other person's frames never enter their time series."""
    front = FrontEnd.build(crop_size=32, log=lambda _: None)
    front.start()
    crops: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for frame in iter_frames(two_people):
        for face in front.faces(frame.rgb, frame.index + 1):
            crops[face.face_id].append(face.crop)
    for person, faces in crops.items():
        assert len(faces) == 60
        expected = reference_probs(tiny_run, np.stack(faces))["AU"].mean(0)  # (60, 12)
        got = two_table.loc[two_table["face_id"] == person, list(AU.names)].to_numpy(float)
        assert got == pytest.approx(expected, abs=1e-5)


def test_a_phone_video_stored_sideways_is_found_as_the_original(tiny_run: Path, carphone: Path,
                                                               carphone_turned: Path, tmp_path: Path, capsys):
    original = quiet(tiny_run).predict(carphone)
    out = tmp_path / "turned.csv"
    assert main(["predict", str(carphone_turned), "--model", str(tiny_run), "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    assert "turned 90 degrees as the video's display matrix says" in capsys.readouterr().out
    turned = pd.read_csv(out)
    assert len(turned) == len(original) == 120
    assert (turned["face"] == original["face"]).mean() >= 0.95 and turned["face"].mean() >= 0.95
    both = (turned["face"] == 1) & (original["face"] == 1)
    gap = np.abs(turned.loc[both, ["x", "y", "w", "h"]].to_numpy(float)
                 - original.loc[both, ["x", "y", "w", "h"]].to_numpy(float))
    assert np.median(gap) <= 2  # the same boxes, but for the second encoding's losses


def turned_photo(degrees: float) -> np.ndarray:
    """The astronaut turned `degrees` counter-clockwise about her face, on a larger canvas."""
    picture = cv2.copyMakeBorder(skdata.astronaut(), 128, 128, 128, 128, cv2.BORDER_REPLICATE)  # (768, 768, 3)
    turn = cv2.getRotationMatrix2D((128 + 224.0, 128 + 112.0), degrees, 1.0)
    return cv2.warpAffine(picture, turn, picture.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def test_a_photo_turned_20_degrees_turns_its_eye_line_and_aligns_alike(tiny_run: Path, tmp_path: Path):
    predictor = quiet(tiny_run)
    angles, crops = [], []
    for degrees in (0, 20):
        path = tmp_path / f"turned{degrees}.png"
        cv2.imwrite(str(path), cv2.cvtColor(turned_photo(degrees), cv2.COLOR_RGB2BGR))
        row = predictor.predict(path).iloc[0]
        angles.append(np.degrees(np.arctan2(row["eye_right_y"] - row["eye_left_y"],
                                            row["eye_right_x"] - row["eye_left_x"])))
        front = FrontEnd.build(crop_size=112, log=lambda _: None)
        front.start()
        crops.append(front.faces(turned_photo(degrees), 1)[0].crop.astype(float))
    # Counter-clockwise on screen is clockwise in image coordinates (y points down).
    assert angles[0] - angles[1] == pytest.approx(20, abs=3)
    assert np.abs(crops[0] - crops[1]).mean() < 12
    assert np.corrcoef(crops[0].ravel(), crops[1].ravel())[0, 1] > 0.9


def test_landmarks_from_a_file_stand_in_for_the_detector(tiny_run: Path, two_people: Path, two_table: pd.DataFrame,
                                                         tmp_path: Path):
    given = tmp_path / "landmarks.csv"
    two_table.to_csv(given, index=False)  # a predict table is a landmarks file
    again = quiet(tiny_run, landmarks=given, batch_frames=8).predict(two_people)
    assert again["face_id"].tolist() == two_table["face_id"].tolist()
    assert again[list(LANDMARK_COLUMNS)].to_numpy(float) == pytest.approx(
        two_table[list(LANDMARK_COLUMNS)].to_numpy(float), abs=1e-9, nan_ok=True)
    # Without face_id the faces of a frame are numbered from the left: here the same numbers.
    bare = tmp_path / "bare.csv"
    two_table[["frame", *LANDMARK_COLUMNS]].dropna().to_csv(bare, index=False)
    out = tmp_path / "bare-out.csv"
    assert main(["predict", str(two_people), "--model", str(tiny_run), "--landmarks", str(bare), "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    assert pd.read_csv(out)["face_id"].tolist() == two_table["face_id"].tolist()


@pytest.mark.parametrize(("text", "message"), [
    ("frame,eye_left_x\n1,2\n", r"landmarks\.csv:1: the landmarks file lacks the column\(s\) eye_left_y"),
    ("frame," + ",".join(LANDMARK_COLUMNS) + "\n1," + ",".join(["5"] * 9) + ",x\n",
     r"landmarks\.csv:2: mouth_right_y must be a number, got 'x'"),
    ("frame,face_id," + ",".join(LANDMARK_COLUMNS) + "\n" + ("3,1," + ",".join(map(str, range(10))) + "\n") * 2,
     r"landmarks\.csv:3: frame 3 face 1 is given again \(first on line 2\)"),
    ("frame," + ",".join(LANDMARK_COLUMNS) + "\n0," + ",".join(["5"] * 10) + "\n",
     r"landmarks\.csv:2: frame must be a whole number from 1, got '0'"),
    ("frame," + ",".join(LANDMARK_COLUMNS) + "\n4," + ",".join(["5"] * 10) + "\n",
     r"landmarks\.csv:2: the five points coincide"),
])
def test_a_bad_landmarks_file_is_one_sentence_naming_the_line(tiny_run: Path, tmp_path: Path, text: str,
                                                              message: str):
    path = tmp_path / "landmarks.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        quiet(tiny_run, landmarks=path)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match=r"absent\.csv: no such landmarks file"):
        quiet(tiny_run, landmarks=tmp_path / "absent.csv")
