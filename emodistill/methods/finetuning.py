"""The paper's fine-tuning (Sec. 3.2) done once and shared: one EMENet fine-tuned end to end on the
training labels from a landmark-pretrained backbone, whose backbone the members then keep frozen
(`emodistill finetune`, the demo's step 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emodistill.core.checkpoints import read_json, save_weights, write_json
from emodistill.core.errors import InputError
from emodistill.data.affwild import load_splits
from emodistill.methods.losses import training_class_weights
from emodistill.methods.pretraining import (
    CALIBRATION_FRAMES,
    LandmarkData,
    LandmarkLoss,
    LandmarkNet,
    PretrainConfig,
    backbone_record_path,
    landmark_data,
    landmark_error,
)
from emodistill.methods.training import train_member
from emodistill.models import PRESETS, build_model
from emodistill.models.weights import load_backbone_weights
from emodistill.run import TrainConfig


class HeldOutAlignment:
    """How well a backbone still reads faces: the held-out landmark error of a least-squares head
    fitted to its features on training crops, measured at the start (`before`) and on demand."""

    def __init__(self, backbone: nn.Module, data: LandmarkData, preset: str, seed: int,
                 device: torch.device) -> None:
        self.data, self.device = data, device
        self.net = LandmarkNet(preset, data.points.shape[1], backbone=backbone).to(device)
        size = min(CALIBRATION_FRAMES, len(data.rows))
        self.rows = np.sort(np.random.default_rng(seed).choice(data.rows, size, replace=False))
        self.before = self.error()

    def error(self) -> float:
        self.net.fit_head(self.data.train.frames[self.rows], self.data.points[self.rows], self.device)
        return landmark_error(self.net, self.data.val_frames, self.data.val_points, self.device)


def finetune_config(epochs: int, batches_per_epoch: int | None, frames: int, reweight: bool = True) -> TrainConfig:
    """The shared fine-tuning's training settings: `epochs` with the learning rate divided by
    10 for the last, `batches_per_epoch` (None: one pass over the labelled frames) of `frames`
    distinct frames of each task (clips of one frame). Validation passes hold as many frames as
    the default clips do (32 clips of 16), not 32 single frames: the same outputs, bit for bit,
    in about half the time."""
    default = TrainConfig()
    return TrainConfig(epochs=epochs, lr_step=max(epochs - 1, 1), batches_per_epoch=batches_per_epoch,
                       clip_length=1, clips_per_task=frames, reweight=reweight,
                       eval_batch_clips=default.eval_batch_clips * default.clip_length)


def finetune_backbone(
    data: Path,
    start: Path,
    out: Path,
    config: TrainConfig,
    preset: str,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    landmark_weight: float = 0.0,
    landmark_batch: int = 40,
) -> dict:
    """One EMENet fine-tuned end to end on the training labels from the backbone at `start`;
    its backbone is saved to `out` (with a JSON record naming both stages) for frozen members.

    This is the paper's fine-tuning (Sec. 3.2) done once and shared: on a CPU it costs as much
    as one member, where fine-tuning every member would cost T x (K + 1) times that. It trains on
    distinct frames (`TrainConfig.per_frame`): only the backbone is kept, and a clip of 16
    consecutive frames is 16 near-copies of one face. With `landmark_weight` > 0 the alignment
    loss stays on beside the labels (`LandmarkLoss`, `landmark_batch` jittered crops a step, its
    head started at the least-squares fit to the pretrained features). Either way the record
    holds the held-out landmark error of the fine-tuned backbone under a least-squares head:
    how much of the alignment it kept.
    """
    started = time.perf_counter()
    config = config.per_frame()
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    size = PRESETS[preset].input_size
    torch.manual_seed(seed)
    model = build_model(preset, "v")
    load_backbone_weights(model, Path(start))  # a bad checkpoint fails before the data are read
    train, val, _ = load_splits(Path(data), size, progress=progress)
    if train.tasks != model.tasks:  # heads for the data's release (8 expressions, say)
        backbone = model.backbone
        model = build_model(preset, "v", train.tasks)
        model.backbone = backbone
    try:
        points: LandmarkData | None = landmark_data(Path(data), size, progress, splits=(train, val))
    except InputError:
        if landmark_weight > 0:
            raise
        points = None  # labels without landmarks: fine-tune, but without the alignment errors
    model.to(device).to(memory_format=torch.channels_last)
    aligner = None if points is None else HeldOutAlignment(model.backbone, points, preset, seed, device)
    auxiliary = None
    if aligner is not None and landmark_weight > 0:
        auxiliary = LandmarkLoss(aligner.net.head, aligner.data, landmark_weight,
                                 PretrainConfig(preset=preset, batch_size=landmark_batch, seed=seed), device)
    weights = training_class_weights(train.tasks, train.labels, train.masks, config.reweight, config.va_bins)
    result = train_member(model, train, val, config, weights, seed, device, description="shared fine-tuning",
                          progress=progress, auxiliary=auxiliary)
    error_before = None if aligner is None else aligner.before
    error_after = None if aligner is None else aligner.error()
    save_weights(Path(out), model.backbone.cpu())
    start_record = backbone_record_path(Path(start))
    first_stage = read_json(start_record) if start_record.exists() else None
    record = {
        "weights": str(out),
        "task": "AU/EXPR/VA training labels: one EMENet fine-tuned end to end, after face-alignment pretraining"
                + (f", the landmark loss kept on (weight {landmark_weight:g})" if auxiliary is not None else ""),
        "data": str(data),
        "landmarks": None if first_stage is None else first_stage.get("landmarks"),
        "started_from": str(start) if first_stage is None else first_stage,
        "best_epoch": result.best_epoch,
        "validation_scores": result.scores,
        "seed": seed,
        "landmark_weight": landmark_weight,
        "landmark_batch": landmark_batch if auxiliary is not None else 0,
        "held_out_landmark_error_before": None if error_before is None else round(error_before, 5),
        "held_out_landmark_error_after": None if error_after is None else round(error_after, 5),
        "error_unit": "mean point-to-point distance in crop widths, validation identities, least-squares head",
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(backbone_record_path(Path(out)), record)
    log(f"fine-tuned the shared backbone end to end on the training labels"
        f"{' with the landmark loss kept on' if auxiliary is not None else ''}: validation total "
        f"{result.scores.get('total', float('nan')):.3f} at epoch {result.best_epoch}"
        f"{'' if aligner is None else f', held-out landmark error {error_before:.4f} -> {error_after:.4f} crop widths'}"
        f", {record['seconds']:.0f} s -> {out}")
    return record
