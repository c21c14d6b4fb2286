"""Models that learn: the class-prior row and skill, landmark pretraining, the frozen-feature
path, still-image data, and a pretrain -> freeze -> distil run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emodistill.cli import main
from emodistill.core.checkpoints import save_weights
from emodistill.data.affwild import load_split
from emodistill.data.landmarks import read_landmarks_csv, split_landmarks
from emodistill.data.synth.face import LANDMARK_NAMES
from emodistill.evaluation.evaluate import class_prior, evaluate_run, skill
from emodistill.evaluation.metrics import nll_binary
from emodistill.evaluation.ood import OODProbe, shared_front
from emodistill.methods.backends.local import train_run
from emodistill.methods.finetuning import finetune_backbone
from emodistill.methods.pretraining import (
    LandmarkNet,
    PretrainConfig,
    backbone_record_path,
    landmark_data,
    landmark_error,
    pretrain_backbone,
)
from emodistill.methods.training import augment_clips
from emodistill.models import build_model
from emodistill.models.inference import FrozenFront, encode_split, predict_features, predict_split
from emodistill.models.weights import load_backbone_weights
from emodistill.run import Ensemble, Run, RunConfig, TrainConfig
from emodistill.tasks import AU, EXPR, PAPER_TASKS

CPU = torch.device("cpu")


def _quiet(_: str) -> None:
    pass


def test_evaluate_writes_the_prior_row_and_skill(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    # A copy: evaluating stores a density and a calibration in the run, which the shared run lacks
    run = shutil.copytree(tiny_run, tmp_path / "run")
    report = evaluate_run(run, CPU, ood_limit=32, mc_passes=2, progress=False, log=_quiet)
    prior = report["prior"]
    train, _ = load_split(tiny_data, "train", size=32, progress=False)
    val, _ = load_split(tiny_data, "val", size=32, progress=False)
    # The prior predicts each AU's training positive rate on every validation frame.
    rates = train.labels["AU"][train.masks["AU"]].mean(0)
    mask = val.masks["AU"]
    expected = nll_binary(val.labels["AU"][mask].astype(int), np.broadcast_to(rates, (mask.sum(), 12)),
                          per_column=True)
    assert prior["nll"]["AU"] == pytest.approx(list(expected), abs=1e-5)
    assert set(prior["emotion"]) >= {"AU", "EXPR", "valence", "arousal", "total"}
    assert set(prior["rmse"]) == {"valence", "arousal"}
    for entry in report["generations"]:
        assert set(entry["skill"]["single"]) == {"AU", "EXPR", "valence", "arousal"}
        gap = prior["nll"]["AU_mean"] - report["oracle"]["nll"]["AU_mean"]
        closed = (prior["nll"]["AU_mean"] - entry["nll"]["AU_mean"]) / gap
        assert entry["skill"]["single"]["AU"] == pytest.approx(closed)
        assert entry["total_vs_oracle"] > 0
    assert "skill" in report["baselines"]["temperature_scaling"]
    # By construction the prior has skill 0 and the oracle skill 1.
    names = ("AU", "EXPR", "valence", "arousal")
    assert skill(prior, prior, report["oracle"], PAPER_TASKS) == pytest.approx(dict.fromkeys(names, 0.0))
    assert skill(report["oracle"], prior, report["oracle"], PAPER_TASKS) == pytest.approx(dict.fromkeys(names, 1.0))
    # On real data (no oracle) skill is relative to the prior alone.
    assert skill({"nll": {"EXPR": 0.5}}, {"nll": {"EXPR": 2.0}}, None, PAPER_TASKS) == {"EXPR": 0.75}


def test_class_prior_is_the_training_frequencies(tiny_data: Path) -> None:
    train, _ = load_split(tiny_data, "train", size=32, progress=False)
    prior = class_prior(train, 5, train.tasks_present)
    labels = train.labels["EXPR"][train.masks["EXPR"]]
    assert prior["EXPR"].shape == (5, 7)
    assert prior["EXPR"][0] == pytest.approx(np.bincount(labels, minlength=7) / len(labels))
    assert prior["VA"][0, :20].sum() == pytest.approx(1.0) and prior["VA"][0, 20:].sum() == pytest.approx(1.0)
    assert prior["AU"][3] == pytest.approx(AU.label_frequencies(train.labels["AU"][train.masks["AU"]]))
    with pytest.raises(ValueError, match="no valid EXPR label"):
        EXPR.label_frequencies(np.zeros(0, int))


def _constant_loss(task, bias: torch.Tensor, targets: torch.Tensor, weights: np.ndarray | None) -> torch.Tensor:
    logits = bias.expand(len(targets), -1)
    weight = None if weights is None else torch.as_tensor(weights, dtype=bias.dtype)
    return task.supervision_loss(logits, targets, weight)


@pytest.mark.parametrize("reweighted", [False, True])
def test_start_logits_are_the_best_constant_under_the_loss(tiny_data: Path, reweighted: bool) -> None:
    from emodistill.methods.losses import training_class_weights

    train, _ = load_split(tiny_data, "train", size=32, progress=False)
    weights = training_class_weights(PAPER_TASKS, train.labels, train.masks, reweighted)
    for task in (AU, EXPR):
        mask = train.masks[task.name]
        labels = torch.as_tensor(train.labels[task.name][mask]).double()
        w = weights.for_task(task, torch.zeros(())).numpy()
        start = torch.as_tensor(task.start_logits(task.label_frequencies(labels.numpy()), w, distilled=False))
        best = _constant_loss(task, start, labels, w)
        # No nudge of the start lowers the loss: it is the constant optimum.
        for _ in range(20):
            nudged = start + 0.05 * torch.randn(start.shape, dtype=start.dtype)
            assert _constant_loss(task, nudged, labels, w) >= best - 1e-9, task.name
        if not reweighted:  # without weights the start predicts the label frequencies
            probs = task.activate(start).numpy()
            assert probs == pytest.approx(np.clip(task.label_frequencies(labels.numpy()), 1e-4, 1), abs=1e-3)
    assert PAPER_TASKS[2].start_logits(np.full(40, 0.05), None, distilled=False) is None  # 1 - CCC: no constant optimum


def test_members_start_at_the_training_prior(tiny_data: Path) -> None:
    from emodistill.methods.losses import ClassWeights
    from emodistill.methods.training import start_at_prior

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    train, _ = load_split(tiny_data, "train", size=32, progress=False)
    for head in model.heads.values():
        torch.nn.init.zeros_(head.out.weight)  # the output is then the bias alone
    va_bias = model.heads["VA"].out.bias.clone()
    start_at_prior(model, train, train.tasks_present, ClassWeights.uniform(PAPER_TASKS))
    val, _ = load_split(tiny_data, "val", size=32, progress=False)
    logits = predict_split(model, val, CPU, length=8)
    prior = class_prior(train, len(val), train.tasks_present)
    for task in (AU, EXPR):
        got = task.activate(torch.as_tensor(logits[task.name][0])).numpy()
        assert got == pytest.approx(np.maximum(prior[task.name][0], 1e-4), abs=2e-3), task.name
    assert torch.equal(model.heads["VA"].out.bias, va_bias)
    # A student starts at the mean of its soft labels.
    soft = {"AU": np.full((len(train), 12), 0.2, np.float32)}
    start_at_prior(model, train, ("AU",), ClassWeights.uniform(PAPER_TASKS), soft)
    assert torch.sigmoid(model.heads["AU"].out.bias).detach().numpy() == pytest.approx(np.full(12, 0.2), abs=1e-6)


def test_landmarks_are_in_truth_and_follow_the_face(tiny_data: Path) -> None:
    val, _ = load_split(tiny_data, "val", size=48, progress=False)
    points, mask, source = split_landmarks(tiny_data, val)
    assert points.shape == (len(val), len(LANDMARK_NAMES), 2) and mask.all() and "truth" in source
    # Crops are aligned on the face: the landmarks sit inside the crop, eyes above the mouth.
    assert 0.0 < points.mean() < 1.0 and (points > -0.1).all() and (points < 1.1).all()
    eye = LANDMARK_NAMES.index("right_eye_top")
    mouth = LANDMARK_NAMES.index("upper_lip_inner")
    assert (points[:, eye, 1] < points[:, mouth, 1]).all()
    # Landmarks move with the face: they are not one fixed template.
    assert points.std(axis=0).mean() > 0.005


def test_landmark_augmentation_never_mirrors_a_crop() -> None:
    # A flip would swap the sides of every landmark while the targets stay put.
    frames = torch.zeros(64, 1, 3, 8, 8)
    frames[:, :, :, :, 1] = 0.5  # a bright column on the left
    def left_brighter(out: torch.Tensor) -> torch.Tensor:
        return out[:, 0, 0, 0, 1] > out[:, 0, 0, 0, 6]

    assert left_brighter(augment_clips(frames, torch.Generator().manual_seed(0), flip=False)).all()
    assert not left_brighter(augment_clips(frames, torch.Generator().manual_seed(0))).all()  # the default flips


@pytest.fixture(scope="module")
def tiny_landmark_backbone(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny backbone pretrained 160 steps on the tiny data's landmarks, and its record."""
    out = tmp_path_factory.mktemp("landmarks") / "backbone.safetensors"
    record = pretrain_backbone(tiny_data, out, PretrainConfig(preset="tiny", steps=160, batch_size=32),
                               CPU, progress=False, log=_quiet)
    return out, record


def test_pretrain_lowers_its_landmark_error_on_held_out_identities(tiny_landmark_backbone: tuple[Path, dict]) -> None:
    out, record = tiny_landmark_backbone
    # It starts as the mean training shape and must read the held-out faces better than that
    # shape does (with mirrored crops and unmirrored landmarks it never did).
    assert record["held_out_error_after"] < 0.9 * record["held_out_error_mean_shape"]
    assert json.loads(backbone_record_path(out).read_text())["points"] == len(LANDMARK_NAMES)
    # The saved backbone loads into a model through --backbone-weights' code path.
    from emodistill.models.weights import load_backbone_weights

    model = build_model("tiny")
    load_backbone_weights(model, out)


def test_least_squares_head_reads_a_pretrained_backbone(tiny_data: Path,
                                                        tiny_landmark_backbone: tuple[Path, dict]) -> None:
    # The fine-tuning's landmark head starts at the least-squares fit to the pretrained features:
    # on the training crops it fits, it is at least as good as the mean shape (its constant part).
    out, _ = tiny_landmark_backbone
    points = landmark_data(tiny_data, 32, progress=False)
    model = build_model("tiny")
    from emodistill.models.weights import load_backbone_weights

    load_backbone_weights(model, out)
    aligner = LandmarkNet("tiny", points.points.shape[1], backbone=model.backbone)
    rows = points.rows
    aligner.start_at_mean_shape(points.points[rows])
    mean_shape = landmark_error(aligner, points.train.frames[rows], points.points[rows], CPU)
    aligner.fit_head(points.train.frames[rows], points.points[rows], CPU)
    fitted = landmark_error(aligner, points.train.frames[rows], points.points[rows], CPU)
    assert fitted < mean_shape
    assert aligner.backbone is model.backbone  # the head reads the model's own backbone


def test_landmark_loss_during_fine_tuning_keeps_the_alignment(tiny_data: Path, tmp_path: Path,
                                                              tiny_landmark_backbone: tuple[Path, dict]) -> None:
    start, _ = tiny_landmark_backbone
    config = TrainConfig(epochs=2, lr_step=1, batches_per_epoch=20, clip_length=1, clips_per_task=8, lr=3e-3)
    # Weight 100: on these 8 tiny videos weight 30 was within the spread of three fine-tuning seeds
    # on an AVX2-only EPYC (held-out error after 0.046-0.053, labels only 0.052-0.054), where
    # weight 100 kept 0.045-0.046 in all three.
    records = {
        weight: finetune_backbone(tiny_data, start, tmp_path / f"shared-{weight}.safetensors", config, "tiny", CPU,
                                  progress=False, log=_quiet, landmark_weight=weight)
        for weight in (0.0, 100.0)
    }
    kept, labels_only = records[100.0], records[0.0]
    # Both start from the same backbone, so the same least-squares head reads it equally well...
    assert kept["held_out_landmark_error_before"] == labels_only["held_out_landmark_error_before"]
    # ... and only the run with the landmark loss on keeps reading the held-out faces as well.
    assert kept["held_out_landmark_error_after"] < labels_only["held_out_landmark_error_after"]
    assert kept["landmark_weight"] == 100.0 and labels_only["landmark_batch"] == 0
    assert "landmark loss kept on" in kept["task"]


def test_landmark_loss_leaves_batchnorm_statistics_alone(tiny_data: Path) -> None:
    # Its jittered crops train the backbone but must not become the running statistics that the
    # frozen members read every frame through (they were the last forward of every step).
    from emodistill.methods.pretraining import LandmarkLoss

    points = landmark_data(tiny_data, 32, progress=False)
    model = build_model("tiny")
    loss_fn = LandmarkLoss(torch.nn.Linear(64, 2 * points.points.shape[1]), points, 1.0,
                           PretrainConfig(preset="tiny", batch_size=8), CPU)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    model.train()
    loss = loss_fn(model.backbone)
    loss.backward()
    assert all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))
    assert all(m.momentum == 0.1 for m in norms)  # restored
    assert model.backbone.stem.conv.weight.grad is not None and loss_fn.head.weight.grad is not None
    model.backbone(torch.rand(4, 3, 32, 32))  # an ordinary forward still updates them
    assert not all(torch.equal(m.running_mean, b) for m, b in zip(norms, before, strict=True))


def test_fine_tuning_without_landmarks_skips_the_alignment_errors(tiny_data: Path, tmp_path: Path,
                                                                  tiny_landmark_backbone: tuple[Path, dict]) -> None:
    from emodistill.core.errors import InputError

    labels_only = tmp_path / "data"
    shutil.copytree(tiny_data, labels_only, ignore=shutil.ignore_patterns("truth", ".emodistill-cache"))
    start, _ = tiny_landmark_backbone
    config = TrainConfig(epochs=1, batches_per_epoch=2, clip_length=1, clips_per_task=4)
    record = finetune_backbone(labels_only, start, tmp_path / "shared.safetensors", config, "tiny", CPU,
                               progress=False, log=_quiet)
    assert record["held_out_landmark_error_before"] is None and record["held_out_landmark_error_after"] is None
    with pytest.raises(InputError, match="landmarks"):  # the landmark loss needs landmarks
        finetune_backbone(labels_only, start, tmp_path / "other.safetensors", config, "tiny", CPU,
                          progress=False, log=_quiet, landmark_weight=1.0)


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
