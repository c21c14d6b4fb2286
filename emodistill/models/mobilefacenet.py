"""MobileFaceNet (Chen et al. 2018) as the per-frame visual feature extractor of EMENet.

Ends at the global depthwise conv (GDC): the landmark model's final linear + BN are removed,
so a face crop becomes a `feature_dim`-d vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# Bottleneck stages (expansion t, channels c, repeats n, first stride s), Chen et al. Table 1.
# The expansion multiplies a block's input channels.
BOTTLENECKS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
STEM_CHANNELS = 64
BLOCKS = sum(repeats for _, _, repeats, _ in BOTTLENECKS)  # bottleneck blocks of every preset
STRIDE_TWO_LAYERS = 1 + sum(1 for *_, stride in BOTTLENECKS if stride == 2)  # stem + 3 stages


def _stage_ends() -> tuple[int, ...]:
    """Blocks whose output ends a resolution stage: the block before each stride-2 block and the
    last; -1 stands for the stem, whose output is the first stage's."""
    starts, index = [], 0
    for _, _, repeats, stride in BOTTLENECKS:
        if stride == 2:
            starts.append(index)
        index += repeats
    return (*(start - 1 for start in starts), BLOCKS - 1)


# Where the feature-density OOD score reads the image's statistics: the end of each resolution
# stage (112 px input: 56, 28, 14 and 7 px maps).
STAGE_ENDS = _stage_ends()


# What the stage statistics are, stored with every density fitted on them and every ONNX export
# that computes them, so that neither is read with the other's: 1 was the raw standard deviation,
# 2 its logarithm.
STATISTICS_VERSION = 2
SPREAD_FLOOR = 1e-3  # added to a spread before its logarithm (the demo's smallest is about 1e-2)


def stage_statistics(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) maps -> (N, 2C) float32: each channel's mean over the map, then the logarithm of
    its standard deviation (a texture's signature, as style statistics are). A spread is a positive
    scale that varies by factors; on its logarithm a Gaussian finds a map too flat as unusual as
    one too busy, where on the raw spread, bounded by 0, a flat image lies close to every face."""
    maps = maps.float()
    return torch.cat([maps.mean((2, 3)), torch.log(maps.std((2, 3)) + SPREAD_FLOOR)], dim=1)


def density_input(features: torch.Tensor, statistics: list[torch.Tensor]) -> torch.Tensor:
    """What the feature-density OOD score reads of each frame, (N, feature_dim + statistics_dim)
    float32: the visual features (N, feature_dim), then the stage statistics as noted."""
    return torch.cat([features.float(), *statistics], dim=1)


def statistics_dim(width_mult: float = 1.0) -> int:
    """Length of a frame's stage statistics for a backbone of `width_mult`."""
    channels = [scale_channels(STEM_CHANNELS, width_mult)]
    for _, out, repeats, _ in BOTTLENECKS:
        channels += [scale_channels(out, width_mult)] * repeats
    return 2 * sum(channels[end + 1] for end in STAGE_ENDS)


def he_initialise(module: nn.Module) -> None:
    """He initialisation (fan-out) of every convolution in `module`, the MobileNet-family
    default; BatchNorm and PReLU at PyTorch's defaults (BatchNorm's statistics reset too)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.PReLU):
            m.reset_parameters()


class _PReLUFunction(torch.autograd.Function):
    """PReLU whose backward pass is a few plain element-wise ops.

    PyTorch's own CPU backward of PReLU took 1.1-5 ms on the demo's maps, about 40 times its
    forward and a quarter of a pretraining step; this one gives the same gradients (the
    input's bit for bit) 4-6 times faster (`emodistill bench` times a training step with each).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return nn.functional.prelu(x, weight)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        per_channel = weight.numel() > 1
        slope = weight.view((1, -1) + (1,) * (x.dim() - 2)) if per_channel else weight
        positive = torch.ops.aten.threshold_backward(grad, x, 0.0)  # grad where x > 0, else 0 (ReLU's)
        negative = grad - positive  # grad where x <= 0, else exactly 0
        grad_x = torch.addcmul(positive, negative, slope)
        dims = [d for d in range(x.dim()) if d != 1] if per_channel else list(range(x.dim()))
        return grad_x, (negative * x).sum(dims).view_as(weight)


class PReLU(nn.PReLU):
    """`nn.PReLU` (same parameters and checkpoints) with a faster backward pass when training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) and x.dim() >= 2 \
                and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            return _PReLUFunction.apply(x, self.weight)
        return super().forward(x)


def scale_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Channels times the width multiplier, rounded to the nearest multiple of `divisor`."""
    scaled = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    # Never round down by more than 10% (the MobileNet convention).
    return scaled + divisor if scaled < 0.9 * channels * width_mult else scaled


def final_map_size(input_size: int) -> int:
    """Side of the last feature map: each stride-2 3x3 conv (padding 1) maps s to ceil(s / 2)."""
    size = input_size
    for _ in range(STRIDE_TWO_LAYERS):
        size = (size + 1) // 2
    return size


class ConvBN(nn.Module):
    """Conv2d without bias -> BatchNorm -> optional per-channel PReLU.

    Submodule names `conv`, `bn`, `prelu` match the face-landmark checkpoint's blocks.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
        act: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.prelu = PReLU(out_ch) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.expand = ConvBN(in_ch, hidden, 1)
        self.depthwise = ConvBN(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBN(hidden, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """(N, 3, S, S) normalised faces -> (N, feature_dim) features."""

    def __init__(self, input_size: int = 112, width_mult: float = 1.0, feature_dim: int = 512) -> None:
        super().__init__()
        stem = scale_channels(STEM_CHANNELS, width_mult)
        self.stem = ConvBN(3, stem, 3, stride=2)  # (N, 64, S/2, S/2)
        self.stem_dw = ConvBN(stem, stem, 3, groups=stem)
        blocks = []
        in_ch = stem
        for expansion, channels, repeats, stride in BOTTLENECKS:
            out_ch = scale_channels(channels, width_mult)
            for i in range(repeats):
                blocks.append(Bottleneck(in_ch, out_ch, expansion, stride if i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)  # (N, 128, S/16, S/16)
        self.pointwise = ConvBN(in_ch, feature_dim, 1)  # (N, 512, S/16, S/16)
        # Global depthwise conv: one kernel per channel covering the whole map (7x7 at 112),
        # a learned spatial weighting instead of average pooling.
        side = final_map_size(input_size)
        self.gdc = ConvBN(feature_dim, feature_dim, side, groups=feature_dim, padding=0, act=False)

    def forward(self, x: torch.Tensor, statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Features (N, 512); with a list `statistics`, each stage's `stage_statistics` are
        appended to it, shallowest first."""
        x = self._blocks(self._stem(x, statistics), 0, len(self.blocks), statistics)
        return self.gdc(self.pointwise(x)).flatten(1)  # (N, 512)

    def _stem(self, x: torch.Tensor, statistics: list[torch.Tensor] | None) -> torch.Tensor:
        x = self.stem_dw(self.stem(x))
        if statistics is not None and -1 in STAGE_ENDS:
            statistics.append(stage_statistics(x))
        return x

    def _blocks(self, x: torch.Tensor, start: int, stop: int, statistics: list[torch.Tensor] | None) -> torch.Tensor:
        """Blocks `start` .. `stop` - 1 on x, noting the statistics of each stage end among them."""
        for index in range(start, stop):
            x = self.blocks[index](x)
            if statistics is not None and index in STAGE_ENDS:
                statistics.append(stage_statistics(x))
        return x

    def _tail_start(self, blocks: int) -> int:
        """The index of the first of the last `blocks` bottlenecks; ValueError for a count the
        network does not have."""
        if not 0 <= blocks <= len(self.blocks):
            raise ValueError(f"a tail of {blocks} blocks: the network has {len(self.blocks)}")
        return len(self.blocks) - blocks

    def tail_layers(self, blocks: int) -> list[nn.Module]:
        """The last `blocks` bottlenecks and the output layers (1x1, GDC); none for 0 blocks."""
        return [*self.blocks[self._tail_start(blocks) :], self.pointwise, self.gdc] if blocks else []

    def front(self, x: torch.Tensor, tail_blocks: int, statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Everything below the tail of `tail_blocks` blocks: its input maps (N, C, s, s), or the
        features (N, 512) for a tail of 0 blocks. `tail(front(x, n), n)` is `forward(x)`, and
        the statistics the two note, in turn, are those `forward` notes."""
        if not tail_blocks:
            return self(x, statistics)
        return self._blocks(self._stem(x, statistics), 0, self._tail_start(tail_blocks), statistics)

    def tail(self, maps: torch.Tensor, tail_blocks: int, statistics: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The tail of `tail_blocks` blocks on `front`'s output: features (N, 512)."""
        if not tail_blocks:
            return maps.flatten(1)
        maps = self._blocks(maps, self._tail_start(tail_blocks), len(self.blocks), statistics)
        return self.gdc(self.pointwise(maps)).flatten(1)

    def front_tensors(self, tail_blocks: int) -> list[torch.Tensor]:
        """The parameters and buffers that `front(x, tail_blocks)` computes with: two networks
        whose lists are equal compute the same front."""
        tail = {id(t) for layer in self.tail_layers(tail_blocks) for t in [*layer.parameters(), *layer.buffers()]}
        return [t for t in [*self.parameters(), *self.buffers()] if id(t) not in tail]

    def reset_tail(self, tail_blocks: int) -> None:
        """A fresh random initialisation of the tail (from torch's generator), the rest kept."""
        for layer in self.tail_layers(tail_blocks):
            he_initialise(layer)


def shared_tail_blocks(backbones: Sequence[MobileFaceNet]) -> int | None:
    """The shortest tail below which every backbone computes the same front (equal weights and
    statistics): a frozen-backbone run's members share all but their last blocks. 0 when the
    backbones are equal throughout; None when not even the stem is shared."""
    for blocks in range(len(backbones[0].blocks) + 1):
        reference = backbones[0].front_tensors(blocks)
        if all(same_tensors(other.front_tensors(blocks), reference) for other in backbones[1:]):
            return blocks
    return None


def same_tensors(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Two lists of tensors (`front_tensors`) with equal shapes and values, in order."""
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))
