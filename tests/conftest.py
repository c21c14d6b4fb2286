"""Shared fixtures: one small simulated data set per test session (tiny, for 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated Aff-wild2-layout data: 8 videos x 32 frames of 48x48 crops."""
    from emodistill.data.synth import generate

    root = tmp_path_factory.mktemp("tiny-data")
    generate(root, videos=8, frames=32, size=48, seed=3, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 2-member teacher ensemble of the tiny preset (seconds on 2 cores)."""
    from emodistill.methods.backends.local import train_run
    from emodistill.run import RunConfig, TrainConfig

    root = tmp_path_factory.mktemp("tiny-run") / "run"
    config = RunConfig(data=str(tiny_data), preset="tiny", members=2, generations=0,
                       train=TrainConfig(epochs=1, batches_per_epoch=2, clip_length=8))
    train_run(root, config, torch.device("cpu"), progress=False, log=lambda _: None)
    return root
