"""EMENet (paper Sec. 3.2, Fig. 2): per-frame CNN features -> one GRU head per emotion task.

Presets by name (`build_model`), and parameter / multiply-add counts to compare with the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from emodistill.core.errors import InputError
from emodistill.models.marblenet import MarbleNet
from emodistill.models.mobilefacenet import MobileFaceNet, density_input, he_initialise, statistics_dim
from emodistill.tasks import PAPER_TASKS, TaskSet

MODALITIES = ("v", "va")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes an EMENet's shape; stored with every checkpoint."""

    name: str  # preset name
    input_size: int  # side of the square RGB face crop in pixels
    width_mult: float = 1.0  # MobileFaceNet channel multiplier (channels rounded to multiples of 8)
    feature_dim: int = 512  # visual feature per frame (output of the global depthwise conv)
    audio: bool = False  # True: MarbleNet audio branch, the "VA" model
    audio_dim: int = 128  # audio feature per frame (MarbleNet filters scale with it)
    n_mels: int = 64  # spectrogram mel bands (audio input is (B, L, n_mels, audio_frames))
    audio_frames: int = 64  # spectrogram time steps, 10 ms apart
    gru_hidden: int = 128  # hidden size of each task's GRU
    dropout: float = 0.5  # dropout on the heads' input features (also used by MC Dropout)

    @property
    def modality(self) -> str:
        return "va" if self.audio else "v"

    @property
    def head_input_dim(self) -> int:
        return self.feature_dim + (self.audio_dim if self.audio else 0)

    @property
    def density_dim(self) -> int:
        """Length of a frame's density input (`EMENet.encode_for_density`)."""
        return self.feature_dim + statistics_dim(self.width_mult)


PRESETS: dict[str, ModelConfig] = {
    # The paper's models: 112x112 faces, full-width MobileFaceNet.
    "emenet-v": ModelConfig("emenet-v", input_size=112),
    "emenet-va": ModelConfig("emenet-va", input_size=112, audio=True),
    # Full-width network on 64x64 crops: about 3x cheaper per frame on a CPU.
    "small": ModelConfig("small", input_size=64),
    # The 2-core demo: 20 members trained in about 10 minutes.
    "demo": ModelConfig("demo", input_size=48, width_mult=0.5, feature_dim=256, audio_dim=64, gru_hidden=64),
    # Unit tests: a forward + backward in milliseconds.
    "tiny": ModelConfig("tiny", input_size=32, width_mult=0.25, feature_dim=64, audio_dim=32, gru_hidden=32),
}


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask comes from `torch.rand_like`: on a CPU, `bernoulli_` (torch's own
    draw) took about three times as long, a twentieth of a frozen-backbone member's step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * keep.mul_(1.0 / (1.0 - self.p))


class TaskHead(nn.Module):
    """Dropout -> GRU -> ReLU -> Linear for one task (paper Sec. 3.2)."""

    def __init__(self, in_dim: int, hidden: int, n_logits: int, dropout: float) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)  # a module, so MC Dropout can switch it on alone
        self.gru = nn.GRU(in_dim, hidden, num_layers=1, batch_first=True)
        self.out = nn.Linear(hidden, n_logits)

    def forward(self, features: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, L, D), hidden (1, B, H) -> logits (B, L, n_logits), hidden (1, B, H)."""
        seq, hidden = self.gru(self.dropout(features), hidden)  # (B, L, H)
        return self.out(torch.relu(seq)), hidden


class EMENet(nn.Module):
    """Frames (B, L, 3, S, S) in [0, 1] [+ log-mel (B, L, 64, 64)] -> logits per task.

    One head per task of `tasks` (the run's task set: 7 or 8 expressions, say), in its order.
    """

    def __init__(self, config: ModelConfig, tasks: TaskSet = PAPER_TASKS) -> None:
        super().__init__()
        self.config = config
        self.tasks = tasks
        self.backbone = MobileFaceNet(config.input_size, config.width_mult, config.feature_dim)
        self.audio_encoder = MarbleNet(config.n_mels, config.audio_dim) if config.audio else None
        self.heads = nn.ModuleDict(
            {t.name: TaskHead(config.head_input_dim, config.gru_hidden, t.n_logits, config.dropout) for t in tasks}
        )
        he_initialise(self)

    def forward(self, frames: torch.Tensor, audio: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits {"AU": (B, L, 12), "EXPR": (B, L, 7 or 8), "VA": (B, L, 40)} from a zero GRU state.

        `audio` is ignored by a visual-only model.
        """
        return self.forward_stateful(frames, audio)[0]

    def forward_stateful(
        self,
        frames: torch.Tensor,
        audio: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """As `forward`, carrying the GRU state (n_tasks, B, gru_hidden) from chunk to chunk.

        `hidden` None means zeros (the start of a video); the returned state continues it.
        """
        if not torch.jit.is_tracing():
            self._check_inputs(frames, audio, hidden)
        return self.decode(self.encode(frames, audio), hidden)

    def _backbone_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, L, 3, S, S) in [0, 1] -> (B*L, 3, S, S) in [-1, 1], in the CNN's memory format."""
        x = frames.flatten(0, 1) * 2.0 - 1.0  # (x - 0.5) / 0.5
        if self.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def encode(self, frames: torch.Tensor, audio: torch.Tensor | None = None,
               statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Per-frame features (B, L, 512 [+128]): the CNNs, batched over all B*L frames; the
        backbone's stage statistics (B*L, ...) appended to `statistics` when given."""
        B, L = frames.shape[0], frames.shape[1]
        features = self.backbone(self._backbone_input(frames), statistics).unflatten(0, (B, L))  # (B, L, 512)
        if self.audio_encoder is not None:
            sound = self.audio_encoder(audio.flatten(0, 1)).unflatten(0, (B, L))  # (B, L, 128)
            features = torch.cat([features, sound], dim=-1)  # (B, L, 640)
        return features

    def encode_for_density(self, frames: torch.Tensor, audio: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode`'s features (B, L, D) and each frame's density input (B*L, density_dim):
        its visual features, then the backbone's stage statistics (`mobilefacenet.density_input`)."""
        statistics: list[torch.Tensor] = []
        features = self.encode(frames, audio, statistics)
        return features, density_input(features[..., : self.config.feature_dim].flatten(0, 1), statistics)

    def encode_front(self, frames: torch.Tensor, tail_blocks: int,
                     statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
        """What a frozen backbone caches per frame (visual only): the maps below its last
        `tail_blocks` blocks (B, L, C, s, s), or the features (B, L, 512) for 0 blocks; the
        stage statistics below the tail (B*L, ...) appended to `statistics` when given."""
        B, L = frames.shape[0], frames.shape[1]
        return self.backbone.front(self._backbone_input(frames), tail_blocks, statistics).unflatten(0, (B, L))

    def encode_tail(self, cached: torch.Tensor, tail_blocks: int,
                    statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Features (B, L, 512) from `encode_front`'s output: `encode` = `encode_tail(encode_front)`;
        the tail's stage statistics appended to `statistics` when given."""
        if not tail_blocks:
            return cached
        B, L = cached.shape[0], cached.shape[1]
        return self.backbone.tail(cached.flatten(0, 1), tail_blocks, statistics).unflatten(0, (B, L))

    def decode(
        self, features: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Features (B, L, D) -> logits per task and the new GRU state (n_tasks, B, H).

        All dropout lives here (on the head inputs), so MC dropout can encode once and decode
        many times.
        """
        B = features.shape[0]
        if hidden is None:
            hidden = features.new_zeros(len(self.tasks), B, self.config.gru_hidden)
        logits, states = {}, []
        for i, task in enumerate(self.tasks):
            logits[task.name], state = self.heads[task.name](features, hidden[i : i + 1])
            states.append(state)
        return logits, torch.cat(states)  # (n_tasks, B, H)

    def _check_inputs(self, frames: torch.Tensor, audio: torch.Tensor | None, hidden: torch.Tensor | None) -> None:
        """One-sentence InputError for any input the model cannot take."""
        cfg = self.config
        size = cfg.input_size
        if frames.dim() != 5 or tuple(frames.shape[2:]) != (3, size, size):
            raise InputError(
                f"model {cfg.name!r} expects frames of shape (B, L, 3, {size}, {size}), got {tuple(frames.shape)}"
            )
        if not frames.is_floating_point():
            raise InputError(f"model {cfg.name!r} expects float frames in [0, 1], got {frames.dtype}")
        B, L = frames.shape[:2]
        if cfg.audio:
            expected = (B, L, cfg.n_mels, cfg.audio_frames)
            if audio is None:
                raise InputError(
                    f"audio-visual model {cfg.name!r} needs a spectrogram of shape "
                    f"{expected} beside the frames, got none"
                )
            if tuple(audio.shape) != expected:
                raise InputError(
                    f"model {cfg.name!r} expects audio of shape {expected} (B, L, mels, time), got {tuple(audio.shape)}"
                )
        if hidden is not None and tuple(hidden.shape) != (len(self.tasks), B, cfg.gru_hidden):
            raise InputError(
                f"model {cfg.name!r} expects a GRU state of shape "
                f"{(len(self.tasks), B, cfg.gru_hidden)}, got {tuple(hidden.shape)}"
            )


def build_model(preset: str | ModelConfig, modality: str | None = None, tasks: TaskSet = PAPER_TASKS) -> EMENet:
    """A freshly initialised EMENet from a preset name or config with one head per task of
    `tasks` (default the paper's 2021 set); modality "v"/"va" overrides the preset's."""
    if isinstance(preset, ModelConfig):
        config = preset
    elif preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise InputError(f"unknown model preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if modality is not None:
        if modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
        config = replace(config, audio=modality == "va")
    return EMENet(config, tasks)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def count_macs(config_or_model: ModelConfig | EMENet) -> int:
    """Forward multiply-adds for one frame (one RGB crop, plus one spectrogram for VA models).

    Counted from the layer shapes while a probe frame passes: conv = output elements x
    (in_ch / groups) x kernel area; linear = outputs x inputs; GRU = 3 (in x h + h x h) per
    step. BatchNorm, PReLU, ReLU, biases and additions count 0 (BatchNorm folds into the
    convolution at inference).
    """
    is_config = isinstance(config_or_model, ModelConfig)
    model = EMENet(config_or_model) if is_config else config_or_model
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor | tuple) -> None:
        nonlocal total
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            kernel = module.weight[0].numel()  # (in_ch / groups) x kernel area
            total += output.numel() * kernel
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.GRU):
            steps = inputs[0].shape[0] * inputs[0].shape[1]
            total += steps * 3 * (module.input_size + module.hidden_size) * module.hidden_size

    counted = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.GRU)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, counted)]
    cfg = model.config
    device = next(model.parameters()).device
    frames = torch.zeros(1, 1, 3, cfg.input_size, cfg.input_size, device=device)
    audio = torch.zeros(1, 1, cfg.n_mels, cfg.audio_frames, device=device) if cfg.audio else None
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(frames, audio)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def presets_table() -> str:
    """Plain-text table of every preset: modality, input size, parameters, MACs per frame."""
    header = ("preset", "modality", "input", "width", "params", "MACs/frame")
    rows = [header]
    for name, config in PRESETS.items():
        model = EMENet(config)
        rows.append(
            (
                name,
                config.modality.upper(),
                f"{config.input_size}x{config.input_size}",
                f"{config.width_mult:g}",
                _millions(count_parameters(model)),
                _millions(count_macs(model)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
