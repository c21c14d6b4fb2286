"""What the benchmark runs on: a generated face video, aligned face crops from it, and run
folders of randomly initialised members (speed does not depend on training)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from skimage import data as skdata

from emodistill.bench.common import FPS
from emodistill.core.checkpoints import save_weights, write_json
from emodistill.methods.training import member_seed
from emodistill.models import PRESETS, build_model
from emodistill.models.batchnorm import reestimate_batchnorm
from emodistill.run import Run, RunConfig, export_run


def face_frame(k: int, n: int, size: tuple[int, int]) -> np.ndarray:
    """Frame k of n: the astronaut's head (skimage) gliding over a grey-blue gradient; in frames
    whose shorter side is under 256 px the head is shrunk to fit it."""
    width, height = size
    patch = skdata.astronaut()[0:256, 96:352]  # (256, 256, 3), the face at (80..176, 64..160)
    side = min(256, width, height)
    if side < 256:
        patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    ramp = np.linspace(60, 200, width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    frame = np.broadcast_to(ramp * [1.0, 1.0, 1.1], (height, width, 3)).clip(0, 255)
    frame = frame.astype(np.uint8)  # (H, W, 3)
    phase = 2 * np.pi * k / max(n, 1)
    left = round((width - side) * (0.5 + 0.4 * np.sin(phase)))
    top = round((height - side) * (0.5 + 0.3 * np.sin(2 * phase)))
    frame[top : top + side, left : left + side] = patch
    return frame


def write_face_video(path: Path, n_frames: int, size: tuple[int, int]) -> Path:
    """H.264 video of `face_frame`s at 25 frames/s, encoded with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(n_frames):
            rgb = face_frame(k, n_frames, size)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def face_crops(video: Path, n: int) -> np.ndarray:
    """The first `n` aligned face crops of the video at 112 px, (n, 112, 112, 3) uint8."""
    from emodistill.data.frontend import FrontEnd, iter_frames

    front, crops = FrontEnd.build(crop_size=112, log=lambda _: None), []
    front.start()
    for frame in iter_frames(video):
        crops += [face.crop for face in front.faces(frame.rgb, frame.index + 1)]
        if len(crops) >= n:
            break
    return np.stack(crops[:n])


def crops_as_input(crops: np.ndarray, size: int, B: int, L: int) -> np.ndarray:
    """B x L face crops resized to `size`, as model input (B, L, 3, size, size) float32 [0, 1]."""
    index = np.arange(B * L) % len(crops)
    resized = [cv2.resize(crops[i], (size, size), interpolation=cv2.INTER_AREA) for i in index]
    frames = np.stack(resized).transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (B*L, 3, S, S)
    return frames.reshape(B, L, 3, size, size)


def clip_batches(model: torch.nn.Module, frames: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The model's arguments for each clip of `frames` (B, L, 3, S, S), one clip at a time, with
    silent audio for an audio-visual model: batches for `reestimate_batchnorm`.

    BatchNorm statistics from real face crops give a fresh model a trained model's activation
    scale: a freshly initialised MobileFaceNet shrinks activations towards 1e-7 by the last
    layer, which no trained model does; timing and quantising such a model would mislead."""
    cfg = model.config
    for clip in torch.from_numpy(frames).split(1):
        audio = torch.zeros(*clip.shape[:2], cfg.n_mels, cfg.audio_frames) if cfg.audio else None
        yield clip, audio


FROZEN_TAIL = 2  # the demo's members: a shared frozen backbone below their own last 2 blocks


def random_run(root: Path, preset: str, members: int, crops: np.ndarray, frozen_tail: int = 0) -> Run:
    """A run folder whose teacher members are randomly initialised, with BatchNorm statistics
    from the face crops and ONNX files exported beside them. With `frozen_tail`, every member is
    member 0 below its own last `frozen_tail` blocks and heads, as `train --freeze-backbone
    --tail-blocks N` makes them."""
    run = Run(root)
    config = run.prepare(RunConfig(data="(none: random weights for the benchmark)",
                                   preset=preset, members=members, generations=0))
    size = PRESETS[preset].input_size
    frames = crops_as_input(crops, size, 2, len(crops) // 2)
    first = None
    for m in range(members):
        seed = member_seed(config.seed, 0, m)
        torch.manual_seed(seed)
        model = build_model(preset)
        if frozen_tail and first is not None:  # member 0's front, so the tail's statistics see its maps
            model.backbone.load_state_dict(first.backbone.state_dict())
            model.backbone.reset_tail(frozen_tail)
        reestimate_batchnorm(model, clip_batches(model, frames))
        if frozen_tail and first is not None:  # the front's statistics too, exactly member 0's
            with torch.no_grad():
                for mine, theirs in zip(model.backbone.front_tensors(frozen_tail),
                                        first.backbone.front_tensors(frozen_tail), strict=True):
                    mine.copy_(theirs)
        first = first or model
        save_weights(run.weights_path(0, m), model)
        write_json(run.record_path(0, m), {"generation": "teacher", "member": m, "seed": seed,
                                           "note": "random initialisation, for the benchmark"})
    export_run(root)
    return run
