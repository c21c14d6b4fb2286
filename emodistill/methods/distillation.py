"""A run of iterative self-distillation: a teacher ensemble, then K generations of students.

The run folder is the single source of truth: each finished member is a safetensors file plus
a JSON record (written last), so rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from emodistill.core.checkpoints import (
    load_arrays,
    read_json,
    save_arrays,
    save_weights,
    write_json,
)
from emodistill.data.affwild import load_splits
from emodistill.data.cache import content_hash
from emodistill.data.dataset import Split
from emodistill.methods.backends import Backend
from emodistill.methods.losses import ClassWeights, training_class_weights
from emodistill.methods.pretraining import backbone_record_path
from emodistill.methods.training import (
    clip_shape,
    member_seed,
    still_images,
    train_member,
)
from emodistill.models import PRESETS, build_model
from emodistill.models.inference import FrozenFront, predict_features, predict_split
from emodistill.models.members import ensemble_mean
from emodistill.models.weights import load_backbone_weights
from emodistill.run import Run, RunConfig, generation_name


def start_run(
    run: Run, config: RunConfig, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[RunConfig, Split, Split, ClassWeights]:
    """What every backend does first: read both splits (so bad data fails before anything is
    written), then write or check run.json with the data's task set, and store the class
    weights and the backbone's provenance. Returns the config as stored."""
    config.check()
    train, val = load_data(config, progress, log)
    config = run.prepare(replace(config, tasks=train.tasks.as_dict()))
    class_weights = run_class_weights(run, config, train)
    write_json(run.backbone_path, backbone_provenance(config))
    return config, train, val, class_weights


def distil(run: Run, config: RunConfig, backend: Backend, log: Callable[[str], None] = print) -> Run:
    """The one loop of iterative distillation (Sec. 3.4): the teacher ensemble, then each student
    generation trained on the previous ensemble's soft labels. Finished members are kept."""
    started = time.perf_counter()
    for generation in range(config.generations + 1):
        if generation > 0:
            backend.soft_labels(generation - 1)
        todo = []
        for member in range(config.members):
            if run.is_complete(generation, member):
                log(f"{generation_name(generation)} member {member}: already trained, kept")
            else:
                todo.append(member)
        if todo:
            backend.train_members(generation, todo)
    log(f"run {run.root}: {config.members} members x {config.generations + 1} generations "
        f"ready{backend.where} ({time.perf_counter() - started:.0f} s this time)")
    return run


def load_data(config: RunConfig, progress: bool = True, log: Callable[[str], None] = print) -> tuple[Split, Split]:
    """The training and validation splits at the preset's input size."""
    size = PRESETS[config.preset].input_size
    audio = config.modality == "va"
    train, val, summaries = load_splits(Path(config.data), size, audio, progress, config.release)
    log(f"train: {summaries[0]}")
    log(f"val: {summaries[1]}")
    if still_images(train):
        length, clips = clip_shape(train, config.train)
        log(f"still images: every training video is one frame, so clips have length {length} and a batch "
            f"holds {clips} distinct images per task (the same frames per batch as {config.train.clip_length} x "
            f"{config.train.clips_per_task})")
    missing = [t.name for t in train.tasks if t.name not in train.tasks_present]
    if missing:
        log(f"note: the training data has no {', '.join(missing)} labels; "
            f"training {', '.join(train.tasks_present)} only")
    return train, val


def run_class_weights(run: Run, config: RunConfig, train: Split) -> ClassWeights:
    """Class weights from the training labels (Eq. 3), stored with the run."""
    weights = training_class_weights(train.tasks, train.labels, train.masks, config.train.reweight,
                                     config.train.va_bins)
    write_json(run.class_weights_path, weights.as_dict())
    return weights


def ensemble_probs(
    models: list[torch.nn.Module],
    split: Split,
    device: torch.device,
    config: RunConfig,
    features: np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Each member's probabilities on every frame of `split`: a list of task -> (N, n_logits).

    With `features` (the frozen backbone's, per frame of `split`) only the members' tails and
    heads run.
    """
    use_audio = config.modality == "va"
    length, batch = config.train.clip_length, config.train.eval_batch_clips
    if features is not None:
        return [split.tasks.activate(predict_features(m, features, split, device, length, batch,
                                                      config.train.tail_blocks)) for m in models]
    return [split.tasks.activate(predict_split(m, split, device, length, batch, use_audio)) for m in models]


def initial_model(config: RunConfig) -> torch.nn.Module:
    """A new member's network: random heads, and the pretrained backbone when one is named."""
    model = build_model(config.preset, config.modality, config.task_set)
    if config.backbone_weights:
        load_backbone_weights(model, Path(config.backbone_weights))
    return model


def frozen_features(
    config: RunConfig, train: Split, val: Split, device: torch.device, log: Callable[[str], None] = print
) -> FrozenFront | None:
    """With --freeze-backbone: every frame's backbone features, computed once for all members."""
    if not config.train.freeze_backbone:
        return None
    started = time.perf_counter()
    model = initial_model(config).to(device)
    blocks = config.train.tail_blocks
    features = FrozenFront(model, blocks, device).add("train", train.frames).add("val", val.frames)
    learnt = f"the backbone's last {blocks} blocks and their heads" if blocks else "their heads only"
    log(f"frozen backbone: {'maps' if blocks else 'features'} of {len(train):,} training and {len(val):,} "
        f"validation frames computed once ({time.perf_counter() - started:.1f} s); members train {learnt}")
    return features


def backbone_provenance(config: RunConfig) -> dict:
    """Which backbone a run starts from, whether it is frozen, and what it was pretrained on."""
    entry: dict = {"frozen": config.train.freeze_backbone, "tail_blocks": config.train.tail_blocks}
    if not config.backbone_weights:
        return entry | {"weights": None, "init": "random"}
    path = Path(config.backbone_weights)
    entry |= {"weights": str(path), "init": "pretrained", "sha256": content_hash(path)}
    record = backbone_record_path(path)
    entry["pretraining"] = read_json(record) if record.exists() else "unknown (no record beside the weights)"
    return entry


def saved_soft_labels(run: Run, generation: int, n_frames: int) -> dict[str, np.ndarray] | None:
    """This generation's stored soft labels when they cover all `n_frames` training frames."""
    path = run.soft_labels_path(generation)
    if path.exists():
        soft = load_arrays(path)
        if all(len(v) == n_frames for v in soft.values()):
            return soft
    return None


def make_soft_labels(run: Run, generation: int, n_frames: int, tasks: tuple[str, ...],
                     member_probs: Callable[[], list[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """The one soft-label maker of every backend (Sec. 3.4): the generation's stored soft labels
    when they cover all `n_frames` training frames, else the mean of `member_probs()` (each
    member's probabilities on every training frame, in member order, however a backend computes
    them) over `tasks`, stored as float32."""
    soft = saved_soft_labels(run, generation, n_frames)
    if soft is None:
        soft = ensemble_mean(member_probs(), tasks, np.float32)
        save_arrays(run.soft_labels_path(generation), soft)
    return soft


def train_generation_member(
    run: Run,
    config: RunConfig,
    generation: int,
    member: int,
    train: Split,
    val: Split,
    class_weights: ClassWeights,
    device: torch.device,
    soft_labels: dict[str, np.ndarray] | None,
    progress: bool = True,
    frozen: FrozenFront | None = None,
) -> dict:
    """Train one member and write its weights, then its record; returns the record.

    A frozen-backbone run computes the features here when not handed them (a Ray worker).
    """
    if config.train.freeze_backbone and frozen is None:
        frozen = frozen_features(config, train, val, device, log=lambda _: None)
    seed = member_seed(config.seed, generation, member)
    torch.manual_seed(seed)
    model = initial_model(config)
    name = generation_name(generation)
    result = train_member(
        model, train, val, config.train, class_weights, seed, device, soft_labels,
        description=f"{name} member {member} (of 0-{config.members - 1})", progress=progress, frozen=frozen,
    )
    save_weights(run.weights_path(generation, member), model.cpu())
    record = {
        "generation": name,
        "member": member,
        "seed": seed,
        "preset": config.preset,
        "modality": config.modality,
        "best_epoch": result.best_epoch,
        "epochs": config.train.epochs,
        "clip_length": result.clip_length,
        "clips_per_task": result.clips_per_task,
        "backbone": {k: v for k, v in backbone_provenance(config).items() if k != "pretraining"},
        "scores": result.scores,
        "history": result.history,
        "seconds": round(result.seconds, 2),
    }
    write_json(run.record_path(generation, member), record)
    return record


def summary_line(record: dict) -> str:
    scores = record["scores"]
    parts = " ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != "total")
    return (
        f"{record['generation']} member {record['member']}: best epoch {record['best_epoch']}"
        f"/{record['epochs']}, total {scores.get('total', float('nan')):.3f} ({parts}), "
        f"{record['seconds']:.0f} s"
    )


