"""BatchNorm's running statistics: held fixed, or re-estimated exactly over given batches (after
pretraining, whose running averages lag behind fast-moving weights; and in `bench`, where a fresh
network's statistics would shrink its activations to nothing)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def batchnorm_momentum(model: nn.Module, momentum: float | None) -> Iterator[list[nn.Module]]:
    """Inside, every BatchNorm layer of `model` updates its running statistics with `momentum`
    (0: not at all, None: a cumulative average); yields the layers, and restores their own after."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = momentum
    try:
        yield norms
    finally:
        for m, value in zip(norms, saved, strict=True):
            m.momentum = value


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor | None, ...]]) -> None:
    """Replace every BatchNorm's running statistics by exact averages over `batches` (each the
    model's positional arguments); the model is left in eval mode."""
    with batchnorm_momentum(model, None) as norms:  # None: a cumulative average over the batches
        for m in norms:
            m.reset_running_stats()
        model.train()
        for inputs in batches:
            model(*inputs)
    model.eval()
