"""A trained member behind one NumPy interface, whatever runs it (PyTorch here, ONNX Runtime
in `models.onnx`): streaming over a sequence, with each frame's density input for the OOD score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class Member(Protocol):
    """What predict and bench need from a member."""

    def forward_stateful(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: object | None
    ) -> tuple[dict[str, np.ndarray], object]: ...

    def forward_with_features(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: object | None
    ) -> tuple[dict[str, np.ndarray], object, np.ndarray]: ...


def numpy_logits(logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Task -> float32 NumPy logits on the CPU."""
    return {k: v.float().cpu().numpy() for k, v in logits.items()}


class TorchMember:
    """A PyTorch member behind the NumPy interface of `models.onnx.OnnxMember`."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        # Channels-last runs the depthwise convolutions faster on CPU.
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.device = device

    @torch.inference_mode()
    def forward_stateful(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: torch.Tensor | None
    ) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """frames (B, L, 3, S, S) float32 in [0, 1] -> (task -> logits (B, L, n), GRU state)."""
        x = torch.from_numpy(frames).to(self.device)
        sound = None if audio is None else torch.from_numpy(audio).to(self.device)
        logits, hidden = self.model.forward_stateful(x, sound, hidden)
        return numpy_logits(logits), hidden

    @torch.inference_mode()
    def forward_with_features(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: torch.Tensor | None
    ) -> tuple[dict[str, np.ndarray], torch.Tensor, np.ndarray]:
        """As `forward_stateful`, plus every frame's density input (B * L, density_dim), the
        feature-density OOD score's input: visual features and stage statistics (the sound's
        features are left out)."""
        x = torch.from_numpy(frames).to(self.device)
        sound = None if audio is None else torch.from_numpy(audio).to(self.device)
        features, described = self.model.encode_for_density(x, sound)  # (B, L, D), (B * L, density_dim)
        logits, hidden = self.model.decode(features, hidden)
        return numpy_logits(logits), hidden, described.cpu().numpy()


class SeparateMembers:
    """The plain path of an ensemble: each member's forward in turn, their outputs stacked on a
    leading member axis, as `models.speed.StackedMembers` returns them from one batched forward.

    logits: task -> (M, B, L, n); hidden: a list of M per-member states (None: zeros); density
    inputs (`forward_with_features`): (M, B * L, density_dim).
    """

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.n_members = len(members)

    def forward_stateful(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: list | None
    ) -> tuple[dict[str, np.ndarray], list]:
        states = hidden if hidden is not None else [None] * self.n_members
        outputs = [m.forward_stateful(frames, audio, h) for m, h in zip(self.members, states, strict=True)]
        return _stack([o[0] for o in outputs]), [o[1] for o in outputs]

    def forward_with_features(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: list | None
    ) -> tuple[dict[str, np.ndarray], list, np.ndarray]:
        states = hidden if hidden is not None else [None] * self.n_members
        outputs = [m.forward_with_features(frames, audio, h) for m, h in zip(self.members, states, strict=True)]
        return _stack([o[0] for o in outputs]), [o[1] for o in outputs], np.stack([o[2] for o in outputs])


def _stack(per_member: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([logits[name] for logits in per_member]) for name in per_member[0]}


def ensemble_mean(member_probs: Sequence[dict[str, np.ndarray]], tasks: Sequence[str] | None = None,
                  dtype: type | None = None) -> dict[str, np.ndarray]:
    """The ensemble's prediction: the members' probabilities averaged per task, in member order
    (Sec. 3.1, F_T); a generation's soft labels are this mean on the training frames (Sec. 3.4),
    stored as float32 (`dtype`)."""
    names = tasks if tasks is not None else list(member_probs[0])
    means = {t: np.mean([p[t] for p in member_probs], axis=0) for t in names}
    return means if dtype is None else {t: v.astype(dtype) for t, v in means.items()}
