"""Runs carry their task set and resolve their paths anywhere: a run saved before task sets were
recorded still predicts with its 7 expression columns and evaluates; an 8-class run predicts
EXPR_Other; `evaluate` works from another directory and on a moved copy of the data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from emodistill.core.checkpoints import read_json, write_json
from emodistill.core.errors import InputError
from emodistill.data.synth import generate
from emodistill.evaluation.evaluate import evaluate_run
from emodistill.methods.backends.local import train_run
from emodistill.predict import Predictor
from emodistill.run import Run, RunConfig, TrainConfig

SAVED = Path(__file__).parent / "data" / "run-e47465a"  # trained by e47465a: no task set in run.json
CPU = torch.device("cpu")
QUIET = {"progress": False, "log": lambda _: None}


def test_a_run_without_a_task_set_predicts_7_expressions_and_evaluates(tiny_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "run"
    shutil.copytree(SAVED, root)
    stored = read_json(root / "run.json")
    assert "tasks" not in stored and "release" not in stored
    write_json(root / "run.json", stored | {"data": str(tiny_data)})  # the same simulated data, elsewhere
    video = sorted(p for p in (tiny_data / "cropped_aligned").iterdir() if p.is_dir())[0]
    notes: list[str] = []
    table = Predictor(root, device="cpu", log=notes.append).predict(video)
    expressions = [c for c in table.columns if c.startswith("EXPR_") and c.split("_")[1][0].isupper()]
    assert expressions == ["EXPR_Neutral", "EXPR_Anger", "EXPR_Disgust", "EXPR_Fear", "EXPR_Happiness",
                           "EXPR_Sadness", "EXPR_Surprise"]
    # Its own report's epistemic threshold is not the density's: no OOD columns until evaluated again.
    assert "ood_flag" not in table.columns and any("emodistill evaluate" in note for note in notes)
    report = evaluate_run(root, CPU, ood_limit=32, mc_passes=2, **QUIET)
    assert report["release"] == "ABAW2 (2021)" and set(report["generations"][0]["challenge"]["scores"]) == {
        "P_AU", "P_EXPR", "P_VA"}
    again = Predictor(root, device="cpu", log=lambda _: None).predict(video)
    assert again["ood_flag"].notna().all()


@pytest.fixture(scope="module")
def abaw6_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-member tiny run on simulated 2024-layout data, trained with a relative data path."""
    base = tmp_path_factory.mktemp("abaw6-run")
    generate(base / "data", videos=8, frames=24, size=32, seed=5, progress=False, release="ABAW6")
    here = os.getcwd()
    os.chdir(base)
    try:
        config = RunConfig(data="data", preset="tiny", members=2, generations=0,
                           train=TrainConfig(epochs=1, batches_per_epoch=2, clip_length=8))
        train_run(Path("run"), config, CPU, **QUIET)
    finally:
        os.chdir(here)
    return base


def test_an_8_class_run_records_its_task_set_and_predicts_other(abaw6_run: Path) -> None:
    stored = read_json(abaw6_run / "run" / "run.json")
    assert stored["tasks"]["release"] == "ABAW6" and stored["tasks"]["tasks"]["EXPR"][-1] == "Other"
    assert Path(stored["data"]).is_absolute()  # resolves wherever the next command runs
    video = next(p for p in sorted((abaw6_run / "data" / "cropped_aligned" / "cropped_aligned").iterdir())
                 if any(p.glob("*.jpg")))
    table = Predictor(abaw6_run / "run", device="cpu", log=lambda _: None).predict(video)
    assert "EXPR_Other" in table.columns and table["expression"].isin(
        ["Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"]).all()


def test_evaluate_from_elsewhere_and_on_a_moved_copy(abaw6_run: Path, tmp_path: Path) -> None:
    here = os.getcwd()
    os.chdir(tmp_path)  # neither the run's folder nor its parent
    try:
        report = evaluate_run(abaw6_run / "run", CPU, ood_limit=16, mc_passes=2, **QUIET)
    finally:
        os.chdir(here)
    assert report["scoring"] == "2022" and "P_MTL" in report["generations"][0]["challenge"]["scores"]
    moved = tmp_path / "moved"
    shutil.copytree(abaw6_run / "data", moved)
    again = evaluate_run(abaw6_run / "run", CPU, ood_limit=16, mc_passes=2, data=moved, **QUIET)
    assert again["data"] == str(moved)
    assert again["generations"][0]["ensemble"] == pytest.approx(report["generations"][0]["ensemble"])
    seven = tmp_path / "seven"
    generate(seven, videos=6, frames=10, size=16, seed=1, progress=False)
    with pytest.raises(InputError, match=r"reads as ABAW2 \(2021\) with tasks .* but .* was trained on ABAW6"):
        evaluate_run(abaw6_run / "run", CPU, ood_limit=16, mc_passes=2, data=seven, **QUIET)


def test_a_typo_in_data_writes_nothing_and_the_corrected_command_trains(tiny_data: Path, tmp_path: Path) -> None:
    config = RunConfig(data=str(tmp_path / "no-such-data"), preset="tiny", members=1, generations=0,
                       train=TrainConfig(epochs=1, batches_per_epoch=1, clip_length=4))
    with pytest.raises(InputError, match="is not a folder"):
        train_run(tmp_path / "run", config, CPU, **QUIET)
    assert not Run(tmp_path / "run").exists()
    fixed = RunConfig(**{**config.__dict__, "data": str(tiny_data)})
    assert train_run(tmp_path / "run", fixed, CPU, **QUIET).finished_generations() == [0]
