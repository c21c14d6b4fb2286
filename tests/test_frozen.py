"""Frozen backbones: cached features and maps equal the full forward, members share the frozen layers
and learn their own tail, evaluation runs the shared part once, and what a frozen run refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_learning import (
    CPU,
    _quiet,
)

from emodistill.cli import main
from emodistill.core.checkpoints import save_weights
from emodistill.data.affwild import load_split
from emodistill.data.landmarks import read_landmarks_csv
from emodistill.data.synth.face import LANDMARK_NAMES
from emodistill.evaluation.evaluate import evaluate_run
from emodistill.evaluation.ood import OODProbe, shared_front
from emodistill.methods.backends.local import train_run
from emodistill.methods.pretraining import (
    backbone_record_path,
)
from emodistill.models import build_model
from emodistill.models.inference import FrozenFront, encode_split, predict_features, predict_split
from emodistill.models.weights import load_backbone_weights
from emodistill.run import Ensemble, Run, RunConfig, TrainConfig
from emodistill.tasks import AU, EXPR, PAPER_TASKS


def test_an_auxiliary_loss_is_refused_on_frozen_features(tiny_data: Path) -> None:
    from emodistill.methods.losses import training_class_weights
    from emodistill.methods.training import train_member

    train, _ = load_split(tiny_data, "train", size=32, progress=False)
    weights = training_class_weights(PAPER_TASKS, train.labels, train.masks, False)
    with pytest.raises(ValueError, match="frozen"):
        train_member(build_model("tiny"), train, train, TrainConfig(epochs=1), weights, 0, CPU, progress=False,
                     frozen=FrozenFront(build_model("tiny"), 0, CPU), auxiliary=torch.nn.Linear(1, 1))


def test_landmarks_csv_in_ibug_order(tmp_path: Path) -> None:
    crop_dir = tmp_path / "cropped_aligned" / "clip"
    crop_dir.mkdir(parents=True)
    cv2.imwrite(str(crop_dir / "00001.jpg"), np.zeros((112, 112, 3), np.uint8))
    header = "video,frame," + ",".join(f"x{i},y{i}" for i in range(1, 69))
    values = ",".join(f"{56 + i % 5},{40 + i % 7}" for i in range(68))
    (tmp_path / "landmarks.csv").write_text(f"{header}\nclip,1,{values}\n")
    table = read_landmarks_csv(tmp_path)
    assert table[("clip", 0)].shape == (68, 2)
    assert table[("clip", 0)][0] == pytest.approx([56 / 112, 40 / 112])
    (tmp_path / "landmarks.csv").write_text(f"{header}\nclip,1,{values[:-4]}\n")
    with pytest.raises(ValueError, match=r"landmarks.csv:2: expected 138 columns"):
        read_landmarks_csv(tmp_path)


def test_frozen_feature_path_equals_the_full_forward(tiny_data: Path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    val, _ = load_split(tiny_data, "val", size=32, progress=False)
    full = predict_split(model, val, CPU, length=8, batch_clips=4)
    cached = predict_features(model, encode_split(model, val, CPU, batch=17), val, CPU, length=8, batch_clips=4)
    for task in PAPER_TASKS:
        assert np.abs(full[task.name] - cached[task.name]).max() < 1e-5, task.name


@pytest.mark.parametrize("tail_blocks", [1, 3])
def test_cached_maps_and_a_tail_equal_the_full_forward(tiny_data: Path, tail_blocks: int) -> None:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    val, _ = load_split(tiny_data, "val", size=32, progress=False)
    maps = encode_split(model, val, CPU, batch=17, tail_blocks=tail_blocks)
    assert maps.ndim == 4  # (N, C, s, s): the input of the last blocks
    full = predict_split(model, val, CPU, length=8, batch_clips=4)
    cached = predict_features(model, maps, val, CPU, length=8, batch_clips=4, tail_blocks=tail_blocks)
    for task in PAPER_TASKS:
        assert np.abs(full[task.name] - cached[task.name]).max() < 1e-5, task.name


def test_tail_blocks_members_share_the_frozen_layers_and_learn_their_own_tail(tiny_data: Path,
                                                                              tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = tmp_path / "backbone.safetensors"
    from safetensors.torch import load_file, save_file

    save_file(build_model("tiny").backbone.state_dict(), str(backbone))
    config = RunConfig(data=str(tiny_data), preset="tiny", members=2, generations=1, backbone_weights=str(backbone),
                       train=TrainConfig(epochs=1, batches_per_epoch=2, clip_length=8, freeze_backbone=True,
                                         tail_blocks=2))
    logs: list[str] = []
    run = train_run(tmp_path / "run", config, CPU, progress=False, log=logs.append)
    assert any("members train the backbone's last 2 blocks" in line for line in logs)
    pretrained = load_file(str(backbone))
    tail = {name for name, _ in build_model("tiny").backbone.named_parameters()
            if name.startswith(("pointwise", "gdc", f"blocks.{len(build_model('tiny').backbone.blocks) - 1}."))}
    members = [run.load_member(g, m).backbone.state_dict() for g in (0, 1) for m in (0, 1)]
    for state in members:
        for name, value in pretrained.items():
            if name.split(".")[0] == "stem":
                assert torch.equal(state[name], value), name  # below the tail: frozen, bit for bit
    # Each member learned its own tail from its own random start.
    for name in tail:
        assert not torch.equal(members[0][name], members[1][name]), name
        assert not torch.equal(members[0][name], pretrained[name]), name
    assert json.loads((run.root / "backbone.json").read_text())["tail_blocks"] == 2


def _flat_scores(report: dict) -> dict[str, float]:
    """Every number of the generations' and baselines' scores, by a path-like key."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, float | int) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for entry in report["generations"]:
        for key in ("ensemble", "single_mean", "nll", "rmse", "ood_auc", "ood_auc_by_task"):
            walk(f"{entry['name']}/{key}", entry[key])
    walk("baselines", report["baselines"])
    return flat


def test_evaluation_runs_a_shared_frozen_backbone_once_with_the_same_scores(tiny_data: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    torch.manual_seed(0)
    backbone = tmp_path / "backbone.safetensors"
    save_weights(backbone, build_model("tiny").backbone)
    config = RunConfig(data=str(tiny_data), preset="tiny", members=2, generations=1, backbone_weights=str(backbone),
                       train=TrainConfig(epochs=1, batches_per_epoch=2, clip_length=8, freeze_backbone=True,
                                         tail_blocks=2))
    run = train_run(tmp_path / "run", config, CPU, progress=False, log=_quiet)
    logs: list[str] = []
    shared = evaluate_run(run.root, CPU, ood_limit=32, mc_passes=3, progress=False, log=logs.append)
    assert any("frozen backbone: computed once" in line for line in logs)
    monkeypatch.setattr(FrozenFront, "covers", lambda self, models: False)  # every member runs whole
    full = evaluate_run(run.root, CPU, ood_limit=32, mc_passes=3, progress=False, log=_quiet)
    got, expected = _flat_scores(shared), _flat_scores(full)
    assert got.keys() == expected.keys() and len(got) > 40
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key
    monkeypatch.undo()
    # A member whose frozen part differs is not covered: it runs its whole network.
    models = Ensemble(run, 0).models(CPU)
    val, _ = load_split(tiny_data, "val", size=32, progress=False)
    front = shared_front(models[0], 2, val, OODProbe(val, 32, None, 16), np.asarray(val.frames[:8]), CPU)
    assert front.covers(models)
    with torch.no_grad():
        models[1].backbone.stem.bn.running_mean.add_(1e-3)
    assert not front.covers(models)


def test_tail_blocks_are_refused_without_freezing(tiny_data: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--tail-blocks", "2", "--quiet", "--device", "cpu"])
    assert code == 2 and "--tail-blocks needs --freeze-backbone" in capsys.readouterr().err
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--freeze-backbone", "--tail-blocks", "99", "--quiet", "--device", "cpu"])
    assert code == 2 and "--tail-blocks must be between 0 and" in capsys.readouterr().err
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--va-bins", "-1", "--quiet", "--device", "cpu"])
    assert code == 2 and "--va-bins: must be 0 or more, got -1" in capsys.readouterr().err


def _still_image_data(source: Path, out: Path) -> Path:
    """Every frame of the tiny simulator data as its own one-frame video, labels in labels.csv."""
    rows = ["video,frame,split," + ",".join(AU.names) + ",expr,valence,arousal"]
    for split in ("train", "val"):
        data, _ = load_split(source, split, size=48, progress=False)
        for i in range(0, len(data), 2):
            name = f"{split}-{i:04d}"
            folder = out / "cropped_aligned" / name
            folder.mkdir(parents=True)
            cv2.imwrite(str(folder / "00001.jpg"), cv2.cvtColor(np.asarray(data.frames[i]), cv2.COLOR_RGB2BGR))
            cells = []
            for task in PAPER_TASKS:
                if data.masks[task.name][i]:
                    value = np.atleast_1d(data.labels[task.name][i])
                    cells += [f"{v:g}" if task is PAPER_TASKS[2] else str(int(v)) for v in value]
                else:
                    cells += [""] * (12 if task is AU else 1 if task is EXPR else 2)
            rows.append(f"{name},1,{split}," + ",".join(cells))
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return out


def test_still_image_data_trains_with_clips_of_one_frame(tiny_data: Path, tmp_path: Path) -> None:
    data = _still_image_data(tiny_data, tmp_path / "images")
    logs: list[str] = []
    config = RunConfig(data=str(data), preset="tiny", members=1, generations=0,
                       train=TrainConfig(epochs=1, batches_per_epoch=2, clip_length=8, clips_per_task=2))
    run = train_run(tmp_path / "run", config, CPU, progress=False, log=logs.append)
    record = json.loads(run.record_path(0, 0).read_text())
    assert record["clip_length"] == 1 and record["clips_per_task"] == 16
    assert any("still images" in line and "16 distinct images" in line for line in logs)


def test_tiny_pretrain_freeze_distil_run_completes(tiny_data: Path, tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.safetensors"
    args = ["--data", str(tiny_data), "--preset", "tiny", "--quiet", "--device", "cpu"]
    assert main(["pretrain", *args, "--out", str(backbone), "--steps", "10", "--batch-size", "16"]) == 0
    run_dir = tmp_path / "run"
    assert main(["train", *args, "--out", str(run_dir), "--members", "2", "--generations", "1",
                 "--epochs", "1", "--batches-per-epoch", "2", "--clip-length", "8",
                 "--backbone-weights", str(backbone), "--freeze-backbone", "--va-bins", "0.5"]) == 0
    run = Run(run_dir)
    assert run.finished_generations() == [0, 1]
    # Frozen: every member keeps the pretrained backbone bit for bit.
    from safetensors.torch import load_file

    pretrained = load_file(str(backbone))
    member = run.load_member(1, 1).backbone.state_dict()
    assert all(torch.equal(member[k], v) for k, v in pretrained.items())
    provenance = json.loads((run_dir / "backbone.json").read_text())
    assert provenance["frozen"] is True and provenance["init"] == "pretrained"
    assert provenance["pretraining"]["points"] == len(LANDMARK_NAMES)
    assert main(["evaluate", str(run_dir), "--ood-limit", "32", "--mc-passes", "2", "--quiet",
                 "--device", "cpu"]) == 0
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["backbone"]["frozen"] is True
    # The VA bins' loss (not the paper's) is recorded where the weights live and in the report.
    assert json.loads(run.class_weights_path.read_text())["VA"] == [0.5]
    assert report["losses"] == {"reweight": True, "balance": True, "va_bins": 0.5}
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "| Prior" in markdown and "| Oracle" in markdown and "Backbone:" in markdown
    assert "plus 0.5 x a cross entropy on the bins" in markdown


def test_finetune_command_keeps_a_backbone_for_frozen_members(tiny_landmark_backbone: tuple[Path, dict],
                                                              tiny_data: Path, tmp_path: Path, capsys) -> None:
    start, _ = tiny_landmark_backbone
    out = tmp_path / "shared.safetensors"
    args = ["finetune", "--data", str(tiny_data), "--preset", "tiny", "--epochs", "2", "--batches-per-epoch", "2",
            "--frames", "4", "--quiet", "--device", "cpu"]
    assert main([*args, "--backbone-weights", str(start), "--out", str(out), "--seed", "3"]) == 0
    record = json.loads(backbone_record_path(out).read_text())
    assert record["seed"] == 3 and record["best_epoch"] in (1, 2)
    assert record["config"]["clip_length"] == 1 and record["config"]["clips_per_task"] == 4
    assert record["config"]["lr_step"] == 1 and record["config"]["reweight"] is True
    assert record["config"]["eval_batch_clips"] == 512  # single frames validated 512 at a time
    assert record["started_from"]["points"] == len(LANDMARK_NAMES)
    model = build_model("tiny")
    load_backbone_weights(model, out)  # loadable as --backbone-weights
    fresh = build_model("tiny")
    load_backbone_weights(fresh, start)
    assert not torch.equal(model.backbone.stem.conv.weight, fresh.backbone.stem.conv.weight)  # it learned
    # A missing start fails in one sentence naming it, before any data is read.
    missing = tmp_path / "nope.safetensors"
    assert main([*args, "--backbone-weights", str(missing), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert f"{missing}: backbone checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_freeze_backbone_refuses_audio_models(tiny_data: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--modality", "va", "--freeze-backbone", "--quiet", "--device", "cpu"])
    assert code == 2 and "--freeze-backbone is for visual models" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "r", ignore_errors=True)


def test_geometric_jitter_moves_landmarks_with_the_crop() -> None:
    from emodistill.methods.pretraining import jitter_geometry

    size = 48
    images = np.zeros((6, size, size, 3), np.uint8)
    points = np.zeros((6, 1, 2), np.float32)
    rng = np.random.default_rng(0)
    for i in range(6):
        x, y = rng.uniform(12, 36, 2)
        cv2.circle(images[i], (round(x), round(y)), 2, (255, 255, 255), -1)
        points[i, 0] = (round(x) / size, round(y) / size)
    moved, moved_points = jitter_geometry(images, points, np.random.default_rng(1))
    for i in range(6):
        grey = moved[i, :, :, 0].astype(float)
        ys, xs = np.nonzero(grey > 0.5 * grey.max())
        centre = np.array([xs.mean(), ys.mean()]) / size
        assert np.abs(centre - moved_points[i, 0]).max() < 1.5 / size  # within 1.5 px
    assert np.abs(moved_points - points).max() > 0.5 / size  # it did move them
