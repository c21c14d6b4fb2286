"""The configs a run stores in run.json: how members are trained (`TrainConfig`) and the whole
run (`RunConfig`: data, preset, modality, members, generations, task set), checked at the boundary."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from emodistill.core.errors import InputError
from emodistill.models import PRESETS
from emodistill.models.mobilefacenet import BLOCKS
from emodistill.tasks import PAPER_TASKS, TaskSet, release

# Fields a user may change when rerunning an existing run: they extend it, never redo it.
EXTENDABLE = ("generations",)


@dataclass
class TrainConfig:
    """How one member is trained; the defaults are the paper's visual setting (Sec. 4.2)."""

    epochs: int = 10  # paper: 10 visual, 15 audio-visual
    lr: float = 1e-3  # Adam's initial learning rate
    lr_step: int = 3  # divide the learning rate by 10 every lr_step epochs (paper: 3 v, 4 va)
    batches_per_epoch: int | None = None  # None: about one pass over the labelled training frames
    clip_length: int = 16  # frames per clip (L)
    clips_per_task: int = 5  # clips of each task in a batch (the authors' code: 5)
    reweight: bool = True  # class-reweighted BCE/CE (Eq. 2-5); False: plain BCE/CE
    balance: bool = True  # Algorithm 1 task weights; False: fixed equal weights
    augment: bool = True  # colour jitter 0.3 and horizontal flip per clip (authors' code)
    eval_batch_clips: int = 32  # clips per forward pass when validating
    # Train the heads only, on backbone features computed once per split (a pretrained,
    # frozen backbone); False: fine-tune the whole network (the paper's setting).
    freeze_backbone: bool = False
    # With freeze_backbone: the backbone's last bottleneck blocks (and its output layers) that
    # every member learns itself from its own random initialisation, on cached maps of the
    # frozen layers below. The members then differ in their features too, not only in their
    # heads (0: heads only, on cached features).
    tail_blocks: int = 0
    # Weight of a loss on the valence/arousal bins' shape beside 1 - CCC (losses.ClassWeights.va_bins);
    # 0: the paper's loss, which trains only the bins' expectation.
    va_bins: float = 0.0

    @classmethod
    def for_modality(cls, modality: str, epochs: int | None = None, lr_step: int | None = None,
                     **rest: object) -> TrainConfig:
        """The paper's schedule for a modality (Sec. 4.2): 10 epochs, lr / 10 every 3 (visual);
        15 epochs, lr / 10 every 4 (audio-visual). Fewer epochs keep the same proportion."""
        audio_visual = modality == "va"
        if epochs is None:  # 0 is a number the user gave, refused by `check`, not "the default"
            epochs = 15 if audio_visual else 10
        if lr_step is None:
            lr_step = max(1, round(epochs * (4 / 15 if audio_visual else 3 / 10)))
        return cls(epochs=epochs, lr_step=lr_step, **rest)  # type: ignore[arg-type]

    def per_frame(self) -> TrainConfig:
        """The same frames-per-batch budget as clips of length 1: L times as many distinct frames
        in a batch. For still images (a clip would repeat one image L times) and for training a
        backbone whose temporal heads are thrown away (consecutive frames are near-duplicates)."""
        return replace(self, clip_length=1, clips_per_task=self.clip_length * self.clips_per_task)


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
    release: str | None = None  # --release: read the data as this Aff-wild2 release; None: as its folder tells
    # The tasks the run learns, each one's output names and the release (`TaskSet.as_dict`),
    # recorded from the data when training starts; None in runs saved before task sets were.
    tasks: dict | None = None

    @property
    def task_set(self) -> TaskSet:
        """The run's tasks; the paper's 2021 set for a run that recorded none."""
        return PAPER_TASKS if self.tasks is None else TaskSet.from_dict(self.tasks)

    def check(self) -> None:
        """Refuse values that cannot make a run, in one sentence."""
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.modality not in ("v", "va"):
            raise InputError(f"--modality must be v or va, got {self.modality!r}")
        train = self.train
        counts = (("--members", self.members), ("--epochs", train.epochs), ("--lr-step", train.lr_step),
                  ("--clip-length", train.clip_length), ("--clips-per-task", train.clips_per_task),
                  ("--batches-per-epoch", 1 if train.batches_per_epoch is None else train.batches_per_epoch),
                  ("eval_batch_clips", train.eval_batch_clips))
        for name, value in counts:
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if not train.lr > 0:
            raise InputError(f"--lr must be above 0, got {train.lr}")
        if self.generations < 0:
            raise InputError(f"--generations must be 0 or more, got {self.generations}")
        if self.backbone_weights and not Path(self.backbone_weights).is_file():
            raise InputError(f"--backbone-weights {self.backbone_weights}: no such file")
        if not 0 <= self.train.tail_blocks <= BLOCKS:
            raise InputError(f"--tail-blocks must be between 0 and {BLOCKS} (the backbone's bottleneck blocks), "
                             f"got {self.train.tail_blocks}")
        if self.train.tail_blocks and not self.train.freeze_backbone:
            raise InputError("--tail-blocks needs --freeze-backbone: without it every member learns the whole backbone")
        if not self.train.va_bins >= 0:
            raise InputError(f"--va-bins must be 0 or more, got {self.train.va_bins}")
        if self.release is not None:
            release(self.release)  # an unknown name is one sentence
        if self.train.freeze_backbone and self.modality == "va":
            raise InputError("--freeze-backbone is for visual models only (--modality v); "
                             "the audio encoder has no pretraining to keep")

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """The config stored in run.json; TypeError names a field of the wrong type."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["train"] = TrainConfig(**_checked_types(TrainConfig, data.get("train", {}), "train."))
        return cls(**_checked_types(cls, values, ""))


# What a JSON value of each annotated field may be (bool is not an int here, an int is a float).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "int | None": (int, type(None)),
    "str | None": (str, type(None)), "dict | None": (dict, type(None)),
}


def _checked_types(cls: type, values: dict, prefix: str) -> dict:
    """`values` unchanged when each one has its dataclass field's type; TypeError otherwise."""
    if not isinstance(values, dict):
        raise TypeError(f"{prefix or 'the config'} is {type(values).__name__}, not an object")
    for f in fields(cls):
        allowed = _JSON_TYPES.get(str(f.type))
        if allowed is None or f.name not in values:
            continue
        value = values[f.name]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise TypeError(f"{prefix}{f.name} is {value!r}, not {f.type}")
    return values
