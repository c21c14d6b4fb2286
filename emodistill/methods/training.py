"""Training one ensemble member: on ground truth (a teacher) or on soft labels (a student).

Adam with a step schedule (Sec. 4.2), balanced clips per task (Sec. 3.4), class reweighting
(Eq. 2-5), Algorithm 1 task weights from per-epoch validation, best epoch kept.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from emodistill.data.dataset import Split
from emodistill.data.sampler import ClipSampler, gather
from emodistill.methods.balancing import TaskBalancer
from emodistill.methods.losses import ClassWeights, distillation_loss, supervision_loss
from emodistill.models.inference import (
    FrozenFront,
    audio_to_input,
    decode_cached,
    frames_to_input,
    predict_features,
    predict_split,
)
from emodistill.run import TrainConfig
from emodistill.tasks import emotion_metrics


@dataclass
class MemberResult:
    """What training one member produced: its best weights and how it got there."""

    state_dict: dict[str, torch.Tensor]
    best_epoch: int  # 1-based
    scores: dict[str, float]  # validation emotion metrics at the best epoch
    history: list[dict] = field(default_factory=list)  # per epoch: losses, scores, task weights, lr
    seconds: float = 0.0
    clip_length: int = 16  # the clip length used (1 on still-image data)
    clips_per_task: int = 5  # clips of each task per batch actually used


def still_images(split: Split) -> bool:
    """True when every video of the split is a single frame (the layout of image data sets)."""
    ranges = split.video_ranges()
    return bool(ranges) and all(stop - start == 1 for start, stop in ranges)


def clip_shape(split: Split, config: TrainConfig) -> tuple[int, int]:
    """(clip length, clips per task) for this split at the configured frames-per-batch budget.

    On still images a clip of L frames would repeat one image L times, so clips have length 1
    and a batch holds L times as many distinct images instead.
    """
    if still_images(split):
        config = config.per_frame()
    return config.clip_length, config.clips_per_task


def member_seed(run_seed: int, generation: int, member: int) -> int:
    """Independent, reproducible seed of one member of one generation."""
    return int(np.random.SeedSequence([run_seed, generation, member]).generate_state(1)[0])


def default_batches_per_epoch(split: Split, config: TrainConfig, n_tasks: int) -> int:
    """About one pass over the labelled training frames."""
    labelled = int(np.any(np.stack([m for m in split.masks.values()]), axis=0).sum())
    per_batch = config.clip_length * config.clips_per_task * max(n_tasks, 1)
    return max(1, math.ceil(labelled / per_batch))


def start_at_prior(model: torch.nn.Module, train: Split, tasks: tuple[str, ...], class_weights: ClassWeights,
                   soft_labels: dict[str, np.ndarray] | None = None) -> None:
    """Set each task's output bias to the best constant prediction under its loss (AU and EXPR:
    the training label frequencies, shifted by the class weights when reweighted; a student's:
    from the mean of its soft labels), so a member starts where a model that learned nothing is.

    From a bias of 0 an AU present in 2% of frames starts at P = 0.5, and Adam moves a bias by
    about lr a step: 40 steps at 1e-3 take it from 0 to -0.04 of the -3.9 it needs.
    """
    with torch.no_grad():
        for task in train.tasks:
            if task.name not in tasks:
                continue
            if soft_labels is not None:
                frequencies = np.asarray(soft_labels[task.name], np.float64).mean(0)
            else:
                mask = train.masks[task.name]
                frequencies = task.label_frequencies(train.labels[task.name][mask])
            weights = class_weights.array_for(task)  # in float32, as the loss sees them
            weights = None if weights is None else weights.astype(np.float32)
            logits = task.start_logits(frequencies, weights, distilled=soft_labels is not None)
            if logits is not None:
                bias = model.heads[task.name].out.bias
                bias.copy_(torch.as_tensor(logits, dtype=bias.dtype))


def augment_clips(frames: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per clip: horizontal flip (p 0.5; `flip=False` for targets with sides, such as landmarks)
    and brightness/contrast/saturation jitter of 0.3."""
    b = frames.shape[0]  # frames: (B, L, 3, S, S) in [0, 1]

    def factor() -> torch.Tensor:
        return (0.7 + 0.6 * torch.rand(b, generator=generator)).to(frames.device).view(b, 1, 1, 1, 1)

    if flip:
        mirrored = (torch.rand(b, generator=generator) < 0.5).to(frames.device).view(b, 1, 1, 1, 1)
        frames = torch.where(mirrored, frames.flip(-1), frames)
    frames = frames * factor()  # brightness
    grey_mean = frames.mean(dim=(-3, -2, -1), keepdim=True)
    frames = (frames - grey_mean) * factor() + grey_mean  # contrast
    grey = (0.299 * frames[:, :, 0:1] + 0.587 * frames[:, :, 1:2] + 0.114 * frames[:, :, 2:3])
    frames = (frames - grey) * factor() + grey  # saturation
    return frames.clamp_(0.0, 1.0)


def validation_scores(
    model: torch.nn.Module,
    val: Split,
    device: torch.device,
    config: TrainConfig,
    use_audio: bool,
    frozen: FrozenFront | None = None,
) -> dict[str, float]:
    """Emotion metrics of one model on the validation split (tasks with labels there)."""
    model.eval()
    if frozen is not None:
        logits = predict_features(model, frozen["val"], val, device, config.clip_length, config.eval_batch_clips,
                                  config.tail_blocks)
    else:
        logits = predict_split(model, val, device, config.clip_length, config.eval_batch_clips, use_audio)
    return emotion_metrics(val.tasks, val.labels, val.tasks.activate(logits), val.masks)


def task_scores(scores: dict[str, float], split: Split, tasks: tuple[str, ...]) -> dict[str, float]:
    """One validation score per task for Algorithm 1 (VA: mean CCC of valence and arousal)."""
    per_task = {}
    for task in split.tasks:
        if task.name in tasks:
            values = [scores[m] for m in task.metric_names if m in scores]
            if values:
                per_task[task.name] = float(np.mean(values))
    return per_task


@dataclass
class Objective:
    """The loss of one batch for a member: supervised on the ground truth (a teacher, Eq. 1-7,
    12) or distilled from soft labels (a student, Eq. 8-11, 13); on frozen features, only the
    heads run."""

    model: torch.nn.Module
    train: Split
    config: TrainConfig
    class_weights: ClassWeights
    balancer: TaskBalancer
    device: torch.device
    generator: torch.Generator  # augmentation draws
    soft_labels: dict[str, np.ndarray] | None
    tasks: tuple[str, ...]
    frozen: FrozenFront | None
    # An extra term for the backbone added to every batch's loss: a module, backbone -> loss, with a `name`
    auxiliary: torch.nn.Module | None = None

    def logits(self, index: np.ndarray, batch: dict) -> dict[str, torch.Tensor]:
        if self.frozen is not None:
            cached = torch.from_numpy(self.frozen["train"][index]).to(self.device)  # (B, L, D) or (B, L, C, s, s)
            return decode_cached(self.model, cached, self.config.tail_blocks)
        frames = frames_to_input(batch["frames"], self.device)  # (B, L, 3, S, S)
        if self.config.augment:
            frames = augment_clips(frames, self.generator)
        use_audio = bool(getattr(self.model.config, "audio", False))
        audio = audio_to_input(batch.get("audio"), self.device) if use_audio else None
        return self.model(frames, audio)

    def loss(self, index: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted loss of the clips `index` (B, L) and each task's part."""
        batch = gather(self.train, index, frames=self.frozen is None)
        logits = self.logits(index, batch)
        weights = self.balancer.weights
        if self.soft_labels is None:
            labels = {t: torch.as_tensor(v, device=self.device) for t, v in batch["labels"].items()}
            masks = {t: torch.as_tensor(v, device=self.device) for t, v in batch["masks"].items()}
            loss, parts = supervision_loss(self.train.tasks, logits, labels, masks, self.class_weights, weights)
        else:
            targets = {t: torch.as_tensor(self.soft_labels[t][index], device=self.device) for t in self.tasks}
            loss, parts = distillation_loss(self.train.tasks, logits, targets, None, self.class_weights, weights)
        if self.auxiliary is None:
            return loss, parts
        extra = self.auxiliary(self.model.backbone)
        return loss + extra, {**parts, self.auxiliary.name: extra.item()}


def train_epoch(objective: Objective, optimizer: torch.optim.Optimizer, sampler: ClipSampler,
                n_batches: int, description: str, progress: bool) -> dict[str, float]:
    """One epoch of `n_batches` steps; returns each task's mean loss."""
    objective.model.train()
    losses: dict[str, list[float]] = {t: [] for t in sampler.tasks}
    if objective.auxiliary is not None:
        losses[objective.auxiliary.name] = []
    bar = tqdm(sampler.batches(n_batches), total=n_batches, desc=description, disable=not progress,
               leave=False, unit="batch")
    for index in bar:
        loss, parts = objective.loss(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in parts.items():
            if name in losses:
                losses[name].append(value)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return {t: float(np.mean(v)) for t, v in losses.items() if v}


def train_member(
    model: torch.nn.Module,
    train: Split,
    val: Split,
    config: TrainConfig,
    class_weights: ClassWeights,
    seed: int,
    device: torch.device,
    soft_labels: dict[str, np.ndarray] | None = None,
    description: str = "member",
    progress: bool = True,
    frozen: FrozenFront | None = None,
    auxiliary: torch.nn.Module | None = None,
) -> MemberResult:
    """Train `model` in place and return its best epoch's weights.

    With `soft_labels` (task -> (N, n_logits) probabilities on every training frame) the
    member is a student trained with the distillation losses (Eq. 8-11, 13); otherwise a
    teacher trained on the ground truth with the supervision losses (Eq. 1-7, 12). With
    `frozen` features the backbone stays as it is and only the heads (and audio encoder) learn.
    An `auxiliary` module (backbone -> loss, with a `name`) adds its loss to every batch
    and learns its own parameters beside the model's, as the landmark loss of `finetune_backbone`.
    """
    if auxiliary is not None and frozen is not None:
        raise ValueError("an auxiliary loss trains the backbone, which frozen features keep fixed")
    start_time = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    use_audio = bool(getattr(model.config, "audio", False))
    tasks = train.tasks_present if soft_labels is None else tuple(t for t in soft_labels)
    val_tasks = tuple(t for t in tasks if t in val.tasks_present)
    clip_length, clips_per_task = clip_shape(train, config)
    sampler = ClipSampler(train, clip_length, clips_per_task, tasks=tasks, seed=seed)
    n_batches = config.batches_per_epoch or default_batches_per_epoch(train, config, len(sampler.tasks))
    balancer = TaskBalancer(list(sampler.tasks), fixed=not config.balance)
    model.to(device).to(memory_format=torch.channels_last)
    if frozen is not None:
        model.backbone.requires_grad_(False)
        model.backbone.reset_tail(config.tail_blocks)  # each member's own random tail (none: 0 blocks)
        for layer in model.backbone.tail_layers(config.tail_blocks):
            layer.requires_grad_(True)
    start_at_prior(model, train, tasks, class_weights, soft_labels)
    learned = [p for p in model.parameters() if p.requires_grad]
    if auxiliary is not None:
        learned += list(auxiliary.to(device).parameters())
    optimizer = torch.optim.Adam(learned, lr=config.lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(config.lr_step, 1), gamma=0.1)
    objective = Objective(model, train, config, class_weights, balancer, device, generator, soft_labels,
                          tasks, frozen, auxiliary)

    best: MemberResult | None = None
    history: list[dict] = []
    for epoch in range(1, config.epochs + 1):
        losses = train_epoch(objective, optimizer, sampler, n_batches,
                             f"{description} epoch {epoch}/{config.epochs}", progress)
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()
        scores = validation_scores(model, val, device, config, use_audio, frozen)
        weights_used = dict(balancer.weights)
        balancer.update(task_scores(scores, val, val_tasks))
        history.append({"epoch": epoch, "lr": lr, "loss": losses, "task_weights": weights_used,
                        "scores": scores})
        if best is None or scores.get("total", -np.inf) > best.scores.get("total", -np.inf):
            best = MemberResult(copy.deepcopy(model.state_dict()), epoch, scores)
    assert best is not None, "epochs must be at least 1"
    model.load_state_dict(best.state_dict)
    best.history = history
    best.seconds = time.perf_counter() - start_time
    best.clip_length, best.clips_per_task = clip_length, clips_per_task
    return best
