"""Pretraining the MobileFaceNet backbone on face alignment, as the paper does (Sec. 3.2).

MobileFaceNet plus a linear landmark head regresses 2D landmarks from single crops; the
backbone is saved as safetensors with a JSON record of its data, so a run can name it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from emodistill.core.checkpoints import save_weights, write_json
from emodistill.core.errors import InputError
from emodistill.data.affwild import load_splits
from emodistill.data.dataset import Split
from emodistill.data.landmarks import split_landmarks
from emodistill.methods.training import augment_clips
from emodistill.models import PRESETS, build_model
from emodistill.models.batchnorm import batchnorm_momentum, reestimate_batchnorm
from emodistill.models.inference import frames_to_input

CALIBRATION_FRAMES = 2048  # training crops whose statistics become BatchNorm's at the end


@dataclass
class PretrainConfig:
    """How the backbone is pretrained on landmarks."""

    preset: str = "emenet-v"  # the EMENet preset whose backbone is trained (input size, width); as `pretrain --preset`
    steps: int = 1200  # optimiser steps
    batch_size: int = 64  # single crops per step
    lr: float = 2e-3  # Adam's initial learning rate, cosine-decayed to 1 % over the steps
    seed: int = 0
    augment: bool = True  # colour jitter and small shifts/zooms/turns of crop and landmarks together
    # (no flips: they would swap the sides of every landmark)
    report_every: int = 200  # steps between held-out error checks in the log (0: only at the end)


LANDMARK_BETA = 0.01  # smooth L1's switch from squared to absolute error, in crop widths


def landmark_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The alignment loss: smooth L1 over every coordinate (B, K, 2), in crop widths."""
    return nn.functional.smooth_l1_loss(predicted, target, beta=LANDMARK_BETA)


def crop_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Crops (B, 3, S, S) in [0, 1] -> the backbone's features (B, D), the input scaled as EMENet.encode's."""
    return backbone((images * 2.0 - 1.0).contiguous(memory_format=torch.channels_last))


def predict_landmarks(backbone: nn.Module, head: nn.Linear, images: torch.Tensor) -> torch.Tensor:
    """Crops (B, 3, S, S) in [0, 1] -> landmarks (B, K, 2) in 0..1 of the crop."""
    return head(crop_features(backbone, images)).view(len(images), -1, 2) + 0.5  # centred on the crop


class LandmarkNet(nn.Module):
    """Crops (B, 3, S, S) in [0, 1] -> landmarks (B, K, 2) in 0..1 of the crop: a MobileFaceNet
    (a new one, or `backbone`) and a linear head."""

    def __init__(self, preset: str, points: int, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = build_model(preset, "v").backbone if backbone is None else backbone
        self.points = points
        self.head = nn.Linear(PRESETS[preset].feature_dim, 2 * points)

    @torch.no_grad()
    def start_at_mean_shape(self, points: np.ndarray) -> None:
        """Start as the predictor of the mean training shape (N, K, 2): a zero head whose bias is
        that shape. From PyTorch's default head the first outputs are off by 0.7 crop widths,
        and the backbone spends its steps undoing that."""
        self.head.weight.zero_()
        self.head.bias.copy_(torch.as_tensor(points.mean(axis=0).reshape(-1) - 0.5, dtype=torch.float32))

    @torch.no_grad()
    def fit_head(self, frames: np.ndarray, points: np.ndarray, device: torch.device, batch: int = 256) -> None:
        """The least-squares head for the backbone as it is (eval mode) on crops (N, S, S, 3) and
        their landmarks (N, K, 2): how a backbone trained on other targets still reads faces."""
        self.eval()
        features = torch.cat([
            crop_features(self.backbone, frames_to_input(np.asarray(frames[start : start + batch]), device))
            for start in range(0, len(frames), batch)
        ]).double().cpu()
        design = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
        target = torch.as_tensor(points.reshape(len(points), -1) - 0.5, dtype=torch.float64)
        solution = torch.linalg.lstsq(design, target, driver="gelsd").solution  # (D + 1, 2K)
        self.head.weight.copy_(solution[:-1].T)
        self.head.bias.copy_(solution[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return predict_landmarks(self.backbone, self.head, images)


SHIFT, ZOOM, TURN = 0.04, 0.06, 0.14  # geometric jitter: crop widths, relative scale, radians


def jitter_geometry(
    images: np.ndarray, points: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random similarity transforms of crops (B, S, S, 3) and their landmarks (B, K, 2) in 0..1.

    An aligner's errors move the face inside the crop; showing the network such moves keeps it
    reading the face rather than memorising where each training identity's features sit.
    """
    size = images.shape[1]
    out_images, out_points = np.empty_like(images), np.empty_like(points)
    for i in range(len(images)):
        angle, zoom = rng.uniform(-TURN, TURN), np.exp(rng.uniform(-ZOOM, ZOOM))
        shift = rng.uniform(-SHIFT, SHIFT, 2) * size
        cos, sin = np.cos(angle) * zoom, np.sin(angle) * zoom
        rotate = np.array([[cos, -sin], [sin, cos]])
        centre = np.array([size / 2, size / 2])
        affine = np.column_stack([rotate, centre + shift - rotate @ centre])  # (2, 3) pixels -> pixels
        out_images[i] = cv2.warpAffine(images[i], affine, (size, size), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE)
        out_points[i] = (points[i] * size @ rotate.T + affine[:, 2]) / size
    return out_images, out_points


def recalibrate_batchnorm(model: nn.Module, frames: np.ndarray, device: torch.device, batch: int = 256) -> None:
    """BatchNorm's statistics as exact averages over `frames` (N, S, S, 3) uint8: the running averages
    lag far behind fast-moving weights (held-out error read in eval mode jumped from 0.04 to 2.5 crop
    widths between two checks), and the frozen backbone is used in eval mode."""
    reestimate_batchnorm(model, ((frames_to_input(np.asarray(frames[start : start + batch]), device),)
                                 for start in range(0, len(frames), batch)))


def backbone_record_path(weights: Path) -> Path:
    """The JSON record beside a backbone checkpoint: what it was trained on and how well."""
    return Path(weights).with_suffix(".json")


@torch.no_grad()
def landmark_error(
    model: LandmarkNet, frames: np.ndarray, landmarks: np.ndarray, device: torch.device, batch: int = 256
) -> float:
    """Mean point-to-point distance between predicted and true landmarks, in crop widths."""
    model.eval()
    errors = []
    for start in range(0, len(frames), batch):
        images = frames_to_input(np.asarray(frames[start : start + batch]), device)
        predicted = model(images).cpu().numpy()
        errors.append(np.linalg.norm(predicted - landmarks[start : start + batch], axis=-1).mean(-1))
    return float(np.concatenate(errors).mean()) if errors else float("nan")


@dataclass(frozen=True)
class LandmarkData:
    """Crops and their landmarks: every training frame that has them, and the validation
    identities' frames held out to measure the error."""

    train: Split
    points: np.ndarray  # (N_train, P, 2) in crop widths; rows without landmarks are unused
    rows: np.ndarray  # training frames with landmarks
    val_frames: np.ndarray  # (N_held_out, S, S, 3)
    val_points: np.ndarray  # (N_held_out, P, 2)
    source: str  # where the landmarks came from (truth/ or landmarks.csv)


def landmark_data(data: Path, size: int, progress: bool, splits: tuple[Split, Split] | None = None) -> LandmarkData:
    """The landmarks of `data`'s training and validation frames; `splits` (train, val) are those
    frames when the caller has already read them."""
    if splits is None:
        splits = load_splits(data, size, progress=progress)[:2]
    train, val = splits
    train_points, train_mask, source = split_landmarks(data, train)
    val_points, val_mask, _ = split_landmarks(data, val)
    rows = np.flatnonzero(train_mask)
    if len(rows) == 0:
        raise InputError(f"{source}: no training frame has landmarks")
    held_out = np.flatnonzero(val_mask)
    return LandmarkData(train, train_points, rows, np.asarray(val.frames[held_out]), val_points[held_out], source)


def landmark_batch(data: LandmarkData, config: PretrainConfig, rng: np.random.Generator,
                   generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of crops (B, 3, S, S) and landmarks (B, P, 2), jittered together."""
    pick = np.sort(rng.choice(data.rows, size=min(config.batch_size, len(data.rows)), replace=False))
    crops, points = np.asarray(data.train.frames[pick]), data.points[pick]
    if config.augment:
        crops, points = jitter_geometry(crops, points, rng)
    images = frames_to_input(crops, device)  # (B, 3, S, S)
    if config.augment:
        images = augment_clips(images[:, None], generator, flip=False)[:, 0]  # landmarks have sides
    return images, torch.from_numpy(points).to(device)


class LandmarkLoss(nn.Module):
    """Face alignment kept on while the backbone learns the emotion labels (the `auxiliary` of
    `train_member`): every call draws a jittered batch of training crops and returns `weight` x
    the alignment loss of its linear head on the backbone's features. Only the head is its own:
    the backbone is the model's, passed in, so the optimiser sees each parameter once. Its
    batches leave BatchNorm's running statistics alone: as the last forward of every step they
    would set them (momentum 0.1) to those of 40 jittered crops, which the frozen members then
    read every frame through."""

    name = "landmarks"

    def __init__(self, head: nn.Linear, data: LandmarkData, weight: float, config: PretrainConfig,
                 device: torch.device) -> None:
        super().__init__()
        self.head, self.data, self.weight, self.config, self.device = head, data, weight, config, device
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)

    def forward(self, backbone: nn.Module) -> torch.Tensor:
        images, target = landmark_batch(self.data, self.config, self.rng, self.generator, self.device)
        with batchnorm_momentum(backbone, 0.0):  # the frozen members read the labelled crops' statistics
            return self.weight * landmark_loss(predict_landmarks(backbone, self.head, images), target)


def fit_landmarks(model: LandmarkNet, points: LandmarkData, config: PretrainConfig, device: torch.device,
                  progress: bool, log: Callable[[str], None], losses: list[float]) -> np.ndarray:
    """The optimisation: Adam with cosine decay on smooth L1, the held-out error logged every
    `report_every` steps. Appends each step's loss to `losses`; returns the training frames
    used to re-estimate BatchNorm statistics."""
    n_val = len(points.val_frames)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0)))
    )
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    bar = tqdm(range(config.steps), desc="pretraining on landmarks", disable=not progress, unit="step")
    probe = np.linspace(0, n_val - 1, min(512, n_val)).astype(int)  # a fixed held-out subset
    calibration = np.sort(rng.choice(points.rows, size=min(CALIBRATION_FRAMES, len(points.rows)), replace=False))
    for step in bar:
        if config.report_every and step and step % config.report_every == 0:
            recalibrate_batchnorm(model, points.train.frames[calibration], device)
            error = landmark_error(model, points.val_frames[probe], points.val_points[probe], device)
            model.train()
            log(f"pretraining step {step}/{config.steps}: loss {np.mean(losses[-50:]):.4f}, "
                f"held-out landmark error {error:.4f} crop widths")
        images, target = landmark_batch(points, config, rng, generator, device)
        loss = landmark_loss(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return calibration


def pretrain_backbone(
    data: Path,
    out: Path,
    config: PretrainConfig,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train backbone + landmark head on the training split; report error on held-out identities.

    Writes `out` (the backbone's state_dict, loadable with `--backbone-weights`) and its JSON
    record; returns the record.
    """
    if config.preset not in PRESETS:
        raise InputError(f"unknown preset {config.preset!r}; choose one of {', '.join(PRESETS)}")
    if config.steps < 1 or config.batch_size < 1:
        raise InputError(f"--steps and --batch-size must be at least 1, got {config.steps} and {config.batch_size}")
    started = time.perf_counter()
    points = landmark_data(Path(data), PRESETS[config.preset].input_size, progress)
    torch.manual_seed(config.seed)
    model = LandmarkNet(config.preset, points.points.shape[1])
    model.start_at_mean_shape(points.points[points.rows])
    model = model.to(device).to(memory_format=torch.channels_last)
    mean_shape = landmark_error(model, points.val_frames, points.val_points, device)
    losses: list[float] = []
    calibration = fit_landmarks(model, points, config, device, progress, log, losses)
    recalibrate_batchnorm(model, points.train.frames[calibration], device)
    after = landmark_error(model, points.val_frames, points.val_points, device)
    n_val = len(points.val_frames)
    save_weights(Path(out), model.backbone.cpu())
    record = {
        "weights": str(out),
        "task": "2D face landmarks (face alignment)",
        "data": str(data),
        "landmarks": points.source,
        "points": int(points.points.shape[1]),
        "train_frames": len(points.rows),
        "held_out_frames": n_val,
        "held_out_error_mean_shape": round(mean_shape, 5),
        "held_out_error_after": round(after, 5),
        "error_unit": "mean point-to-point distance in crop widths, validation identities",
        "final_loss": round(float(np.mean(losses[-50:])), 6),
        "config": asdict(config),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(backbone_record_path(Path(out)), record)
    log(f"pretrained {config.preset} backbone on {len(points.rows):,} frames of {points.source}: held-out "
        f"landmark error {after:.4f} crop widths (the mean shape's {mean_shape:.4f}) in {record['seconds']:.0f} s "
        f"-> {out}")
    return record
