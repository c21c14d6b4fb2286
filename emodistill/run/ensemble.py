"""The ensemble: which members of which generation predict together, how they run and how their
outputs are averaged. Evaluate, soft labels, predict, submit and export all take it from here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from emodistill.core.errors import InputError
from emodistill.models.members import Member, TorchMember, ensemble_mean
from emodistill.models.onnx import OnnxMember, export_member
from emodistill.run.folder import Run, generation_name, open_run

RUNTIMES = ("torch", "onnx")  # how members run when loaded for prediction


class Ensemble:
    """The first `size` members of a finished generation of a run (all of them by default)."""

    def __init__(self, run: Run, generation: int, size: int | None = None):
        self.run = run
        self.generation = generation
        available = run.config().members
        self.size = available if size is None else size
        if not 1 <= self.size <= available:
            raise InputError(f"--members must be between 1 and {available} for {run.root}, got {self.size}")

    @classmethod
    def open(cls, path: Path | str | Run, generation: str | int | None = None,
             size: int | None = None) -> Ensemble:
        """`path`: a run folder or a generation folder in one (RUN/student2); `generation`: a
        name or number, by default the final one: the last generation whose members are all
        finished."""
        if isinstance(path, Run):
            run, wanted = path, generation
        else:
            run, wanted = open_run(path, generation)
        return cls(run, run.finished_generation(wanted), size)

    @property
    def name(self) -> str:
        """Run, generation and member count, e.g. "run/student2 (5 members)"."""
        count = f"{self.size} member{'s' * (self.size != 1)}"
        return f"{self.run.root.name}/{generation_name(self.generation)} ({count})"

    def models(self, device: torch.device | None = None) -> list[torch.nn.Module]:
        """The members as eval-mode PyTorch models on `device`."""
        return [self.run.load_member(self.generation, m, device) for m in range(self.size)]

    def members(self, runtime: str = "torch", device: torch.device | None = None, threads: int | None = None,
                log: Callable[[str], None] = print) -> list[Member]:
        """The members with the NumPy interface `forward_stateful` / `forward_with_features`:
        PyTorch models, or ONNX Runtime sessions (exported once, again whenever the weights are
        newer than the file or the file lacks the features output of this version)."""
        if runtime not in RUNTIMES:
            raise InputError(f"unknown runtime {runtime!r}; expected {' or '.join(RUNTIMES)}")
        device = device or torch.device("cpu")
        if runtime == "torch":
            return [TorchMember(model, device) for model in self.models(device)]
        paths = [self.onnx_dir / f"member-{m}.onnx" for m in range(self.size)]
        weights = [self.run.weights_path(self.generation, m) for m in range(self.size)]
        if not all(p.exists() and p.stat().st_mtime >= w.stat().st_mtime for p, w in zip(paths, weights, strict=True)):
            log(f"exporting {generation_name(self.generation)} to ONNX in {self.onnx_dir} (once)")
            self.export_onnx()
        members = [OnnxMember(p, threads) for p in paths]
        if not all(m.has_features for m in members):
            log(f"exporting {generation_name(self.generation)} to ONNX in {self.onnx_dir} again, "
                "with this version's density output")
            self.export_onnx()
            members = [OnnxMember(p, threads) for p in paths]
        return members

    @property
    def onnx_dir(self) -> Path:
        return self.run.onnx_dir(self.generation)

    def export_onnx(self, out_dir: Path | None = None) -> list[Path]:
        """Every member as ONNX, `member-<m>.onnx` in `out_dir` (default RUN/<generation>/onnx)."""
        out_dir = Path(out_dir) if out_dir is not None else self.onnx_dir
        return [export_member(self.run.load_member(self.generation, m), out_dir / f"member-{m}.onnx")
                for m in range(self.size)]

    @staticmethod
    def average(member_probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ensemble's prediction: task -> (T, N, n) members' probabilities -> (N, n), their
        plain mean, the one rule (`members.ensemble_mean`) the soft labels and scores use too."""
        count = len(next(iter(member_probs.values()))) if member_probs else 0
        return ensemble_mean([{name: probs[m] for name, probs in member_probs.items()} for m in range(count)])


def export_run(root: Path | str, generation: str | int | None = None,
               out_dir: Path | None = None) -> list[Path]:
    """Export every member of a finished generation (default: the final one) to ONNX; files are
    `RUN/<generation>/onnx/member-<m>.onnx` unless `out_dir` is given."""
    return Ensemble.open(root, generation).export_onnx(out_dir)
