"""The run folder: every file in it, generation names, and its finished members.

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

from dataclasses import asdict, replace
from pathlib import Path

import torch

from emodistill.core.checkpoints import load_weights, read_json, write_json
from emodistill.core.errors import InputError
from emodistill.models import build_model
from emodistill.run.config import EXTENDABLE, RunConfig
from emodistill.tasks import PAPER_TASKS, TaskSet

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


def load_run(path: Path | str) -> Run:
    """A trained run folder (or a generation folder inside one, RUN/student2), its config read:
    `run.config()`, `run.task_set()`, `run.finished_generations()`; `Ensemble(run, generation)`
    holds a generation's members. One sentence for a folder that is not a run."""
    run, _ = open_run(path)
    run.config()
    return run
