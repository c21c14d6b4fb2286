"""Real pixels through the whole chain: scikit-image's LFW faces and non-faces as a still-image,
expression-only data set, trained with `train`'s defaults (class reweighting on), evaluated and
predicted; and the audio-visual OOD probe, whose OOD images hear real sound, not silence."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.data import lfw_subset

from emodistill.data.dataset import Split
from emodistill.evaluation.evaluate import evaluate_run
from emodistill.evaluation.ood import OODProbe
from emodistill.methods.backends.local import train_run
from emodistill.predict.predictor import Predictor
from emodistill.run import Run, RunConfig, TrainConfig

FACE, NONFACE = 0, 4  # written as expressions Neutral and Happiness: any two classes will do
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise"


def write_lfw(root: Path, size: int = 48) -> None:
    """Aff-wild2 layout, one image a video: 75 faces and 25 non-faces to train on, 24 and 8 to
    validate (three faces to one non-face in both, so the class prior fits the validation set)."""
    images = np.round(lfw_subset() * 255).astype(np.uint8)  # 100 faces, then 100 non-faces, 25x25
    rng = np.random.default_rng(0)
    faces, nonfaces = rng.permutation(100), 100 + rng.permutation(100)
    plan = {"Train_Set": [*((i, FACE) for i in faces[:75]), *((i, NONFACE) for i in nonfaces[:25])],
            "Validation_Set": [*((i, FACE) for i in faces[75:99]), *((i, NONFACE) for i in nonfaces[25:33])]}
    for split, items in plan.items():
        labels = root / "annotations" / "EXPR_Set" / split
        labels.mkdir(parents=True, exist_ok=True)
        for index, label in items:
            name = f"lfw-{index:03d}"
            (labels / f"{name}.txt").write_text(f"{EXPR_HEADER}\n{label}\n")
            crops = root / "cropped_aligned" / name
            crops.mkdir(parents=True)
            grey = cv2.resize(images[index], (size, size), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(crops / "00001.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))


@pytest.fixture(scope="module")
def lfw_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("lfw")
    write_lfw(root / "data")
    config = RunConfig(data=str(root / "data"), preset="tiny", members=2, generations=0,
                       train=TrainConfig(epochs=2, lr_step=1, batches_per_epoch=3))
    train_run(root / "run", config, torch.device("cpu"), progress=False, log=lambda _: None)
    report = evaluate_run(root / "run", torch.device("cpu"), ood_limit=100, mc_passes=2, progress=False,
                          log=lambda _: None)
    return root, report


def test_reweighting_is_undone_and_calibration_is_never_worse_than_the_prior(lfw_run: tuple[Path, dict]):
    _, report = lfw_run
    assert report["tasks"] == ["EXPR"] and report["losses"]["reweight"]
    prior = report["prior"]["nll"]["EXPR"]
    for g in report["generations"]:
        # Reweighting pulls the members towards the rare non-faces: worse than knowing nothing...
        assert g["nll"]["EXPR"] > prior + 0.05, g["name"]
        # ...and undoing it (with a fit only where it pays) is not, single members or ensemble;
        # 0.005 of slack for the cross-fitting on 32 images.
        assert g["calibrated"]["nll"]["EXPR"] <= prior + 0.005, g["name"]
        assert g["ensemble_calibrated"]["nll"]["EXPR"] <= prior + 0.005, g["name"]
        assert set(g["ood_flagged"]) == {"validation (held out)", report["ood_set"], report["nonface_set"]}


def test_one_member_predicts_real_photos_with_the_stored_calibration_and_flag(lfw_run: tuple[Path, dict]):
    root, _ = lfw_run
    run = Run(root / "run")
    assert run.calibration_path(0).exists() and run.density_path(0).exists()
    crops = root / "val" / "cropped_aligned"
    for name in sorted(p.stem for p in (root / "data" / "annotations" / "EXPR_Set" / "Validation_Set").iterdir()):
        shutil.copytree(root / "data" / "cropped_aligned" / name, crops / name)
    notes: list[str] = []
    table = Predictor(root / "run", members=1, log=notes.append).predict(crops.parent)
    assert notes == []
    assert len(table) == 32 and (table["face"] == 1).all()
    assert {"ood_score", "ood_flag", "EXPR_entropy"} <= set(table.columns)
    assert "EXPR_epistemic" not in table.columns
    assert (table["ood_score"] > 0).all()
    expr = table[[c for c in table.columns if c.startswith("EXPR_") and not c.endswith("entropy")]]
    assert expr.sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)


def test_audio_visual_ood_images_hear_real_validation_sound():
    rng = np.random.default_rng(0)
    n = 40
    audio = rng.normal(size=(n, 64, 64)).astype(np.float32)
    val = Split(name="val", frames=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), labels={}, masks={},
                video=np.repeat(np.arange(4), 10).astype(np.int32), frame_index=np.tile(np.arange(10), 4),
                video_names=[f"v{i}" for i in range(4)], audio=audio)
    probe = OODProbe(val, 32, None, limit=30, seed=0)
    assert probe.ood_audio is not None and len(probe.ood_audio) == len(probe.ood_images)
    # Every OOD image's spectrogram is one of the validation frames', so sound alone tells nothing.
    flat = {row.tobytes() for row in audio}
    assert all(row.tobytes() in flat for row in probe.ood_audio)
    assert len({row.tobytes() for row in probe.ood_audio}) > 1
