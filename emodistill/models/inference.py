"""Batched forward passes over a whole split or a stack of images, returning NumPy arrays.

Training validation, soft labels, evaluation and the baselines all go through here, so every
frame is seen the same way (clips of the training length, zero GRU state at each clip).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from emodistill.data.dataset import Split
from emodistill.data.sampler import sequential_clips
from emodistill.models.emenet import EMENet
from emodistill.models.mobilefacenet import density_input, same_tensors

# A model-like callable: (frames (B, L, 3, S, S), audio (B, L, 64, 64) | None) -> task -> (B, L, n).
Forward = Callable[[torch.Tensor, torch.Tensor | None], dict[str, torch.Tensor]]


def frames_to_input(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (..., S, S, 3) RGB -> float (..., 3, S, S) in [0, 1] on `device`."""
    # Writable as well as contiguous: frames read from a cache's read-only memory map are copied
    # (a uint8 copy, a quarter of the float one that follows) rather than shared with PyTorch.
    tensor = torch.from_numpy(np.require(frames, requirements=("C", "W"))).to(device)
    return tensor.movedim(-1, -3).float().div_(255.0)


def audio_to_input(audio: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    """float (..., 64, 64) log-mel -> tensor on `device` (None stays None)."""
    if audio is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(device)


def _over_clips(
    run_clips: Callable[[np.ndarray], dict[str, torch.Tensor]], split: Split, length: int, batch_clips: int
) -> dict[str, np.ndarray]:
    """Call `run_clips(index (B, L))` over every frame of `split` once; task -> (N, n_logits)."""
    n = len(split)
    outputs: dict[str, np.ndarray] = {}
    by_length: dict[int, list[np.ndarray]] = defaultdict(list)
    for clip in sequential_clips(split, length):
        by_length[len(clip)].append(clip)
    for clips in by_length.values():
        for start in range(0, len(clips), batch_clips):
            index = np.stack(clips[start : start + batch_clips])  # (B, L)
            flat = index.reshape(-1)
            for name, values in run_clips(index).items():
                if name not in outputs:  # sized by the model's own heads
                    outputs[name] = np.zeros((n, values.shape[-1]), dtype=np.float32)
                outputs[name][flat] = values.reshape(len(flat), -1).float().cpu().numpy()
    return outputs


@torch.no_grad()
def predict_split(
    forward: Forward,
    split: Split,
    device: torch.device,
    length: int = 16,
    batch_clips: int = 32,
    use_audio: bool = False,
) -> dict[str, np.ndarray]:
    """Run `forward` over every frame of `split` once; task -> (N, n_logits) float32."""

    def run_clips(index: np.ndarray) -> dict[str, torch.Tensor]:
        audio = split.audio[index] if use_audio and split.audio is not None else None
        return forward(frames_to_input(split.frames[index], device), audio_to_input(audio, device))

    return _over_clips(run_clips, split, length, batch_clips)


@torch.no_grad()
def encode_images(
    model: EMENet, images: np.ndarray, device: torch.device, batch: int = 256, tail_blocks: int = 0,
    statistics: list[np.ndarray] | None = None,
) -> np.ndarray:
    """What a frozen backbone caches for each image (N, S, S, 3), with the model in eval mode:
    the features (N, feature_dim) float32, or with `tail_blocks` the maps below the backbone's
    last blocks (N, C, s, s) (`EMENet.encode_front`). With a list `statistics`, the stage
    statistics computed on the way (N, ...) are appended to it as one array.

    The CNN sees each frame alone, so these equal what a full forward pass computes inside.
    """
    model.eval()
    chunks, noted = [], []
    for start in range(0, len(images), batch):
        frames = frames_to_input(np.asarray(images[start : start + batch])[:, None], device)  # (B, 1, ...)
        found: list[torch.Tensor] | None = [] if statistics is not None else None
        chunks.append(model.encode_front(frames, tail_blocks, found)[:, 0].float().contiguous().cpu().numpy())
        if found is not None:
            noted.append(torch.cat(found, 1).cpu().numpy() if found else np.zeros((len(frames), 0), np.float32))
    if statistics is not None:
        statistics.append(np.concatenate(noted) if noted else np.zeros((0, 0), np.float32))
    if not chunks:
        return np.zeros((0, model.config.feature_dim), np.float32)
    return np.concatenate(chunks)


@torch.no_grad()
def density_inputs(
    model: EMENet, images: np.ndarray, device: torch.device, batch: int = 256,
    cached: tuple[np.ndarray, np.ndarray, int] | None = None,
) -> np.ndarray:
    """Each image's density input (N, density_dim) (`EMENet.encode_for_density`), by a full
    pass, or from a `FrozenFront` entry `cached` = (maps, front statistics, tail_blocks): the
    tail only."""
    model.eval()
    if cached is None:
        chunks = [model.encode_for_density(frames_to_input(np.asarray(images[s : s + batch])[:, None], device))[1]
                  .cpu().numpy() for s in range(0, len(images), batch)]
    else:
        maps, front_statistics, tail_blocks = cached
        chunks = []
        for s in range(0, len(maps), batch):
            statistics = [torch.from_numpy(front_statistics[s : s + batch]).to(device)]
            features = model.encode_tail(torch.from_numpy(maps[s : s + batch, None]).to(device), tail_blocks,
                                         statistics)[:, 0]
            chunks.append(density_input(features, statistics).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, model.config.density_dim), np.float32)


def encode_split(
    model: EMENet, split: Split, device: torch.device, batch: int = 256, tail_blocks: int = 0
) -> np.ndarray:
    """`encode_images` of every frame of `split`."""
    return encode_images(model, split.frames, device, batch, tail_blocks)


class FrozenFront:
    """What a frozen backbone computes below the members' trainable tail (`tail_blocks`; 0: the
    whole backbone, features), once for each set of frames a stage needs ("train", "val",
    probe images, ...) and then shared by every member whose front is the same (`covers`).
    Training caches its splits here, evaluation its validation frames and probes."""

    def __init__(self, model: EMENet, tail_blocks: int, device: torch.device) -> None:
        self.model, self.tail_blocks, self.device = model, tail_blocks, device
        self.reference = [t.detach().clone() for t in model.backbone.front_tensors(tail_blocks)]
        self.sets: dict[str, np.ndarray] = {}
        self.statistics: dict[str, np.ndarray] = {}  # the stage statistics below the tail, per set

    def add(self, name: str, images: np.ndarray, statistics: bool = False) -> FrozenFront:
        """Encode images (N, S, S, 3) (or a split's frames) under `name`: (N, D) or (N, C, s, s);
        with `statistics`, keep their stage statistics too (`density_cache`)."""
        noted: list[np.ndarray] | None = [] if statistics else None
        self.sets[name] = encode_images(self.model, images, self.device, tail_blocks=self.tail_blocks,
                                        statistics=noted)
        if noted is not None:
            self.statistics[name] = noted[0]
        return self

    def __getitem__(self, name: str) -> np.ndarray:
        return self.sets[name]

    def density_cache(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """What `density_inputs` needs to finish set `name` (added with `statistics`)."""
        return self.sets[name], self.statistics[name], self.tail_blocks

    def covers(self, models: list[EMENet]) -> bool:
        """True when each model's front has exactly the reference's weights and statistics."""
        return all(same_tensors(model.backbone.front_tensors(self.tail_blocks), self.reference) for model in models)


def decode_cached(
    model: EMENet, cached: torch.Tensor, tail_blocks: int
) -> dict[str, torch.Tensor]:
    """Logits from what `encode_images` cached, (B, L, ...): the backbone's tail and the heads."""
    return model.decode(model.encode_tail(cached, tail_blocks))[0]


@torch.no_grad()
def predict_features(
    model: EMENet,
    features: np.ndarray,
    split: Split,
    device: torch.device,
    length: int = 16,
    batch_clips: int = 32,
    tail_blocks: int = 0,
    decode: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None,
) -> dict[str, np.ndarray]:
    """As `predict_split`, from what `encode_split` cached per frame: the backbone's tail of
    `tail_blocks` blocks (none by default) and the heads; `decode` (cached clips (B, L, ...) ->
    logits) replaces `decode_cached`, as MC dropout's passes do."""

    def run_clips(index: np.ndarray) -> dict[str, torch.Tensor]:
        cached = torch.from_numpy(features[index]).to(device)
        return decode(cached) if decode is not None else decode_cached(model, cached, tail_blocks)

    return _over_clips(run_clips, split, length, batch_clips)


def _over_images(
    run_batch: Callable[[slice], dict[str, torch.Tensor]], n: int, batch_size: int
) -> dict[str, np.ndarray]:
    """Call `run_batch(rows)` (-> task -> (B, 1, n_logits)) over `n` single images in batches;
    task -> (N, n_logits) float32."""
    chunks: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, n, batch_size):
        for name, values in run_batch(slice(start, start + batch_size)).items():
            chunks[name].append(values[:, 0].float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


@torch.no_grad()
def predict_encoded_images(
    model: EMENet, cached: np.ndarray, device: torch.device, tail_blocks: int = 0, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """As `predict_images`, from what `encode_images` cached for each image."""

    def run_batch(rows: slice) -> dict[str, torch.Tensor]:
        return decode_cached(model, torch.from_numpy(cached[rows, None]).to(device), tail_blocks)  # (B, 1, ...)

    return _over_images(run_batch, len(cached), batch_size)


@torch.no_grad()
def predict_images(
    forward: Forward,
    images: np.ndarray,
    device: torch.device,
    audio: np.ndarray | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """Run `forward` on single images as length-1 sequences; task -> (N, n_logits) float32."""

    def run_batch(rows: slice) -> dict[str, torch.Tensor]:
        frames = frames_to_input(images[rows, None], device)  # (B, 1, 3, S, S)
        return forward(frames, None if audio is None else audio_to_input(audio[rows, None], device))

    return _over_images(run_batch, len(images), batch_size)
