"""The local backend: every member trained in this process, one after another."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emodistill.core.checkpoints import load_arrays
from emodistill.data.dataset import Split
from emodistill.methods.distillation import (
    distil,
    ensemble_probs,
    frozen_features,
    make_soft_labels,
    start_run,
    summary_line,
    train_generation_member,
)
from emodistill.methods.losses import ClassWeights
from emodistill.models.inference import FrozenFront
from emodistill.run import Ensemble, Run, RunConfig


@dataclass
class LocalBackend:
    run: Run
    config: RunConfig
    train: Split
    val: Split
    class_weights: ClassWeights
    device: torch.device
    frozen: FrozenFront | None  # with --freeze-backbone: the features, once for all members
    progress: bool
    log: Callable[[str], None]
    where: str = ""

    def soft_labels(self, generation: int) -> None:
        features = None if self.frozen is None else self.frozen["train"]

        def member_probs() -> list[dict[str, np.ndarray]]:
            return ensemble_probs(Ensemble(self.run, generation).models(self.device), self.train, self.device,
                                  self.config, features)

        make_soft_labels(self.run, generation, len(self.train), self.train.tasks_present, member_probs)

    def train_members(self, generation: int, members: Sequence[int]) -> None:
        soft = None if generation == 0 else load_arrays(self.run.soft_labels_path(generation - 1))
        for member in members:
            record = train_generation_member(
                self.run, self.config, generation, member, self.train, self.val, self.class_weights,
                self.device, soft, self.progress, self.frozen,
            )
            self.log(summary_line(record))


def train_run(root: Path, config: RunConfig, device: torch.device, progress: bool = True,
              log: Callable[[str], None] = print) -> Run:
    """Train (or continue) a run here: teacher ensemble, then `config.generations` student ensembles."""
    run = Run(root)
    config, train, val, class_weights = start_run(run, config, progress, log)
    frozen = frozen_features(config, train, val, device, log)
    return distil(run, config, LocalBackend(run, config, train, val, class_weights, device, frozen, progress, log), log)
