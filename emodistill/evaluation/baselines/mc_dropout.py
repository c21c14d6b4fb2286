"""Monte Carlo dropout (Gal and Ghahramani 2016): the heads' dropout left on at test time and the
probabilities of several passes averaged. Works on any model whose forward returns a logits
dict; it never imports a data set."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from emodistill.evaluation.baselines import Teachers
from emodistill.evaluation.scores import mean_scores, uncertainty_scores
from emodistill.models.inference import predict_split
from emodistill.tasks import task as task_by_name

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


def mc_dropout_probs(model: nn.Module, frames: torch.Tensor, audio: torch.Tensor | None = None,
                     passes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Probabilities averaged over `passes` forward passes with dropout on (MC dropout).

    Calls model(frames) or model(frames, audio); the logits dict's keys are task names. A
    model with `encode`/`decode` (EMENet: dropout only in the heads) runs its CNNs once and
    only the heads `passes` times, which gives the same result at a fraction of the cost.
    `seed` drives the dropout masks without touching the caller's random state.
    """
    if passes < 1:
        raise ValueError(f"MC dropout needs at least one pass, got {passes}")
    inputs = (frames,) if audio is None else (frames, audio)
    summed: dict[str, torch.Tensor] = {}
    with _own_random_state(frames.device), torch.no_grad(), enable_mc_dropout(model):
        torch.manual_seed(seed)
        if hasattr(model, "encode") and hasattr(model, "decode"):
            features = model.encode(*inputs)

            def stochastic_pass() -> dict[str, torch.Tensor]:
                return model.decode(features)[0]
        else:

            def stochastic_pass() -> dict[str, torch.Tensor]:
                return model(*inputs)

        for _ in range(passes):
            for name, task_logits in stochastic_pass().items():
                probs = task_by_name(name).activate(task_logits)
                summed[name] = summed[name] + probs if name in summed else probs
    return {name: total / passes for name, total in summed.items()}


def score(teachers: Teachers) -> dict:
    """Each teacher member with `mc_passes` dropout passes, scored, averaged over members."""
    config, val = teachers.config, teachers.val
    probs = []
    for model in teachers.models:
        def forward(frames: torch.Tensor, audio: torch.Tensor | None, model: torch.nn.Module = model) -> dict:
            return mc_dropout_probs(model, frames, audio, passes=teachers.mc_passes, seed=teachers.seed)

        probs.append(predict_split(forward, val, teachers.device, config.train.clip_length,
                                   config.train.eval_batch_clips, config.modality == "va"))
    scores = mean_scores([uncertainty_scores(val, {t: p[t] for t in teachers.tasks}) for p in probs])
    return {"label": LABEL, "nll": scores["nll"], "rmse": scores["rmse"], "ece": scores["ece"],
            "passes": teachers.mc_passes}
