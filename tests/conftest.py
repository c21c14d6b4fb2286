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
