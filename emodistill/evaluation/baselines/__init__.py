"""The uncertainty baselines the distilled students are judged against (paper Sec. 4.3), scored
on the teacher members of a run.

Each baseline is one file here with a `NAME` (its key in report.json's "baselines") and a
`score(teachers: Teachers) -> dict` of the same scores as the models (NLL, and RMSE / ECE where
the baseline gives them) plus the "label" the report's tables show. `baselines()` lists them
and `evaluate` scores every one, so a new baseline is one new file and its entry there.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from emodistill.data.dataset import Split
from emodistill.run import RunConfig


@dataclass(frozen=True)
class Teachers:
    """What a baseline may use: the teacher members, their validation logits, and the settings."""

    models: list[torch.nn.Module]
    logits: list[dict[str, np.ndarray]]  # each member's validation logits, task -> (N, n_logits)
    val: Split
    device: torch.device
    config: RunConfig
    tasks: tuple[str, ...]  # tasks with validation labels
    mc_passes: int
    seed: int
    # A frozen-backbone run: what the shared backbone below the members' tails computed for
    # every validation frame (`inference.encode_images`), so a baseline runs only each member's tail
    val_front: np.ndarray | None = None
    tail_blocks: int = 0


def baselines() -> tuple[ModuleType, ...]:
    """Every baseline module, in report order."""
    from emodistill.evaluation.baselines import mc_dropout, temperature_scaling

    return (temperature_scaling, mc_dropout)
