"""MarbleNet 3x2x64 (Jia et al. 2021): the audio feature extractor of EMENet-VA.

1D time-channel separable convolutions over a log-mel spectrogram, mean over time -> one vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    """One MarbleNet block: `repeat` sub-blocks of the same conv, optionally with a residual."""

    filters: int  # output channels at full width (audio_dim 128)
    kernel: int  # temporal kernel size
    repeat: int  # sub-blocks: conv -> BN -> ReLU each
    residual: bool  # 1x1 conv + BN of the block input added before the last ReLU
    dilation: int = 1
    separable: bool = True  # depthwise over time + pointwise over channels, else a plain conv


# Config 3x2x64: prologue, three residual blocks of two sub-blocks with 64 filters, epilogue.
MARBLENET_3X2X64: tuple[BlockSpec, ...] = (
    BlockSpec(128, 11, 1, residual=False),
    BlockSpec(64, 13, 2, residual=True),
    BlockSpec(64, 15, 2, residual=True),
    BlockSpec(64, 17, 2, residual=True),
    BlockSpec(128, 29, 1, residual=False, dilation=2),
    BlockSpec(128, 1, 1, residual=False, separable=False),
)
FULL_WIDTH = 128  # the last block's filters in the paper's config


class ConvBN1d(nn.Module):
    """(Separable) Conv1d without bias -> BatchNorm; the length is kept ('same' padding)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, dilation: int, separable: bool) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        if separable:
            self.conv = nn.Sequential(
                nn.Conv1d(
                    in_ch,
                    in_ch,
                    kernel,
                    padding=padding,
                    dilation=dilation,
                    groups=in_ch,
                    bias=False,
                ),
                nn.Conv1d(in_ch, out_ch, 1, bias=False),
            )
        else:
            self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class MarbleBlock(nn.Module):
    """`repeat` x (conv -> BN -> ReLU), the last ReLU after adding the residual branch."""

    def __init__(self, in_ch: int, out_ch: int, spec: BlockSpec) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvBN1d(in_ch if i == 0 else out_ch, out_ch, spec.kernel, spec.dilation, spec.separable)
            for i in range(spec.repeat)
        )
        self.residual = ConvBN1d(in_ch, out_ch, 1, 1, separable=False) if spec.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(out)
            if i < len(self.convs) - 1:
                out = torch.relu(out)
        if self.residual is not None:
            out = out + self.residual(x)
        return torch.relu(out)


class MarbleNet(nn.Module):
    """(N, n_mels, frames) log-mel -> (N, out_dim); filters scale with out_dim / 128."""

    def __init__(self, n_mels: int = 64, out_dim: int = FULL_WIDTH) -> None:
        super().__init__()
        blocks = []
        in_ch = n_mels
        for spec in MARBLENET_3X2X64:
            out_ch = max(1, spec.filters * out_dim // FULL_WIDTH)
            blocks.append(MarbleBlock(in_ch, out_ch, spec))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=-1)  # (N, 128, T) -> (N, 128)
