"""ONNX export of one member and an ONNX Runtime twin of `EMENet.forward_stateful`.

One file per member: frames [+ audio] + GRU state in, per-task logits, the frames' density
inputs (visual features and stage statistics, the OOD score's input) and the GRU state out,
with dynamic batch and length, so a video can be streamed chunk by chunk like the PyTorch model.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import (
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoSuchFile,
)
from torch import nn

from emodistill.core.checkpoints import atomic_write
from emodistill.core.errors import InputError
from emodistill.models import EMENet, ModelConfig
from emodistill.models.mobilefacenet import STATISTICS_VERSION

OPSET = 17
CONFIG_KEY = "emodistill.model_config"  # ONNX metadata: the member's ModelConfig as JSON
STATISTICS_KEY = "emodistill.statistics_version"  # ONNX metadata: the stage statistics' version
HIDDEN_OUT = "hidden_out"  # the last ONNX output, the GRU state
FEATURES_OUT = "features"  # the output before it, each frame's density input; the ones before are the logits
_ORT_LOAD_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile)


class _ExportWrapper(nn.Module):
    """Positional inputs and a flat output tuple, the shape `torch.onnx.export` traces."""

    def __init__(self, model: EMENet) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        audio, hidden = rest if len(rest) == 2 else (None, rest[0])
        features, described = self.model.encode_for_density(frames, audio)  # (B, L, D), (B * L, density_dim)
        logits, hidden = self.model.decode(features, hidden)
        return (*(logits[t.name] for t in self.model.tasks), described, hidden)


def input_names(config: ModelConfig) -> list[str]:
    """ONNX input names of a member: frames, audio (audio-visual models only), hidden."""
    return ["frames", *(["audio"] if config.audio else []), "hidden"]


def export_member(model: EMENet, path: Path) -> Path:
    """Write `model` (in eval mode) as an ONNX file at `path`, atomically; returns `path`.

    The graph includes the model's input normalisation, so it takes frames in [0, 1] like the
    PyTorch model. Batch and length are dynamic; the GRU state is an explicit input and output.
    """
    config = model.config
    size, B, L = config.input_size, 2, 3  # any probe sizes: both axes are exported as dynamic
    frames = torch.rand(B, L, 3, size, size)
    audio = torch.randn(B, L, config.n_mels, config.audio_frames) if config.audio else None
    hidden = torch.zeros(len(model.tasks), B, config.gru_hidden)
    args = tuple(x for x in (frames, audio, hidden) if x is not None)
    names = input_names(config)
    clip_axes = {0: "batch", 1: "length"}
    dynamic_axes = {name: clip_axes for name in names if name != "hidden"}
    outputs = [*model.tasks.names, FEATURES_OUT, HIDDEN_OUT]  # the task names name the logits
    dynamic_axes |= {name: clip_axes for name in model.tasks.names}
    dynamic_axes[FEATURES_OUT] = {0: "frames"}  # (B * L, density_dim)
    dynamic_axes |= {"hidden": {1: "batch"}, HIDDEN_OUT: {1: "batch"}}
    # Export a plain-layout copy: ONNX convolutions are NCHW, and ONNX Runtime picks its own
    # blocked layout; a channels_last source only adds transposes to the graph.
    wrapper = _ExportWrapper(_contiguous_copy(model)).eval()

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # Expected warnings: the legacy exporter is chosen on purpose (the new one needs
            # onnxscript); the GRU's own shape checks are traced as constants, and a GRU traced
            # at batch 2 is said to fail at other batch sizes unless its initial state is an
            # input, which `hidden` is (tests run other batch sizes and lengths).
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                    module="torch.nn.modules.rnn")
            warnings.filterwarnings("ignore", message=".*batch_size other than 1.*GRU")
            torch.onnx.export(
                wrapper, args, str(tmp), input_names=names, output_names=outputs,
                dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False,
            )
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {CONFIG_KEY: json.dumps(asdict(config)),
                                            STATISTICS_KEY: str(STATISTICS_VERSION)})
        onnx.save(graph, str(tmp))

    path = Path(path)
    atomic_write(path, write)
    return path


def _contiguous_copy(model: EMENet) -> EMENet:
    """An eval-mode copy of `model` with contiguous (NCHW) weights, leaving `model` untouched."""
    copy = EMENet(model.config, model.tasks)
    copy.load_state_dict({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    return copy.eval()


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime settings: all graph optimisations, `threads` intra-op threads, lean memory."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1  # the graph is a chain: parallel branches gain nothing
    # Idle workers sleep instead of spinning: on a 2-core machine a spinning pool steals the
    # cores from video decoding, face detection and the other members between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No per-session memory arena: each member's session would keep its own largest-ever
    # activations (5 members at 8 x 16 frames of 112 px: 3.9 GB instead of 1.6 GB), and with
    # the tuned allocator (runtime.tune_allocator) freed buffers are reused just as fast.
    options.enable_cpu_mem_arena = False
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class OnnxMember:
    """One exported member run by ONNX Runtime, with the PyTorch model's streaming interface."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except _ORT_LOAD_ERRORS as error:
            raise InputError(f"{self.path} is not a loadable ONNX model ({error})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        stored = metadata.get(CONFIG_KEY)
        if stored is None:
            raise InputError(f"{self.path} was not exported by emodistill (no model config inside)")
        self.config = ModelConfig(**json.loads(stored))
        self.outputs = [o.name for o in self.session.get_outputs()]  # the tasks' logits, FEATURES_OUT, HIDDEN_OUT
        # A file exported before the features were an output has the logits and the state only;
        # one exported before the stage statistics has the visual features only, and one of an
        # earlier version of them says so (or nothing).
        shape = {o.name: o.shape for o in self.session.get_outputs()}.get(FEATURES_OUT)
        self.has_features = (shape is not None and shape[-1] == self.config.density_dim
                             and metadata.get(STATISTICS_KEY) == str(STATISTICS_VERSION))
        self.logit_names = [o for o in self.outputs if o not in (FEATURES_OUT, HIDDEN_OUT)]
        self.n_tasks = len(self.logit_names)

    def forward_with_features(
        self, frames: np.ndarray, audio: np.ndarray | None, hidden: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """As `forward_stateful`, plus every frame's density input (B * L, density_dim)."""
        outputs = self._run(frames, audio, hidden)
        features = outputs[FEATURES_OUT]
        return {n: outputs[n] for n in self.logit_names}, outputs[HIDDEN_OUT], features.reshape(-1, features.shape[-1])

    def forward_stateful(self, frames: np.ndarray, audio: np.ndarray | None = None,
                         hidden: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """frames (B, L, 3, S, S) float32 in [0, 1] [+ audio (B, L, 64, 64)], GRU state
        (n_tasks, B, H) or None for zeros -> ({task: (B, L, n_logits)}, state (n_tasks, B, H))."""
        outputs = self._run(frames, audio, hidden)
        return {n: outputs[n] for n in self.logit_names}, outputs[HIDDEN_OUT]

    def _run(self, frames: np.ndarray, audio: np.ndarray | None, hidden: np.ndarray | None) -> dict[str, np.ndarray]:
        """Every output of the session by name, for checked inputs."""
        cfg = self.config
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        if frames.ndim != 5 or frames.shape[2:] != (3, cfg.input_size, cfg.input_size):
            raise InputError(
                f"{self.path.name} expects frames of shape (B, L, 3, {cfg.input_size}, "
                f"{cfg.input_size}), got {frames.shape}"
            )
        B = frames.shape[0]
        if hidden is None:
            hidden = np.zeros((self.n_tasks, B, cfg.gru_hidden), np.float32)
        feeds = {"frames": frames, "hidden": np.ascontiguousarray(hidden, dtype=np.float32)}
        if cfg.audio:
            if audio is None:
                raise InputError(
                    f"{self.path.name} is audio-visual and needs a spectrogram, got none"
                )
            feeds["audio"] = np.ascontiguousarray(audio, dtype=np.float32)
        try:
            values = self.session.run(self.outputs, feeds)
        except (InvalidArgument, Fail) as error:
            raise InputError(f"{self.path.name} cannot take these inputs ({error})") from None
        return dict(zip(self.outputs, values, strict=True))

    def forward(self, frames: np.ndarray, audio: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Logits from a zero GRU state, as `EMENet.forward`."""
        return self.forward_stateful(frames, audio)[0]
