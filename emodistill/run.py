"""The run folder: every file in it, the configs stored there, generation names, and members.

A run is the single source of truth between stages. Training writes it, evaluation and the
report read it, predict, export and bench load its members. Every path inside it is spelled
here and nowhere else:

    RUN/run.json                        RunConfig (with its TrainConfig and the task set)
    RUN/class_weights.json              class weights from the training labels (Eq. 3)
    RUN/backbone.json                   which backbone the members start from
    RUN/<generation>/member-<m>.safetensors, member-<m>.json (written last: "finished")
    RUN/<generation>/soft_labels.safetensors   this ensemble's soft labels for the next one
    RUN/<generation>/density.safetensors       each member's feature density and the OOD thresholds (evaluate)
    RUN/<generation>/calibration.safetensors   each member's calibration of its probabilities (evaluate)
    RUN/<generation>/onnx/member-<m>.onnx      exported members
    RUN/ray/<generation>-member-<m>.json       Ray attempts at one member
    RUN/report/report.json, report.md, figures
    RUN/.lock                           the one writer (core.runlock)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from emodistill.core.checkpoints import load_weights, read_json, write_json
from emodistill.core.errors import InputError
from emodistill.models import PRESETS, build_model
from emodistill.models.members import Member, TorchMember
from emodistill.models.mobilefacenet import BLOCKS
from emodistill.models.onnx import OnnxMember, export_member
from emodistill.tasks import PAPER_TASKS, TaskSet, release

RUN_FILE = "run.json"
CLASS_WEIGHTS_FILE = "class_weights.json"
BACKBONE_FILE = "backbone.json"  # which backbone the run starts from, frozen or not, its pretraining
SOFT_LABELS_FILE = "soft_labels.safetensors"
DENSITY_FILE = "density.safetensors"
CALIBRATION_FILE = "calibration.safetensors"
ONNX_DIR = "onnx"
ATTEMPTS_DIR = "ray"
REPORT_DIR = "report"
REPORT_FILE = "report.json"
# Fields a user may change when rerunning an existing run: they extend it, never redo it.
EXTENDABLE = ("generations",)
BACKENDS = ("torch", "onnx")  # how members run when loaded for prediction


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


def generation_name(generation: int) -> str:
    """0 -> "teacher", k -> "student{k}" (the paper's Tea, Stu1, Stu2, ...)."""
    return "teacher" if generation == 0 else f"student{generation}"


def parse_generation(text: str | int | None) -> int | None:
    """A generation as the user names it: "teacher", "student2", or its number; None: last."""
    if text is None or isinstance(text, int):
        return text
    if text.isdigit():
        return int(text)
    if text == generation_name(0):
        return 0
    number = text.removeprefix("student")
    if text.startswith("student") and number.isdigit() and int(number) > 0:
        return int(number)
    raise InputError(f"unknown generation {text!r}; expected teacher, student<k> or a number")


class Run:
    """The files of one run folder."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.config_path = self.root / RUN_FILE
        self.class_weights_path = self.root / CLASS_WEIGHTS_FILE
        self.backbone_path = self.root / BACKBONE_FILE
        self.report_dir = self.root / REPORT_DIR
        self.report_path = self.report_dir / REPORT_FILE

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

    def data_root(self, override: Path | str | None = None) -> Path:
        """The run's data folder: `override` (a moved or other copy) when given, else run.json's,
        which is absolute; a run saved before holds the path as typed, so a relative one is
        tried from the working directory, then from the run folder."""
        if override is not None:
            return Path(override)
        data = Path(self.config().data)
        if data.is_absolute() or data.exists():
            return data
        beside = self.root / data
        return beside if beside.exists() else data

    def task_set(self) -> TaskSet:
        return self.config().task_set

    def prepare(self, config: RunConfig) -> RunConfig:
        """Create RUN/run.json with absolute paths, or check that an existing run has the same
        config (its task set included); returns the config as stored."""
        config.check()
        config = replace(config, data=str(Path(config.data).resolve()),
                         backbone_weights=config.backbone_weights and str(Path(config.backbone_weights).resolve()))
        wanted = asdict(config)
        if self.exists():
            stored = asdict(replace(self.config(), data=str(self.data_root().resolve())))
            stored["tasks"] = stored["tasks"] or PAPER_TASKS.as_dict()
            if stored["backbone_weights"]:
                stored["backbone_weights"] = str(Path(stored["backbone_weights"]).resolve())
            changed = sorted(k for k in wanted if k not in EXTENDABLE and wanted[k] != stored.get(k))
            if changed:
                details = "; ".join(f"{k}: run has {stored.get(k)!r}, asked {wanted[k]!r}" for k in changed)
                raise InputError(
                    f"{self.root} was trained with a different config ({details}); "
                    "use a new --out folder or the original options"
                )
        write_json(self.config_path, wanted)
        return config

    # ------------------------------------------------------------------ generations and members

    def generation_dir(self, generation: int) -> Path:
        return self.root / generation_name(generation)

    def weights_path(self, generation: int, member: int) -> Path:
        return self.generation_dir(generation) / f"member-{member}.safetensors"

    def record_path(self, generation: int, member: int) -> Path:
        return self.generation_dir(generation) / f"member-{member}.json"

    def soft_labels_path(self, generation: int) -> Path:
        """Soft labels made by this generation's ensemble, for the next generation."""
        return self.generation_dir(generation) / SOFT_LABELS_FILE

    def density_path(self, generation: int) -> Path:
        """The feature densities of this generation's members and their OOD thresholds."""
        return self.generation_dir(generation) / DENSITY_FILE

    def calibration_path(self, generation: int) -> Path:
        """Each member's calibration (prior shift, scale and bias per logit)."""
        return self.generation_dir(generation) / CALIBRATION_FILE

    def onnx_dir(self, generation: int) -> Path:
        return self.generation_dir(generation) / ONNX_DIR

    def attempts_path(self, generation: int, member: int) -> Path:
        """Where the Ray backend logs each attempt at one member (host, pid, start time)."""
        return self.root / ATTEMPTS_DIR / f"{generation_name(generation)}-member-{member}.json"

    def is_complete(self, generation: int, member: int) -> bool:
        """A member is finished when its record (written after its weights) exists."""
        return self.record_path(generation, member).exists() and self.weights_path(generation, member).exists()

    def finished_generations(self) -> list[int]:
        """Generations whose members are all finished, in order."""
        config = self.config()
        return [g for g in range(config.generations + 1)
                if all(self.is_complete(g, m) for m in range(config.members))]

    def finished_generation(self, wanted: str | int | None = None) -> int:
        """`wanted` (a name or number) if it is finished, else the last finished generation."""
        finished = self.finished_generations()
        if not finished:
            raise InputError(f"{self.root} has no finished generation yet; train it first")
        generation = parse_generation(wanted)
        if generation is None:
            return finished[-1]
        if generation not in finished:
            done = ", ".join(generation_name(g) for g in finished)
            raise InputError(f"{self.root}: generation {generation_name(generation)} is not finished "
                             f"(finished: {done})")
        return generation

    def load_member(self, generation: int, member: int, device: torch.device | None = None) -> torch.nn.Module:
        """One finished member as an eval-mode model."""
        config = self.config()
        if not self.is_complete(generation, member):
            raise InputError(f"{self.weights_path(generation, member)} is not a finished member")
        model = build_model(config.preset, config.modality, config.task_set)
        load_weights(self.weights_path(generation, member), model)
        return model.to(device or torch.device("cpu")).eval()

    def load_ensemble(self, generation: int, device: torch.device | None = None) -> list[torch.nn.Module]:
        return [self.load_member(generation, m, device) for m in range(self.config().members)]

    def export_onnx(self, generation: int, out_dir: Path | None = None) -> list[Path]:
        """Every member of a finished generation as ONNX, in `out_dir` (default RUN/<gen>/onnx)."""
        out_dir = Path(out_dir) if out_dir is not None else self.onnx_dir(generation)
        return [export_member(self.load_member(generation, m), out_dir / f"member-{m}.onnx")
                for m in range(self.config().members)]

    def members(self, generation: int, count: int, backend: str = "torch",
                device: torch.device | None = None, threads: int | None = None,
                log: Callable[[str], None] = print) -> list[Member]:
        """The first `count` members of a finished generation, each with the NumPy interface
        `forward_stateful` / `forward_with_features`: PyTorch models, or ONNX Runtime sessions
        (exported once, again whenever the weights are newer than the file or the file lacks the
        features output of this version)."""
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; expected {' or '.join(BACKENDS)}")
        device = device or torch.device("cpu")
        if backend == "torch":
            return [TorchMember(self.load_member(generation, m, device), device) for m in range(count)]
        folder = self.onnx_dir(generation)
        paths = [folder / f"member-{m}.onnx" for m in range(count)]
        weights = [self.weights_path(generation, m) for m in range(count)]
        if not all(p.exists() and p.stat().st_mtime >= w.stat().st_mtime
                   for p, w in zip(paths, weights, strict=True)):
            log(f"exporting {generation_name(generation)} to ONNX in {folder} (once)")
            self.export_onnx(generation)
        members = [OnnxMember(p, threads) for p in paths]
        if not all(m.has_features for m in members):
            log(f"exporting {generation_name(generation)} to ONNX in {folder} again, with the features output")
            self.export_onnx(generation)
            members = [OnnxMember(p, threads) for p in paths]
        return members


def open_run(path: Path | str, generation: str | int | None = None) -> tuple[Run, int | None]:
    """A run folder, or a generation folder inside one (RUN/student2), and the generation asked
    for (None: the last finished one is meant)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such model folder")
    wanted = parse_generation(generation)
    if not Run(path).exists() and Run(path.parent).exists():
        inner = parse_generation(path.name)
        if wanted is not None and wanted != inner:
            raise InputError(f"{path} is generation {path.name}, but generation {generation} was asked for")
        return Run(path.parent), inner
    return Run(path), wanted


def export_run(root: Path | str, generation: str | int | None = None,
               out_dir: Path | None = None) -> list[Path]:
    """Export every member of a finished generation (default: the last one) to ONNX; files are
    `RUN/<generation>/onnx/member-<m>.onnx` unless `out_dir` is given."""
    run = Run(root)
    return run.export_onnx(run.finished_generation(generation), out_dir)


def load_run(path: Path | str) -> Run:
    """A trained run folder (or a generation folder inside one, RUN/student2), its config read:
    `run.config()`, `run.task_set()`, `run.finished_generations()`, and the members of a generation
    with `run.load_ensemble(generation)`. One sentence for a folder that is not a run."""
    run, _ = open_run(path)
    run.config()
    return run
