"""MTCNN (Zhang, Zhang, Li, Qiao 2016): three small networks that find faces and their five
landmarks, written here in PyTorch with the weights facenet-pytorch 2.6.0 ships (MIT, see weights/).

P-net scans an image pyramid for 12x12 face candidates, R-net re-scores them at 24x24 and O-net at
48x48, where it also places the landmarks. O-net alone, run on last frame's box, is the tracker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from emodistill.data.frontend.face import Box, Face

WEIGHTS = Path(__file__).parent / "weights" / "mtcnn.safetensors"


def _stage(channels: tuple[int, ...], kernels: tuple[int, ...], pools: tuple[int, ...]) -> list[nn.Module]:
    """conv + PReLU (+ max-pool of the given size, stride 2; 0: none) per entry, named as in the
    weight file: conv1, prelu1, pool1, conv2, ..."""
    layers: list[tuple[str, nn.Module]] = []
    for i, (c_in, c_out, k, pool) in enumerate(zip(channels, channels[1:], kernels, pools, strict=False), 1):
        layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, k)), (f"prelu{i}", nn.PReLU(c_out))]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(pool, 2, ceil_mode=True)))
    return layers


class PNet(nn.Module):
    """Fully convolutional: (N, 3, H, W) -> face probability (N, H', W') and box offsets
    (N, 4, H', W'), one 12x12 window every 2 pixels."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _stage((3, 10, 16, 32), (3, 3, 3), (2, 0, 0)):
            self.add_module(name, layer)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in list(self.children())[:-2]:
            x = layer(x)
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """(N, 3, 24, 24) -> face probability (N,) and box offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _stage((3, 28, 48, 64), (3, 3, 2), (3, 3, 0)):
            self.add_module(name, layer)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in list(self.children())[:-4]:
            x = layer(x)  # ends (N, 64, 3, 3)
        x = self.prelu4(self.dense4(x.flatten(1)))  # (N, 128)
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """(N, 3, 48, 48) -> face probability (N,), box offsets (N, 4) and landmarks (N, 10): five x
    then five y, as fractions of the input box."""

    def __init__(self) -> None:
        super().__init__()
        for name, layer in _stage((3, 32, 64, 64, 128), (3, 3, 3, 2), (3, 3, 2, 0)):
            self.add_module(name, layer)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for layer in list(self.children())[:-5]:
            x = layer(x)  # ends (N, 128, 3, 3)
        x = self.prelu5(self.dense5(x.flatten(1)))  # (N, 256)
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _load_nets() -> tuple[PNet, RNet, ONet]:
    state = load_file(str(WEIGHTS))
    nets = PNet(), RNet(), ONet()
    for prefix, net in zip(("pnet.", "rnet.", "onet."), nets, strict=True):
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        net.eval()
    return nets


@contextmanager
def _one_thread() -> Iterator[None]:
    """PyTorch on one thread inside the block, in inference mode. The nets are too small to
    gain from a second thread (38 against 41 ms a 640x480 detection), and on a shared 2-core
    machine a second OpenMP thread waits for a busy core; the setting belongs to the calling
    thread, so a model running in another thread keeps its own."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _normalise(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 in about [-1, 1], as the nets were trained."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.5) * 0.0078125


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices of the boxes (N, 4) x1, y1, x2, y2 kept by greedy non-maximum suppression, best
    first: a box overlapping a better one by more than `threshold` (intersection over union, or
    over the smaller box with `by_min`) is dropped."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        iw = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        base = np.minimum(area[best], area[rest]) if by_min else area[best] + area[rest] - inter
        order = rest[inter <= threshold * base]
    return np.asarray(keep, dtype=np.int64)


def _squared(boxes: np.ndarray) -> np.ndarray:
    """Boxes (N, 4) -> squares with the same centres, on the longer side."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def _regressed(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each box's edges by the net's offsets (N, 4), given as fractions of its size."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes + offsets * size


def patches(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """The square boxes (N, 4) cut out of an (H, W, 3) frame and resized to (N, size, size, 3),
    black beyond the frame."""
    height, width = rgb.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(np.rint(boxes).astype(np.int64)):
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        inside = rgb[max(0, y1):min(height, y2), max(0, x1):min(width, x2)]
        if inside.size == 0:
            continue
        top, left = max(0, -y1), max(0, -x1)
        bottom, right = (y2 - y1) - top - inside.shape[0], (x2 - x1) - left - inside.shape[1]
        square = cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
        shrink = square.shape[0] > size
        out[i] = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out


@dataclass
class MtcnnDetector:
    """Every face of a frame with its five landmarks, by MTCNN's three-stage cascade."""

    name = "mtcnn"
    min_face: int = 20  # smallest face side searched, in pixels of the frame
    # Largest side of the image the pyramid starts from: a larger frame is shrunk to it first,
    # so `min_face` grows with it (640 px: a 4K frame finds faces from about 120 px).
    max_side: int = 640
    factor: float = 0.709  # step between pyramid scales (MTCNN's: the area halves every 2 steps)
    # Probability a candidate needs at each stage: MTCNN's own (0.6, 0.7, 0.7) with O-net's
    # raised. At 0.7 O-net took the collar of the astronaut's suit for a second face (0.85) in
    # frames the tests paste her head into; at 0.9 none was found there, nor in 311 non-face
    # pictures (none at 0.7 either), for 93% of 20 px lfw_subset faces found against 98% (99-100%
    # from 28 px either way) and 83% of simulator frames against 90%.
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9)
    nets: tuple[PNet, RNet, ONet] = field(default_factory=_load_nets, repr=False)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face of an (H, W, 3) uint8 RGB frame, largest first."""
        with _one_thread():
            return self._detect(rgb)

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        shrink = min(1.0, self.max_side / max(height, width))
        image = rgb if shrink == 1.0 else cv2.resize(rgb, (round(width * shrink), round(height * shrink)),
                                                     interpolation=cv2.INTER_AREA)
        boxes = self._proposals(image)
        if len(boxes):
            boxes = self._rescored(image, boxes)
        if not len(boxes):
            return []
        faces = [f for f in self.refine(rgb, boxes / shrink) if f.score >= self.thresholds[2]]
        corners = np.array([[f.box.x, f.box.y, f.box.x + f.box.w, f.box.y + f.box.h] for f in faces]).reshape(-1, 4)
        kept = [faces[i] for i in nms(corners, np.array([f.score for f in faces]), 0.7, by_min=True)]
        return sorted(kept, key=lambda face: -face.box.area)

    def _proposals(self, image: np.ndarray) -> np.ndarray:
        """P-net over the image pyramid: candidate squares (N, 4) in pixels of `image`."""
        pnet = self.nets[0]
        height, width = image.shape[:2]
        scale = 12.0 / self.min_face  # a min_face face becomes P-net's 12 px window
        found_boxes, found_scores = [], []
        level, interpolation = image, cv2.INTER_AREA
        while min(height, width) * scale >= 12:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # Each level from the one before: one averaging shrink from the frame, then steps of
            # 0.709 that linear interpolation does without aliasing (10x faster than shrinking
            # the frame to every level by averaging: 1 against 10 ms at 640x480).
            level = cv2.resize(level, size, interpolation=interpolation)  # (h, w, 3)
            interpolation = cv2.INTER_LINEAR
            probs, offsets = pnet(_normalise(level[None]))  # (1, h', w'), (1, 4, h', w')
            rows, cols = np.nonzero(probs[0].numpy() >= self.thresholds[0])
            if rows.size:
                # Window (row, col) covers 12 px from (2 col, 2 row) of this level.
                corners = np.stack([cols, rows, cols, rows], axis=1) * 2.0 + [0, 0, 12, 12]
                boxes = _regressed(corners / scale, offsets[0].numpy()[:, rows, cols].T)
                scores = probs[0].numpy()[rows, cols]
                keep = nms(corners, scores, 0.5)
                found_boxes.append(boxes[keep])
                found_scores.append(scores[keep])
            scale *= self.factor
        if not found_boxes:
            return np.zeros((0, 4))
        boxes, scores = np.concatenate(found_boxes), np.concatenate(found_scores)
        return _squared(boxes[nms(boxes, scores, 0.7)])

    def _rescored(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-net on the P-net squares: the survivors, regressed and squared (N, 4)."""
        probs, offsets = self.nets[1](_normalise(patches(image, boxes, 24)))
        probs, offsets = probs.numpy(), offsets.numpy()
        passed = probs >= self.thresholds[1]
        boxes, probs, offsets = boxes[passed], probs[passed], offsets[passed]
        keep = nms(boxes, probs, 0.7)
        return _squared(_regressed(boxes[keep], offsets[keep]))

    def refine(self, rgb: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """O-net on squares (N, 4) x1, y1, x2, y2 of an (H, W, 3) frame: one Face per box, in
        order, with O-net's regressed box, landmarks and face probability as its score. The
        tracker calls this on last frame's faces."""
        boxes = _squared(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
        if not len(boxes):
            return []
        with _one_thread():
            probs, offsets, points = (t.numpy() for t in self.nets[2](_normalise(patches(rgb, boxes, 48))))
        side = (boxes[:, 2] - boxes[:, 0])[:, None]  # (N, 1)
        landmarks = np.stack([boxes[:, :1] + side * points[:, :5], boxes[:, 1:2] + side * points[:, 5:]], axis=2)
        regressed = _regressed(boxes, offsets)  # (N, 4)
        return [Face(Box(x1, y1, x2 - x1, y2 - y1), points_, float(prob))
                for (x1, y1, x2, y2), points_, prob in zip(regressed.tolist(), landmarks, probs, strict=True)]
