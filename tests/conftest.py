"""Shared fixtures: one small simulated data set per test session (tiny, for 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def fp32_everywhere() -> Iterator[None]:
    """Every test (and every fixture of any scope) sees a CPU without native bf16, so
    `Levers.auto()` and `predict`'s default are the same fp32 path on an AVX2 machine and on one
    with AMX, and the tolerances of tests written for fp32 hold on both. Tests of bf16 itself
    patch `cpu_flags` again."""
    import emodistill.models.speed as speed

    real = speed.cpu_flags
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speed, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": [
            flag for flag in real(cpuinfo) if flag not in speed.BF16_FLAGS])
        yield


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
