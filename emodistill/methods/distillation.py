"""A run of iterative self-distillation: a teacher ensemble, then K generations of students.

The run folder is the single source of truth: each finished member is a safetensors file plus
a JSON record (written last), so rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from emodistill.core.checkpoints import (
    load_arrays,
    load_weights,
    read_json,
    save_arrays,
    save_weights,
    write_json,
)
from emodistill.core.errors import InputError
from emodistill.data.affwild import load_split
from emodistill.data.cache import content_hash
from emodistill.data.dataset import Split
from emodistill.methods.losses import ClassWeights, training_class_weights
from emodistill.methods.pretraining import backbone_record_path
from emodistill.methods.training import (
    FrozenFeatures,
    TrainConfig,
    clip_shape,
    member_seed,
    still_images,
    train_member,
)
from emodistill.models import PRESETS, build_model
from emodistill.models.inference import activate, encode_split, predict_features, predict_split
from emodistill.models.weights import load_backbone_weights
from emodistill.tasks import TASKS

RUN_FILE = "run.json"
BACKBONE_FILE = "backbone.json"  # which backbone the run starts from, frozen or not, its pretraining
SOFT_LABELS_FILE = "soft_labels.safetensors"
# Fields a user may change when rerunning an existing run: they extend it, never redo it.
EXTENDABLE = ("generations",)


@dataclass
class RunConfig:
    """Everything that determines a run's members; stored in RUN/run.json."""

    data: str  # data folder: Aff-wild2 layout, simulator output, or `prepare` output + labels.csv
    preset: str = "emenet-v"  # model preset (see `emodistill models`)
    modality: str = "v"  # "v": faces only; "va": faces and audio
    members: int = 5  # T, models per ensemble
    generations: int = 3  # K, student generations after the teacher
    seed: int = 0  # run seed; each member's seed derives from (seed, generation, member)
    backbone_weights: str | None = None  # optional pretrained MobileFaceNet checkpoint
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """Refuse values that cannot make a run, in one sentence."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.modality not in ("v", "va"):
            raise InputError(f"--modality must be v or va, got {self.modality!r}")
        for name, value in (("--members", self.members), ("--epochs", self.train.epochs)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if self.generations < 0:
            raise InputError(f"--generations must be 0 or more, got {self.generations}")
        if self.train.freeze_backbone and self.modality == "va":
            raise InputError("--freeze-backbone is for visual models only (--modality v); "
                             "the audio encoder has no pretraining to keep")

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["train"] = TrainConfig(**data.get("train", {}))
        return cls(**values)


def generation_name(generation: int) -> str:
    """0 -> "teacher", k -> "student{k}" (the paper's Tea, Stu1, Stu2, ...)."""
    return "teacher" if generation == 0 else f"student{generation}"


class Run:
    """The files of one run folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / RUN_FILE

    def exists(self) -> bool:
        return self.config_path.exists()

    def config(self) -> RunConfig:
        if not self.exists():
            raise InputError(f"{self.root} is not an emodistill run (no {RUN_FILE}); train one first")
        stored = read_json(self.config_path)
        try:
            return RunConfig.from_dict(stored)
        except (TypeError, AttributeError) as error:  # not an object, or unknown or missing fields
            raise InputError(f"{self.config_path} is not a run config this version can read ({error})") from None

    def generation_dir(self, generation: int) -> Path:
        return self.root / generation_name(generation)

    def weights_path(self, generation: int, member: int) -> Path:
        return self.generation_dir(generation) / f"member-{member}.safetensors"

    def record_path(self, generation: int, member: int) -> Path:
        return self.generation_dir(generation) / f"member-{member}.json"

    def is_complete(self, generation: int, member: int) -> bool:
        """A member is finished when its record (written after its weights) exists."""
        return self.record_path(generation, member).exists() and self.weights_path(generation, member).exists()

    def finished_generations(self) -> list[int]:
        """Generations whose members are all finished, in order."""
        config = self.config()
        done = []
        for generation in range(config.generations + 1):
            if all(self.is_complete(generation, m) for m in range(config.members)):
                done.append(generation)
        return done

    def load_member(self, generation: int, member: int, device: torch.device | None = None) -> torch.nn.Module:
        """One finished member as an eval-mode model."""
        config = self.config()
        if not self.is_complete(generation, member):
            raise InputError(f"{self.weights_path(generation, member)} is not a finished member")
        model = build_model(config.preset, config.modality)
        load_weights(self.weights_path(generation, member), model)
        return model.to(device or torch.device("cpu")).eval()

    def load_ensemble(self, generation: int, device: torch.device | None = None) -> list[torch.nn.Module]:
        return [self.load_member(generation, m, device) for m in range(self.config().members)]

    def soft_labels_path(self, generation: int) -> Path:
        """Soft labels made by this generation's ensemble, for the next generation."""
        return self.generation_dir(generation) / SOFT_LABELS_FILE


def prepare_run(run: Run, config: RunConfig) -> RunConfig:
    """Create RUN/run.json, or check that an existing run has the same config."""
    config.check()
    wanted = asdict(config)
    if run.exists():
        stored = asdict(run.config())
        changed = sorted(
            k for k in wanted if k not in EXTENDABLE and wanted[k] != stored.get(k)
        )
        if changed:
            details = "; ".join(f"{k}: run has {stored.get(k)!r}, asked {wanted[k]!r}" for k in changed)
            raise InputError(
                f"{run.root} was trained with a different config ({details}); "
                "use a new --out folder or the original options"
            )
    write_json(run.config_path, wanted)
    return config


def load_data(config: RunConfig, progress: bool = True, log: Callable[[str], None] = print) -> tuple[Split, Split]:
    """The training and validation splits at the preset's input size."""
    size = PRESETS[config.preset].input_size
    audio = config.modality == "va"
    train, train_summary = load_split(Path(config.data), "train", size=size, audio=audio, progress=progress)
    val, val_summary = load_split(Path(config.data), "val", size=size, audio=audio, progress=progress)
    log(f"train: {train_summary}")
    log(f"val: {val_summary}")
    if still_images(train):
        length, clips = clip_shape(train, config.train)
        log(f"still images: every training video is one frame, so clips have length {length} and a batch "
            f"holds {clips} distinct images per task (the same frames per batch as {config.train.clip_length} x "
            f"{config.train.clips_per_task})")
    missing = [t.name for t in TASKS if t.name not in train.tasks_present]
    if missing:
        log(f"note: the training data has no {', '.join(missing)} labels; "
            f"training {', '.join(train.tasks_present)} only")
    return train, val


def run_class_weights(run: Run, config: RunConfig, train: Split) -> ClassWeights:
    """Class weights from the training labels (Eq. 3), stored with the run."""
    weights = training_class_weights(train.labels, train.masks, config.train.reweight)
    write_json(run.root / "class_weights.json", weights.as_dict())
    return weights


def ensemble_probs(
    models: list[torch.nn.Module],
    split: Split,
    device: torch.device,
    config: RunConfig,
    features: np.ndarray | None = None,
) -> list[dict[str, np.ndarray]]:
    """Each member's probabilities on every frame of `split`: a list of task -> (N, n_logits).

    With `features` (the frozen backbone's, per frame of `split`) only the heads run.
    """
    use_audio = config.modality == "va"
    length, batch = config.train.clip_length, config.train.eval_batch_clips
    if features is not None:
        return [activate(predict_features(m, features, split, device, length, batch)) for m in models]
    return [activate(predict_split(m, split, device, length, batch, use_audio)) for m in models]


def initial_model(config: RunConfig) -> torch.nn.Module:
    """A new member's network: random heads, and the pretrained backbone when one is named."""
    model = build_model(config.preset, config.modality)
    if config.backbone_weights:
        load_backbone_weights(model, Path(config.backbone_weights))
    return model


def frozen_features(
    config: RunConfig, train: Split, val: Split, device: torch.device, log: Callable[[str], None] = print
) -> FrozenFeatures | None:
    """With --freeze-backbone: every frame's backbone features, computed once for all members."""
    if not config.train.freeze_backbone:
        return None
    started = time.perf_counter()
    model = initial_model(config).to(device)
    features = FrozenFeatures(encode_split(model, train, device), encode_split(model, val, device))
    log(f"frozen backbone: features of {len(train):,} training and {len(val):,} validation frames "
        f"computed once ({time.perf_counter() - started:.1f} s); members train their heads only")
    return features


def backbone_provenance(config: RunConfig) -> dict:
    """Which backbone a run starts from, whether it is frozen, and what it was pretrained on."""
    entry: dict = {"frozen": config.train.freeze_backbone}
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


def average_member_probs(
    member_probs: Sequence[dict[str, np.ndarray]], tasks: Sequence[str]
) -> dict[str, np.ndarray]:
    """Soft labels: the members' probabilities averaged per task, in member order (Sec. 3.4)."""
    return {t: np.mean([p[t] for p in member_probs], axis=0).astype(np.float32) for t in tasks}


def make_soft_labels(
    run: Run,
    generation: int,
    train: Split,
    device: torch.device,
    config: RunConfig,
    frozen: FrozenFeatures | None = None,
) -> dict[str, np.ndarray]:
    """Mean of the ensemble's probabilities on every training frame, all tasks (Sec. 3.4)."""
    soft = saved_soft_labels(run, generation, len(train))
    if soft is not None:
        return soft
    features = None if frozen is None else frozen.train
    member_probs = ensemble_probs(run.load_ensemble(generation, device), train, device, config, features)
    soft = average_member_probs(member_probs, train.tasks_present)
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
    frozen: FrozenFeatures | None = None,
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
        description=f"{name} {member + 1}/{config.members}", progress=progress, frozen=frozen,
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
        f"{record['generation']} member {record['member'] + 1}: best epoch {record['best_epoch']}"
        f"/{record['epochs']}, total {scores.get('total', float('nan')):.3f} ({parts}), "
        f"{record['seconds']:.0f} s"
    )


def train_run(
    root: Path,
    config: RunConfig,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Run:
    """Train (or continue) a run: teacher ensemble, then `config.generations` student ensembles."""
    run = Run(root)
    prepare_run(run, config)
    train, val = load_data(config, progress, log)
    class_weights = run_class_weights(run, config, train)
    write_json(run.root / BACKBONE_FILE, backbone_provenance(config))
    frozen = frozen_features(config, train, val, device, log)
    started = time.perf_counter()
    for generation in range(config.generations + 1):
        soft_labels = None if generation == 0 else make_soft_labels(run, generation - 1, train, device, config, frozen)
        for member in range(config.members):
            if run.is_complete(generation, member):
                log(f"{generation_name(generation)} member {member + 1}: already trained, kept")
                continue
            record = train_generation_member(
                run, config, generation, member, train, val, class_weights, device, soft_labels, progress, frozen
            )
            log(summary_line(record))
    log(f"run {run.root}: {config.members} members x {config.generations + 1} generations "
        f"ready ({time.perf_counter() - started:.0f} s this time)")
    return run
