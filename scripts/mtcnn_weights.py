"""Convert MTCNN's weights from the facenet-pytorch 2.6.0 wheel (MIT) into the safetensors file
shipped in emodistill/data/frontend/weights/ (run once; the package never needs the wheel).

    pip download facenet-pytorch==2.6.0 --no-deps -d /tmp/wheel
    python scripts/mtcnn_weights.py /tmp/wheel/facenet_pytorch-2.6.0-py3-none-any.whl

The wheel keeps each network as a PyTorch state dict (`data/pnet.pt`, `rnet.pt`, `onet.pt`),
read here with `weights_only=True` (plain tensors, no code). Its R- and O-net flatten their last
feature map in (width, height, channel) order, a legacy of the Caffe original; the first dense
layer's columns are reordered here so that a plain (channel, height, width) flatten gives the
same outputs.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "emodistill" / "data" / "frontend" / "weights" / "mtcnn.safetensors"
# The first dense layer of each network that flattens a feature map, and that map's (C, H, W).
FLATTENED = {"rnet": ("dense4", (64, 3, 3)), "onet": ("dense5", (128, 3, 3))}


def convert(wheel: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    with zipfile.ZipFile(wheel) as archive:
        for net in ("pnet", "rnet", "onet"):
            data = archive.read(f"facenet_pytorch/data/{net}.pt")
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
            if net in FLATTENED:
                layer, (C, H, W) = FLATTENED[net]
                weight = state[f"{layer}.weight"]  # (out, W*H*C), columns in (w, h, c) order
                state[f"{layer}.weight"] = weight.reshape(-1, W, H, C).permute(0, 3, 2, 1).reshape(len(weight), -1)
            tensors |= {f"{net}.{name}": value.float().contiguous() for name, value in state.items()}
    return tensors


if __name__ == "__main__":
    save_file(convert(Path(sys.argv[1])), str(OUT), metadata={"source": "facenet-pytorch 2.6.0 (MIT)"})
    print(f"wrote {OUT}")
