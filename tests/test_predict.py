"""Tests for `emodistill predict` and `Predictor`: rows, GRU state, inputs, files and figures.
Real footage (several people, turned videos, landmark files): test_footage.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from skimage import data as skdata
from test_media import FPS, background, face_frame

from emodistill.core.errors import InputError
from emodistill.data.frontend import LANDMARK_COLUMNS, FrontEnd, iter_frames
from emodistill.evaluation.density import EnsembleDensity, fit_member, part_sizes
from emodistill.models.members import TorchMember
from emodistill.models.speed import Levers
from emodistill.predict.command import predict_command
from emodistill.predict.predictor import Predictor
from emodistill.run import Run
from emodistill.tasks import AU, EXPR, PAPER_TASKS, VA_CENTRES

SIZE = 32  # the tiny preset's input size
# The test video: 2 blank frames, 10 with the face, 8 blank, 4 with the face again. The tracker
# looks for a face on every frame while it follows none and loses it on the first blank frame.
N_LEAD, N_FIRST, N_GAP, N_SECOND = 2, 10, 8, 4
FACE_FLAGS = [0] * N_LEAD + [1] * N_FIRST + [0] * N_GAP + [1] * N_SECOND
N_FRAMES = len(FACE_FLAGS)


@pytest.fixture(scope="module")
def video_table(tiny_run: Path, gap_video: Path) -> pd.DataFrame:
    return Predictor(tiny_run, batch_frames=4, device="cpu", log=lambda s: None).predict(gap_video)


def expected_columns(ensemble: bool, ood: bool, file: bool = False) -> list[str]:
    """The documented column order, written out from the task names."""
    parts = ("entropy", "aleatoric", "epistemic") if ensemble else ("entropy",)
    return [
        *(["file"] if file else []),
        "frame", "timestamp", "face", "face_id", "x", "y", "w", "h", *LANDMARK_COLUMNS,
        *AU.names, *(f"{n}_present" for n in AU.names),
        *(f"EXPR_{n}" for n in EXPR.names), "expression",
        "valence", "arousal", "valence_sd", "arousal_sd",
        *(f"{t}_{p}" for t in ("AU", "EXPR", "VA") for p in parts),
        *(["ood_score", "ood_flag"] if ood else []),
    ]


FACE_COLUMNS = ["face_id", "x", "y", "w", "h", *LANDMARK_COLUMNS]
# What a run without `evaluate`'s stored density predicts (no OOD columns: nothing to score with).
PREDICTION_COLUMNS = [c for c in expected_columns(True, False)
                      if c not in ("frame", "timestamp", "face", *FACE_COLUMNS)]


def reference_probs(run: Path, crops: np.ndarray, members: int = 2) -> dict[str, np.ndarray]:
    """Each member's probabilities, task -> (T, L, n), from one whole-sequence `forward`."""
    frames = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)[None]  # (1, L, 3, S, S)
    out = {t.name: [] for t in PAPER_TASKS}
    for m in range(members):
        model = Run(run).load_member(0, m)
        with torch.no_grad():
            logits = model(frames)
        for t in PAPER_TASKS:
            out[t.name].append(t.activate(logits[t.name][0]).numpy())
    return {k: np.stack(v) for k, v in out.items()}


def tracked_crops(video: Path) -> list[np.ndarray | None]:
    """The first face's crop of each frame, as the front end cuts it (None: no face)."""
    front = FrontEnd.build(crop_size=SIZE)
    front.start()
    faces = [front.faces(frame.rgb, frame.index + 1) for frame in iter_frames(video)]
    return [found[0].crop if found else None for found in faces]


def test_video_rows_columns_and_value_ranges(video_table: pd.DataFrame):
    table = video_table
    assert list(table.columns) == expected_columns(ensemble=True, ood=False)
    assert table["frame"].tolist() == list(range(1, N_FRAMES + 1))
    assert table["timestamp"].to_numpy() == pytest.approx(np.arange(N_FRAMES) / FPS)
    assert table["face"].tolist() == FACE_FLAGS
    empty, found = table[table["face"] == 0], table[table["face"] == 1]
    assert empty[[*PREDICTION_COLUMNS, *FACE_COLUMNS]].isna().all().all()
    assert found[[*PREDICTION_COLUMNS, *FACE_COLUMNS]].notna().all().all()
    assert (found["face_id"] == 1).all()  # the face that comes back near where it left is the same person
    au = found[list(AU.names)].to_numpy(float)
    assert ((au >= 0) & (au <= 1)).all()
    present = found[[f"{n}_present" for n in AU.names]].to_numpy(int)
    assert np.array_equal(present, (au >= 0.5).astype(int))
    expr = found[[f"EXPR_{n}" for n in EXPR.names]].to_numpy(float)
    assert expr.sum(1) == pytest.approx(1.0, abs=1e-6)
    assert found["expression"].tolist() == [EXPR.names[i] for i in expr.argmax(1)]
    assert found[["valence", "arousal"]].abs().to_numpy().max() <= 0.95 + 1e-9
    for task in ("AU", "EXPR", "VA"):
        total, aleatoric, epistemic = (found[f"{task}_{p}"].to_numpy(float)
                                       for p in ("entropy", "aleatoric", "epistemic"))
        assert ((total >= 0) & (total <= 1 + 1e-9)).all()
        assert (epistemic >= 0).all()
        assert aleatoric + epistemic == pytest.approx(total, abs=1e-9)  # Eq. 14


def test_face_boxes_are_where_the_face_is(video_table: pd.DataFrame):
    first = video_table.iloc[N_LEAD]
    truth = face_frame(0)[1]
    ix = min(first.x + first.w, truth.x + truth.w) - max(first.x, truth.x)
    iy = min(first.y + first.h, truth.y + truth.h) - max(first.y, truth.y)
    inter = max(ix, 0) * max(iy, 0)
    assert inter / (first.w * first.h + truth.w * truth.h - inter) > 0.5


def test_streaming_equals_whole_sequence_and_restarts_after_a_gap(
    tiny_run: Path, gap_video: Path, video_table: pd.DataFrame
):
    crops = tracked_crops(gap_video)
    assert [int(c is not None) for c in crops] == FACE_FLAGS
    # Two stretches with a face, each one sequence from a zero GRU state (chunks of 4 carried on).
    stretches = [(N_LEAD, N_LEAD + N_FIRST), (N_FRAMES - N_SECOND, N_FRAMES)]
    for start, stop in stretches:
        probs = reference_probs(tiny_run, np.stack(crops[start:stop]))
        rows = video_table.iloc[start:stop]
        mean_au = probs["AU"].mean(0)  # (L, 12)
        assert rows[list(AU.names)].to_numpy(float) == pytest.approx(mean_au, abs=1e-5)
        mean_expr = probs["EXPR"].mean(0)
        got_expr = rows[[f"EXPR_{n}" for n in EXPR.names]].to_numpy(float)
        assert got_expr == pytest.approx(mean_expr, abs=1e-5)
        mean_va = probs["VA"].mean(0).reshape(-1, 2, 20)
        assert rows[["valence", "arousal"]].to_numpy(float) == pytest.approx(
            mean_va @ VA_CENTRES, abs=1e-5)
        # Normalised entropy of the ensemble mean, by SciPy: AU averaged over the 12 AUs.
        au_entropy = scipy_entropy(np.stack([1 - mean_au, mean_au]), axis=0).mean(1) / np.log(2)
        assert rows["AU_entropy"].to_numpy(float) == pytest.approx(au_entropy, abs=1e-5)
    # Frames 5.. of the first stretch would differ from a restart at each chunk of 4: the state
    # really is carried.
    start = N_LEAD + 4
    restarted = reference_probs(tiny_run, np.stack(crops[start:start + 4]))["AU"].mean(0)
    carried = video_table.iloc[start:start + 4][list(AU.names)].to_numpy(float)
    assert np.abs(restarted - carried).max() > 1e-4


def test_single_member_has_entropy_only(tiny_run: Path, gap_video: Path):
    table = Predictor(tiny_run, members=1, log=lambda s: None).predict(gap_video)
    assert list(table.columns) == expected_columns(ensemble=False, ood=False)
    found = table[table["face"] == 1]
    crops = tracked_crops(gap_video)
    stop = N_LEAD + N_FIRST
    expr = reference_probs(tiny_run, np.stack(crops[N_LEAD:stop]), members=1)["EXPR"][0]
    expected = scipy_entropy(expr, axis=1) / np.log(7)
    got = found["EXPR_entropy"].to_numpy(float)[: stop - N_LEAD]
    assert got == pytest.approx(expected, abs=1e-5)


def test_numpy_frames_give_the_same_table_as_the_video(tiny_run: Path, gap_video: Path,
                                                       video_table: pd.DataFrame):
    predictor = Predictor(tiny_run, batch_frames=4, device="cpu", log=lambda s: None)
    frames = np.stack([frame.rgb for frame in iter_frames(gap_video)])  # (T, H, W, 3)
    pd.testing.assert_frame_equal(predictor.predict(frames, fps=FPS), video_table)
    # A generator of frames (a camera, say): the same rows, without timestamps.
    streamed = predictor.predict(frame.rgb for frame in iter_frames(gap_video))
    assert streamed["timestamp"].isna().all()
    pd.testing.assert_frame_equal(streamed.drop(columns="timestamp"),
                                  video_table.drop(columns="timestamp"))
    cases = [
        (frames.astype(np.float32), r"shape \(24, 360, 480, 3\) and type float32"),
        (frames[0], r"expected frames \(T, H, W, 3\) uint8 RGB"),
        ([frames[0], frames[1, :, :, :2]], r"frame 1 of the input: expected an \(H, W, 3\) uint8"),
        (7, r"cannot predict from a int"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            predictor.predict(bad)
    with pytest.raises(InputError, match=r"gap\.mp4: fps is for frames in memory"):
        predictor.predict(gap_video, fps=30)


def test_image_folder_and_single_image(tiny_run: Path, tmp_path: Path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    face = face_frame(3)[0]
    for name, rgb in (("a_face.png", face), ("b_wall.jpg", background()),
                      ("c_astronaut.jpg", skdata.astronaut())):
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not an image\n")
    predictor = Predictor(tiny_run, batch_frames=2, log=lambda s: None)
    table = predictor.predict(folder)
    assert list(table.columns) == expected_columns(ensemble=True, ood=False, file=True)
    assert table["file"].tolist() == ["a_face.png", "b_wall.jpg", "c_astronaut.jpg"]
    assert table["frame"].tolist() == [1, 2, 3]
    assert table["face"].tolist() == [1, 0, 1]
    assert table["timestamp"].isna().all()
    assert table.iloc[1][PREDICTION_COLUMNS].isna().all()
    # Each image is a sequence of its own: alone it gives the same prediction as in the folder.
    alone = predictor.predict(folder / "c_astronaut.jpg")
    assert "file" not in alone.columns and len(alone) == 1
    columns = [*AU.names, "valence", "AU_epistemic"]
    in_folder = table.iloc[[2]][columns].to_numpy(float)
    assert alone[columns].to_numpy(float) == pytest.approx(in_folder, abs=1e-6)


def copy_crops(source: Path, folder: Path, numbers: list[int]) -> Path:
    """Copy crops 00001.jpg... of `source` into `folder`, keeping only `numbers`."""
    folder.mkdir(parents=True)
    for number in numbers:
        shutil.copy(source / f"{number:05d}.jpg", folder / f"{number:05d}.jpg")
    return folder


def test_cropped_aligned_folders(tiny_run: Path, tiny_data: Path, tmp_path: Path):
    video = sorted(p for p in (tiny_data / "cropped_aligned").iterdir() if p.is_dir())[0]
    root = tmp_path / "cropped_aligned"
    copy_crops(video, root / "whole", [1, 2, 3, 4, 5, 6])
    copy_crops(video, root / "holed", [1, 2, 3, 5, 6])  # crop 4 missing: no face there
    tail = copy_crops(video, tmp_path / "tail", [5, 6])
    predictor = Predictor(tiny_run, batch_frames=2, log=lambda s: None)
    table = predictor.predict(tmp_path)  # a folder holding cropped_aligned/
    assert table["file"].tolist() == [f"{v}/{n:05d}.jpg" for v, numbers in
                                      (("holed", (1, 2, 3, 5, 6)), ("whole", range(1, 7)))
                                      for n in numbers]
    assert table["frame"].tolist() == [1, 2, 3, 5, 6, 1, 2, 3, 4, 5, 6]
    assert (table["face"] == 1).all() and table[PREDICTION_COLUMNS].notna().all().all()
    au = table[list(AU.names)].to_numpy(float)
    assert au[:3] == pytest.approx(au[5:8], abs=1e-6)  # the same crops, the same history
    # After the missing crop the sequence starts again, as a folder of crops 5 and 6 alone.
    alone = predictor.predict(tail)
    assert alone["file"].tolist() == ["00005.jpg", "00006.jpg"]
    assert au[3:5] == pytest.approx(alone[list(AU.names)].to_numpy(float), abs=1e-6)
    assert np.abs(au[3:5] - au[9:11]).max() > 1e-6  # with crop 4 before them they differ


def test_onnx_backend_exports_on_the_fly_and_matches_torch(tiny_run: Path, tiny_data: Path,
                                                            tmp_path: Path):
    run = shutil.copytree(tiny_run, tmp_path / "run")  # the export writes into the run folder
    video = sorted(p for p in (tiny_data / "cropped_aligned").iterdir() if p.is_dir())[0]
    clip = copy_crops(video, tmp_path / "clip", [1, 2, 3, 4, 5, 6])
    onnx = Predictor(run, runtime="onnx", batch_frames=4, log=lambda s: None).predict(clip)
    assert sorted(p.name for p in (run / "teacher" / "onnx").iterdir()) == [
        "member-0.onnx", "member-1.onnx"]
    reference = Predictor(run, batch_frames=4, log=lambda s: None).predict(clip)
    numbers = [c for c in reference.columns if c not in ("file", "expression", "ood_flag")]
    assert onnx[numbers].to_numpy(float) == pytest.approx(reference[numbers].to_numpy(float),
                                                          abs=1e-5, nan_ok=True)


def member_features(run: Path, member: int, frames: np.ndarray) -> np.ndarray:
    """Teacher `member`'s density inputs (L, D) of frames (1, L, 3, S, S), by its own forward."""
    return TorchMember(Run(run).load_member(0, member), torch.device("cpu")).forward_with_features(
        frames, None, None)[2]


def stored_density(run: Path, crops: np.ndarray) -> EnsembleDensity:
    """A density of each teacher member fitted and scaled on `crops` (two classes, alternate
    frames), its thresholds at the median of the members' mean scores, saved where `evaluate`
    saves it."""
    frames = (crops.transpose(0, 3, 1, 2).astype(np.float32) / 255)[None]  # (1, L, 3, S, S)
    features = [member_features(run, m, frames) for m in range(2)]
    config = Run(run).load_member(0, 0).config
    sizes = part_sizes(config.density_dim, config.feature_dim)
    members = tuple(fit_member(f, np.arange(len(f)) % 2, f, sizes) for f in features)
    scores = np.array([m.score(f) for m, f in zip(members, features, strict=True)])
    thresholds = np.array([np.median(scores[:1].mean(0)), np.median(scores.mean(0))])
    density = EnsembleDensity(members, thresholds)
    density.save(Run(run).density_path(0))
    return density


def test_ood_flag_uses_the_stored_density_with_any_number_of_members(tiny_run: Path, gap_video: Path,
                                                                     tmp_path: Path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    crops = np.stack([c for c in tracked_crops(gap_video) if c is not None])
    density = stored_density(run, crops)
    for members in (2, 1):
        notes: list[str] = []
        # The plain path runs each member's own forward, as `member_features` does (the levers'
        # folded BatchNorm moves features by rounding, which the whitening can magnify).
        table = Predictor(run / "teacher", members=members, batch_frames=4, log=notes.append,
                          levers=Levers()).predict(gap_video)
        assert list(table.columns) == expected_columns(ensemble=members > 1, ood=True)
        assert not any("density" in note for note in notes)
        found = table[table["face"] == 1]
        frames = (crops.transpose(0, 3, 1, 2).astype(np.float32) / 255)[None]
        features = np.stack([member_features(run, m, frames) for m in range(members)])
        # The score is the first members' mean score, however the frames were batched.
        assert found["ood_score"].to_numpy(float) == pytest.approx(density.score(features), rel=1e-5)
        flag = found["ood_score"] > density.thresholds[members - 1]
        assert found["ood_flag"].astype(bool).tolist() == flag.tolist()
        assert 0 < found["ood_flag"].astype(bool).mean() < 1
        assert table.loc[table["face"] == 0, "ood_flag"].isna().all()


def test_predict_fp32_keeps_every_lever_but_bf16(tiny_run: Path, gap_video: Path, tmp_path: Path,
                                               monkeypatch, capsys):
    """On a CPU with native bf16 `predict` runs the members in bf16 and says so; `--fp32` keeps
    fp32 (bf16 is emulated where the CPU lacks it, so this runs anywhere)."""
    import emodistill.models.speed as speed

    monkeypatch.setattr(speed, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": ["amx_tile", "avx512f"])
    bf16 = predict_command(gap_video, tiny_run, out=tmp_path / "bf16.csv", device="cpu", progress=False)
    assert ", bf16 ->" in capsys.readouterr().out
    fp32 = predict_command(gap_video, tiny_run, out=tmp_path / "fp32.csv", device="cpu", progress=False,
                           fp32=True)
    assert ", bf16" not in capsys.readouterr().out
    plain = predict_command(gap_video, tiny_run, out=tmp_path / "plain.csv", device="cpu", progress=False,
                            plain=True)
    tables = [pd.read_csv(path) for path in (bf16, fp32, plain)]
    numbers = [c for c in tables[0].columns if c not in ("expression", "ood_flag")]
    values = [t[numbers].to_numpy(float) for t in tables]
    assert values[1] == pytest.approx(values[2], abs=1e-4, nan_ok=True)
    assert values[0] == pytest.approx(values[2], abs=2.5e-2, nan_ok=True)
    assert np.nanmax(np.abs(values[0] - values[2])) > 0  # bf16 did run


def test_predict_command_writes_tables_and_figures(
    tiny_run: Path, gap_video: Path, video_table: pd.DataFrame, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    out = predict_command(gap_video, tiny_run, plot=tmp_path / "figures", device="cpu",
                          progress=False)
    assert out == tmp_path / "gap.emotions.csv"
    summary = capsys.readouterr().out
    assert f"{N_FRAMES} frames, {sum(FACE_FLAGS)} with a face" in summary
    written = pd.read_csv(out)
    assert list(written.columns) == list(video_table.columns)
    numbers = [c for c in video_table.columns if c not in ("expression", "ood_flag")]
    assert written[numbers].to_numpy(float) == pytest.approx(
        video_table[numbers].to_numpy(float), abs=1e-6, nan_ok=True)
    parquet = predict_command(gap_video, tiny_run, members="1", out=tmp_path / "one.parquet",
                              progress=False)
    single = pd.read_parquet(parquet)
    assert "AU_epistemic" not in single.columns and len(single) == N_FRAMES
    assert single["AU1_present"].dtype == "Int8"
    assert single["expression"].isna().sum() == FACE_FLAGS.count(0)
    figures = sorted((tmp_path / "figures").glob("*.png"))
    names = [p.name for p in figures]
    assert "timeline.png" in names and sum(n.startswith("figure1-frame") for n in names) >= 3
    assert all(p.stat().st_size > 20_000 for p in figures)
