"""Monte Carlo dropout (Gal and Ghahramani 2016): the heads' dropout left on at test time and the
probabilities of several passes averaged. Works on any model whose forward returns a logits
dict; it never imports a data set."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from emodistill.evaluation.baselines import Teachers
from emodistill.evaluation.scores import mean_scores, uncertainty_scores
from emodistill.models.inference import predict_features, predict_split
from emodistill.tasks import PAPER_TASKS, TaskSet

NAME = "mc_dropout"
LABEL = "MC"  # in the report's tables
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)


def _own_random_state(device: torch.device) -> contextlib.AbstractContextManager:
    """Fork the CPU random state and that of `device`, restored on exit."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[], device_type="cpu")
    index = device.index if device.index is not None else \
        torch.get_device_module(device.type).current_device()
    return torch.random.fork_rng(devices=[index], device_type=device.type)


@contextlib.contextmanager
def enable_mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode everywhere except the dropout layers, which sample; modes restored on exit.

    BatchNorm stays in eval mode, so its running statistics are neither used from the batch
    nor updated.
    """
    modes = {module: module.training for module in model.modules()}
    dropouts = [m for m in model.modules() if isinstance(m, DROPOUT_TYPES)]
    if not dropouts:
        raise ValueError(f"{type(model).__name__} has no dropout layer to sample for MC dropout")
    try:
        model.eval()
        for module in dropouts:
            module.train()
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _averaged(tasks: TaskSet, stochastic_pass: Callable[[], dict[str, torch.Tensor]],
              passes: int) -> dict[str, torch.Tensor]:
    """Each task's probabilities averaged over `passes` calls of `stochastic_pass` (-> logits)."""
    summed: dict[str, torch.Tensor] = {}
    for _ in range(passes):
        for name, task_logits in stochastic_pass().items():
            probs = tasks[name].activate(task_logits)
            summed[name] = summed[name] + probs if name in summed else probs
    return {name: total / passes for name, total in summed.items()}


def tasks_of(model: nn.Module) -> TaskSet:
    """The model's own task set (an EMENet's heads); the paper's for a model that has none."""
    return getattr(model, "tasks", PAPER_TASKS)


def _check_passes(passes: int) -> None:
    if passes < 1:
        raise ValueError(f"MC dropout needs at least one pass, got {passes}")


def mc_dropout_probs(model: nn.Module, frames: torch.Tensor, audio: torch.Tensor | None = None,
                     passes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Probabilities averaged over `passes` forward passes with dropout on (MC dropout).

    Calls model(frames) or model(frames, audio); the logits dict's keys are task names. A
    model with `encode`/`decode` (EMENet: dropout only in the heads) runs its CNNs once and
    only the heads `passes` times, which gives the same result at a fraction of the cost.
    `seed` drives the dropout masks without touching the caller's random state.
    """
    _check_passes(passes)
    inputs = (frames,) if audio is None else (frames, audio)
    with _own_random_state(frames.device), torch.no_grad(), enable_mc_dropout(model):
        torch.manual_seed(seed)
        if hasattr(model, "encode") and hasattr(model, "decode"):
            features = model.encode(*inputs)
            return _averaged(tasks_of(model), lambda: model.decode(features)[0], passes)
        return _averaged(tasks_of(model), lambda: model(*inputs), passes)


def mc_dropout_cached(model: nn.Module, cached: torch.Tensor, tail_blocks: int, passes: int = 10,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """`mc_dropout_probs` of an EMENet from what its frozen backbone cached for the clips
    (`EMENet.encode_front`, (B, L, ...)): the tail once, the heads `passes` times, the same masks."""
    _check_passes(passes)
    with _own_random_state(cached.device), torch.no_grad(), enable_mc_dropout(model):
        torch.manual_seed(seed)
        features = model.encode_tail(cached, tail_blocks)
        return _averaged(tasks_of(model), lambda: model.decode(features)[0], passes)


def score(teachers: Teachers) -> dict:
    """Each teacher member with `mc_passes` dropout passes, scored, averaged over members."""
    config, val = teachers.config, teachers.val
    length, batch = config.train.clip_length, config.train.eval_batch_clips
    probs = []
    for model in teachers.models:
        if teachers.val_front is not None:
            def decode(cached: torch.Tensor, model: torch.nn.Module = model) -> dict:
                return mc_dropout_cached(model, cached, teachers.tail_blocks, teachers.mc_passes, teachers.seed)

            probs.append(predict_features(model, teachers.val_front, val, teachers.device, length, batch,
                                          decode=decode))
            continue

        def forward(frames: torch.Tensor, audio: torch.Tensor | None, model: torch.nn.Module = model) -> dict:
            return mc_dropout_probs(model, frames, audio, passes=teachers.mc_passes, seed=teachers.seed)

        probs.append(predict_split(forward, val, teachers.device, length, batch, config.modality == "va"))
    scores = mean_scores([uncertainty_scores(val, {t: p[t] for t in teachers.tasks}) for p in probs])
    return {"label": LABEL, "nll": scores["nll"], "rmse": scores["rmse"], "ece": scores["ece"],
            "passes": teachers.mc_passes}
