"""Speed levers for ensemble inference, each switchable and checked against the plain path
(what each gave, measured: benchmarks/README.md, "The speed levers").

- `StackedMembers`: M EMENets of one config behind one `TorchMember`-like object, outputs stacked
  on a leading member axis. The GRU heads of all members run as one batched recurrence
  (`StackedHeads`); the CNNs run in turn on the shared input (`MemberCNNs`), and members whose
  lower layers are equal (a frozen-backbone run) compute those once. Optionally BatchNorm folded
  into the convolutions (`fold_batch_norm`) and bf16 autocast. Grouped convolutions over the
  members' channels (0.54x) and `torch.func.vmap` (0.26x) were slower and were dropped.
- `bf16_fast`: bf16 pays only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX),
  checked at run time from the CPU flags.
- `Levers`: which levers a run uses, for `bench` and `predict` to record.

How often faces are detected is the front end's (`FaceTracker(detect_every=k)`, which follows
faces in between); the background thread is `prefetch` (emodistill.data.frontend.decode).
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from emodistill.core.errors import InputError
from emodistill.models.emenet import EMENet
from emodistill.models.members import numpy_logits
from emodistill.models.mobilefacenet import MobileFaceNet, density_input, shared_tail_blocks

# CPU flags (as /proc/cpuinfo spells them) with which PyTorch's oneDNN kernels multiply bf16 in
# hardware; without them bf16 is emulated and slower than fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")
AMX_FLAGS = ("amx_bf16", "amx_tile")  # bf16 on matrix units: fast enough for the members to spare a core

# How far bf16 autocast may move `predict`'s numeric outputs from fp32. Measured on a Xeon with
# AMX, the demo's trained teachers and third students on 1,192 validation crops: probabilities
# up to 0.0150 (99th percentile 0.0098, mean 0.0018), valence and arousal up to 0.0200, the
# expression unchanged on 99.3% of the frames; random members stay within 7.4e-3. The error is
# spread over the network: keeping the stem, the last 1 or 3 blocks, the output layers, the
# residual adds or the depthwise convolutions in fp32 left it at 0.013-0.017.
BF16_TOLERANCE = 2.5e-2


def cpu_flags(cpuinfo: Path | str = "/proc/cpuinfo") -> list[str]:
    """The CPU's feature flags, sorted: the first `flags` line of /proc/cpuinfo (Linux), else
    whatever `platform` says about the processor (no flags on most other systems)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return sorted(set(value.split()))
    fallback = platform.processor() or platform.machine()
    return sorted(set(fallback.lower().split()))


def bf16_fast(flags: Iterable[str] | None = None) -> bool:
    """True only when the CPU has native bf16 matrix arithmetic (AVX512-BF16 or AMX)."""
    have = set(cpu_flags() if flags is None else flags)
    return any(flag in have for flag in BF16_FLAGS)


@dataclass(frozen=True)
class Levers:
    """The speed levers a prediction run uses; the defaults are the plain fp32 path."""

    batched: bool = False  # all members in one forward (`StackedMembers`)
    bf16: bool = False  # bf16 autocast of the face CNNs
    fold_bn: bool = False  # BatchNorm folded into the convolutions (`fold_batch_norm`)
    decode_thread: bool = False  # face finding and alignment in a background thread (`prefetch`)
    model_threads: int = 0  # PyTorch threads for the members' forward passes (0: as PyTorch is set)

    def __post_init__(self) -> None:
        if self.model_threads < 0:
            raise InputError(f"model_threads must be 0 (PyTorch's setting) or more, got {self.model_threads}")

    def as_dict(self) -> dict[str, bool | int]:
        """The levers as JSON-ready values, for `bench` results and run records."""
        return asdict(self)

    @classmethod
    def auto(cls, flags: Iterable[str] | None = None, threads: int | None = None,
             bf16: bool = True) -> Levers:
        """Every lever that leaves the outputs within their stated tolerances: batching, folded
        BatchNorm and the decode thread always, bf16 only on a CPU with native bf16
        (`bf16_fast`) and unless `bf16` is False.

        With bf16 on matrix units (AMX) the members run on one thread fewer than PyTorch's
        `threads` (default: its current setting), leaving a core to the decode-and-detect
        thread: the bf16 members on one core keep up with the detector on the other, while two
        OpenMP threads and the detector fight over two cores (5 EMENet-V members, whole pipeline,
        2-core Xeon: 35.4-35.8 frames/s on one thread, 32.2-32.5 on two). Without matrix units
        the members are the slower stage and keep every thread (2-core Zen 4 EPYC, bf16: 43.2
        on one, 58.9 on two; the Xeon in fp32: 20.4-20.5 on one, 24.3-24.5 on two)."""
        have = set(cpu_flags() if flags is None else flags)
        bf16, amx = bf16 and bf16_fast(have), any(flag in have for flag in AMX_FLAGS)
        threads = torch.get_num_threads() if threads is None else threads
        return cls(batched=True, bf16=bf16, fold_bn=True, decode_thread=True,
                   model_threads=threads - 1 if bf16 and amx and threads > 1 else 0)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch on `n` threads inside the block (0: left as it is), its setting restored after."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# ------------------------------------------------------------------------ stacked members

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of an eval-mode network with each BatchNorm folded into the convolution before it
    (weights scaled, bias added): one layer call instead of two, the same function up to rounding
    (logits within 3e-6 of the unfolded ones on the tiny, demo and EMENet-V presets, measured).

    The pairs are the blocks that hold a convolution `conv` (or a Sequential ending in one) and
    a BatchNorm `bn` applied to its output, as MobileFaceNet's `ConvBN` and MarbleNet's
    `ConvBN1d` do; their `bn` becomes an identity. A network with BatchNorm elsewhere is an
    InputError, never a silently unfolded one.
    """
    folded = copy.deepcopy(module).eval()
    for block in list(folded.modules()):
        conv, bn = getattr(block, "conv", None), getattr(block, "bn", None)
        if not isinstance(bn, _BATCH_NORMS):
            continue
        holder, key = (conv, len(conv) - 1) if isinstance(conv, nn.Sequential) else (block, "conv")
        last = conv[-1] if isinstance(conv, nn.Sequential) else conv
        if not isinstance(last, nn.Conv1d | nn.Conv2d):
            continue
        fused = fuse_conv_bn_eval(last, bn)
        if isinstance(holder, nn.Sequential):
            holder[key] = fused
        else:
            block.conv = fused
        block.bn = nn.Identity()
    if any(isinstance(m, _BATCH_NORMS) for m in folded.modules()):
        raise InputError("fold_batch_norm folds BatchNorm only right after a block's `conv`")
    return folded


class StackedHeads(nn.Module):
    """The M x n_tasks GRU heads of M members (eval mode) as one recurrence over batched matrices.

    `EMENet.decode` runs M x 3 `nn.GRU`s, each stepping through the sequence on its own; here
    the input projections of all heads are one batched matrix product, each time step is one
    for all G = M x n_tasks hidden states, and each task's output layer one more. Same gates and
    order as `nn.GRU` (r, z, n; n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h).
    Dropout is off (eval mode); MC dropout needs the members themselves.
    """

    def __init__(self, models: Sequence[EMENet]) -> None:
        super().__init__()
        self.tasks = models[0].tasks
        self.n_members, self.n_tasks = len(models), len(self.tasks)
        self.hidden_size = models[0].config.gru_hidden
        grus = [[m.heads[t.name].gru for t in self.tasks] for m in models]
        outs = [[m.heads[t.name].out for t in self.tasks] for m in models]
        for row in grus:
            for gru in row:
                if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first or not gru.bias:
                    raise InputError("stacked heads need one-layer, one-way, batch-first GRUs with biases")

        def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([t.detach() for t in tensors])

        # Inputs, every task's gates side by side per member: (M, D, n_tasks * 3H), (M, 1, ...).
        self.register_buffer("w_ih", stacked([torch.cat([g.weight_ih_l0 for g in row]).T for row in grus]))
        self.register_buffer("b_ih", stacked([torch.cat([g.bias_ih_l0 for g in row])[None] for row in grus]))
        # Recurrence, one per (member, task) in that order: (G, H, 3H), (G, 1, 3H).
        self.register_buffer("w_hh", stacked([g.weight_hh_l0.T for row in grus for g in row]))
        self.register_buffer("b_hh", stacked([g.bias_hh_l0[None] for row in grus for g in row]))
        for t, task in enumerate(self.tasks):  # outputs per task: (M, H, n_logits), (M, 1, n_logits)
            self.register_buffer(f"w_out_{task.name}", stacked([row[t].weight.T for row in outs]))
            self.register_buffer(f"b_out_{task.name}", stacked([row[t].bias[None] for row in outs]))

    def forward(
        self, features: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Features (M, B, L, D), state (M, n_tasks, B, H) or None (zeros) -> task -> logits
        (M, B, L, n_logits) and the new state (M, n_tasks, B, H)."""
        M, B, L, D = features.shape
        T, H = self.n_tasks, self.hidden_size
        G = M * T
        gates_in = torch.baddbmm(self.b_ih, features.reshape(M, B * L, D), self.w_ih)  # (M, B*L, T*3H)
        # (L, G, B, 3H): each time step's input gates of every head, contiguous.
        gates_in = gates_in.view(M, B, L, T, 3 * H).permute(2, 0, 3, 1, 4).reshape(L, G, B, 3 * H)
        h = features.new_zeros(G, B, H) if hidden is None else hidden.reshape(G, B, H)
        steps = []
        for step in range(L):
            gi = gates_in[step]
            gh = torch.baddbmm(self.b_hh, h, self.w_hh)  # (G, B, 3H)
            rz = torch.sigmoid(gi[..., : 2 * H] + gh[..., : 2 * H])
            r, z = rz[..., :H], rz[..., H:]
            n = torch.tanh(gi[..., 2 * H :] + r * gh[..., 2 * H :])
            h = (1 - z) * n + z * h
            steps.append(h)
        seq = torch.relu(torch.stack(steps, dim=2)).view(M, T, B * L, H)  # (M, T, B*L, H)
        logits = {
            task.name: torch.baddbmm(getattr(self, f"b_out_{task.name}"), seq[:, t],
                                     getattr(self, f"w_out_{task.name}")).view(M, B, L, -1)
            for t, task in enumerate(self.tasks)
        }
        return logits, h.view(M, T, B, H)


class MemberCNNs(nn.Module):
    """M CNNs of one architecture on one shared input, in turn: (N, C, ...) -> (N, M, F), float32
    eval. `fold_bn` folds BatchNorm into the convolutions first (`fold_batch_norm`). Images (4-D
    inputs) run channels-last, as `TorchMember` runs them. Face CNNs that share their lower
    layers (a frozen-backbone run: `shared_tail_blocks`) run those once, then each its own tail.
    """

    def __init__(self, parts: Sequence[nn.Module], fold_bn: bool = False) -> None:
        super().__init__()
        self.n_members = len(parts)
        faces = len(parts) > 1 and all(isinstance(p, MobileFaceNet) for p in parts)
        self.shared_tail = shared_tail_blocks(parts) if faces else None  # None: nothing shared

        def prepared(network: nn.Module) -> nn.Module:
            network = fold_batch_norm(network) if fold_bn else copy.deepcopy(network).eval()
            for parameter in network.parameters():
                parameter.requires_grad_(False)
            return network.to(memory_format=torch.channels_last)

        self.networks = nn.ModuleList([prepared(part) for part in parts])

    def forward(self, x: torch.Tensor, described: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(N, M, F); `described` (face CNNs only): also each member's density inputs (M, N, ...)."""
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        below: list[torch.Tensor] | None = [] if described else None
        if self.shared_tail is not None:
            x = self.networks[0].front(x, self.shared_tail, below)
        features, inputs = [], []
        for network in self.networks:
            statistics = None if below is None else list(below)
            if self.shared_tail is None:
                features.append(network(x, statistics) if described else network(x))
            else:
                features.append(network.tail(x, self.shared_tail, statistics))
            if statistics is not None:
                inputs.append(density_input(features[-1], statistics))
        features = torch.stack(features, dim=1)  # (N, M, F)
        return (features, torch.stack(inputs)) if described else features


HiddenState = torch.Tensor | Sequence[torch.Tensor | None] | None


class StackedMembers:
    """M EMENets of one config as one batched forward, behind `TorchMember`'s NumPy interface.

    Shapes, with M members (the leading axis of everything returned):
    - logits: task -> (M, B, L, n_logits) float32 NumPy; `logits[t][m]` is what member m's
      `TorchMember` returns for task t;
    - hidden: one tensor (M, n_tasks, B, gru_hidden); `hidden[m]` is member m's GRU state. As an
      argument it may also be None (zeros, the start of a video) or a sequence of M per-member
      states (None for zeros);
    - density inputs (`forward_with_features`): (M, B * L, density_dim) float32 NumPy.

    The members' weights are copied at construction (later changes to them are not seen) and
    used in eval mode: BatchNorm with its running statistics, dropout off. With `bf16`, the face
    CNN runs under bf16 autocast; the audio CNN and the GRU heads always run in fp32. `fold_bn` folds
    each BatchNorm into its convolution (`fold_batch_norm`): fewer layer calls, outputs equal up
    to rounding instead of bit for bit. The CNNs run in turn (`MemberCNNs`), the heads as one
    `StackedHeads`. (One network of grouped convolutions over the members' channels side by
    side ran EMENet-V at 0.55x the members' own speed on the 2-core AVX2 machine and was
    dropped; numbers in the module docstring.)

    Measured differences from 5 `TorchMember`s (tiny, demo and EMENet-V, 16 frames): logits
    1.5e-7 fp32 (either layout), 2.6e-6 with `fold_bn`; probabilities 7.4e-3 with `bf16` on
    random members, 0.015 on trained ones (`BF16_TOLERANCE`).
    """

    def __init__(
        self,
        models: Sequence[EMENet],
        device: torch.device | str = "cpu",
        bf16: bool = False,
        fold_bn: bool = False,
    ) -> None:
        if not models:
            raise InputError("stacking needs at least one member")
        config = models[0].config
        for model in models[1:]:
            if model.config != config:
                raise InputError(f"members of one stack need one config, got {config.name!r} and {model.config.name!r}")
        self.config = config
        self.device = torch.device(device)
        self.bf16 = bf16
        self.n_members = len(models)
        self.backbone = MemberCNNs([m.backbone for m in models], fold_bn).to(self.device)
        audio = [m.audio_encoder for m in models]
        self.audio_encoder = MemberCNNs(audio, fold_bn).to(self.device) if config.audio else None
        self.heads = StackedHeads(models).to(self.device)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def encode(self, frames: torch.Tensor, audio: torch.Tensor | None = None,
               described: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, L, 3, S, S) in [0, 1] [+ log-mel (B, L, 64, 64)] -> every member's features
        (M, B, L, D), float32: `EMENet.encode` of each member, in one pass; with `described`,
        also their density inputs (M, B*L, density_dim), as `EMENet.encode_for_density`."""
        B, L = frames.shape[:2]
        x = frames.flatten(0, 1) * 2.0 - 1.0  # (B*L, 3, S, S), as EMENet.encode
        inputs = None
        with self._autocast():
            if described:
                features, inputs = self.backbone(x, described=True)
                features, inputs = features.float(), inputs.float()
            else:
                features = self.backbone(x).float()  # (B*L, M, F)
        if self.audio_encoder is not None:
            # fp32 always: 2.5% of EMENet-VA's multiply-adds, and bf16 there doubled the VA
            # models' probability error.
            sound = self.audio_encoder(audio.flatten(0, 1))  # (B*L, M, A)
            features = torch.cat([features, sound], dim=-1)  # (B*L, M, F+A)
        features = features.movedim(1, 0).unflatten(1, (B, L))  # (M, B, L, D)
        return features if inputs is None else (features, inputs)

    def decode(
        self, features: torch.Tensor, hidden: HiddenState = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Features (M, B, L, D) -> task -> logits (M, B, L, n) and the state (M, n_tasks, B, H)."""
        return self.heads(features, self._state(hidden, features))

    def _state(self, hidden: HiddenState, features: torch.Tensor) -> torch.Tensor | None:
        """`hidden` in any accepted form -> (M, n_tasks, B, H) on the device, or None (zeros)."""
        if hidden is None or isinstance(hidden, torch.Tensor):
            state = hidden
        else:
            if len(hidden) != self.n_members:
                raise InputError(f"expected GRU states for {self.n_members} members, got {len(hidden)}")
            if all(h is None for h in hidden):
                return None
            zeros = features.new_zeros(self.heads.n_tasks, features.shape[1], self.config.gru_hidden)
            state = torch.stack([zeros if h is None else h.to(self.device) for h in hidden])
        expected = (self.n_members, self.heads.n_tasks, features.shape[1], self.config.gru_hidden)
        if state is not None and tuple(state.shape) != expected:
            raise InputError(f"expected a stacked GRU state of shape {expected}, got {tuple(state.shape)}")
        return None if state is None else state.to(self.device)

    def _check(self, frames: np.ndarray, audio: np.ndarray | None) -> None:
        cfg = self.config
        size = cfg.input_size
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise InputError(
                f"model {cfg.name!r} expects frames of shape (B, L, 3, {size}, {size}), got {tuple(frames.shape)}"
            )
        if cfg.audio:
            expected = (*frames.shape[:2], cfg.n_mels, cfg.audio_frames)
            if audio is None or tuple(audio.shape) != expected:
                got = "none" if audio is None else str(tuple(audio.shape))
                raise InputError(f"audio-visual model {cfg.name!r} needs a spectrogram of shape {expected}, got {got}")

    def _inputs(self, frames: np.ndarray, audio: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check(frames, audio)
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)
        sound = None
        if self.config.audio:
            sound = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)
        return x, sound

    @torch.inference_mode()
    def forward_stateful(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: HiddenState
    ) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """frames (B, L, 3, S, S) float32 in [0, 1] -> (task -> logits (M, B, L, n), GRU states
        (M, n_tasks, B, H)); `audio` is ignored by a visual-only config."""
        logits, hidden = self.decode(self.encode(*self._inputs(frames, audio)), hidden)
        return numpy_logits(logits), hidden

    @torch.inference_mode()
    def forward_with_features(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: HiddenState
    ) -> tuple[dict[str, np.ndarray], torch.Tensor, np.ndarray]:
        """As `forward_stateful`, plus every member's density input of every frame,
        (M, B * L, density_dim): the feature-density OOD score's input."""
        features, inputs = self.encode(*self._inputs(frames, audio), described=True)  # (M, B, L, D)
        logits, hidden = self.decode(features, hidden)
        return numpy_logits(logits), hidden, inputs.cpu().numpy()
