"""Loading a pretrained MobileFaceNet backbone into an EMENet, without running any code.

Two layouts: this backbone's own state_dict keys (safetensors or PyTorch file), or the 68-point
face-landmark MobileFaceNet of `cunjian/pytorch_face_landmark` (the paper's pretraining).
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from emodistill.core.errors import InputError
from emodistill.models.emenet import EMENet

# The landmark model names its 15 bottlenecks by stage: a strided first block, then a
# `Residual` stage whose blocks sit in `.model`; they map in order onto `blocks.0` .. `blocks.14`.
LANDMARK_BLOCKS: tuple[str, ...] = (
    "conv_23",
    *(f"conv_3.model.{i}" for i in range(4)),
    "conv_34",
    *(f"conv_4.model.{i}" for i in range(6)),
    "conv_45",
    *(f"conv_5.model.{i}" for i in range(2)),
)
# Inside a landmark bottleneck: expansion `conv`, depthwise `conv_dw`, projection `project`.
LANDMARK_BLOCK_PARTS = {"conv": "expand", "conv_dw": "depthwise", "project": "project"}
LANDMARK_PREFIXES: dict[str, str] = {
    "conv1": "stem",
    "conv2_dw": "stem_dw",
    **{
        f"{landmark}.{part}": f"blocks.{i}.{ours}"
        for i, landmark in enumerate(LANDMARK_BLOCKS)
        for part, ours in LANDMARK_BLOCK_PARTS.items()
    },
    "conv_6_sep": "pointwise",
    "output_layer.conv_6_dw": "gdc",
}
# The landmark regression layers after the GDC (512 -> 136 linear + BN); EMENet drops them.
LANDMARK_DROPPED = ("output_layer.linear.", "output_layer.bn.")
SHOWN_KEYS = 3  # offending keys named in an error message


def load_backbone_weights(model: EMENet, path: Path) -> None:
    """Copy a MobileFaceNet checkpoint into `model.backbone` (all keys and shapes must match)."""
    path = Path(path)
    state = _read_state_dict(path)
    if any(key.startswith("conv1.") for key in state):
        state = _from_landmark_layout(state)
    expected = model.backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    name = model.config.name
    for keys, problem in (
        (missing, f"is missing {len(missing)} of model {name!r}'s backbone keys"),
        (unexpected, f"has {len(unexpected)} keys that model {name!r}'s backbone lacks"),
        (mismatched, f"has {len(mismatched)} tensors shaped unlike model {name!r}'s"),
    ):
        if keys:
            raise InputError(f"{path}: backbone checkpoint {problem}, e.g. {', '.join(keys[:SHOWN_KEYS])}")
    model.backbone.load_state_dict(state)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by key from a safetensors file or a weights-only PyTorch file."""
    if not path.is_file():
        raise InputError(f"{path}: backbone checkpoint not found")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception:  # not safetensors: try the PyTorch format below
        pass
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # PyTorch's own message suggests weights_only=False, which would run the file's code.
        raise InputError(
            f"{path}: not a readable safetensors or weights-only PyTorch checkpoint (corrupt, "
            "or holding objects other than tensors)"
        ) from None
    # Training scripts save {"state_dict": ..., "epoch": ...}; DataParallel prefixes "module.".
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{path}: expected a state_dict of tensors by name, got {type(loaded).__name__}")
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _from_landmark_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename landmark-model keys to this backbone's; unknown keys pass through unchanged."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(LANDMARK_DROPPED):
            continue
        module, _, leaf = key.rpartition(".")  # e.g. "conv_4.model.5.conv_dw.bn", "running_mean"
        prefix, _, layer = module.rpartition(".")  # "conv_4.model.5.conv_dw", "bn"
        ours = LANDMARK_PREFIXES.get(prefix)
        renamed[f"{ours}.{layer}.{leaf}" if ours else key] = value
    return renamed
