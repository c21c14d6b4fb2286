"""`Predictor`: a trained generation of a run -> one row of emotions per frame, each with how
sure the model is (paper Fig. 1 as a product).

Per frame: AU probabilities, expression, valence/arousal, the normalised entropy of each task
(split into aleatoric and epistemic parts for an ensemble, Eq. 14) and an out-of-domain flag from
the distance of the frame's features to the training frames' (one member or many). The run's
evaluation stores what the probabilities are calibrated with and what the flag is thresholded at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from emodistill.core.errors import InputError
from emodistill.core.runtime import resolve_device
from emodistill.data.audio import SAMPLE_RATE, decode_audio, silence
from emodistill.data.faces import EyeLocator, make_detector
from emodistill.data.media import FaceTracker, prefetch
from emodistill.evaluation.calibration import Calibration
from emodistill.evaluation.density import EnsembleDensity
from emodistill.models import PRESETS
from emodistill.models.members import SeparateMembers
from emodistill.models.speed import Levers, StackedMembers, torch_threads
from emodistill.predict.columns import PARTS, FramePrediction, frame_row, output_columns, python_value, summarise
from emodistill.predict.sources import (
    AudioTrack,
    Frame,
    FrameSequence,
    Source,
    array_frames,
    as_source,
    crop_frames,
    image_frames,
    video_frames,
)
from emodistill.predict.tables import table
from emodistill.run import generation_name, open_run


def count(n: int, noun: str) -> str:
    """"1 member", "5 members"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


class Predictor:
    """A trained generation of a run, ready to predict emotions frame by frame."""

    def __init__(
        self,
        run: Path | str,
        generation: str | int | None = None,
        members: int | None = None,
        backend: str = "torch",
        device: str = "auto",
        batch_frames: int = 16,
        log: Callable[[str], None] = print,
        detector: str | None = None,
        landmarks: Path | str | None = None,
        levers: Levers | None = None,
    ):
        """`generation`: teacher, studentK or K (default: the last finished one); `members`:
        use the first N members (default all); `batch_frames`: frames per forward pass;
        `detector`: dlib or haar (default dlib, Haar when dlib is missing); `landmarks`: a dlib
        shape model file, to align crops by the eyes; `levers`: the speed levers (default
        `Levers.auto()`: the ones whose outputs match the plain path within their tolerances;
        `Levers()` is the plain fp32 path)."""
        self.run, wanted = open_run(run, generation)
        self.config = self.run.config()
        self.tasks = self.config.task_set  # the run's tasks and output names (EXPR_Other in 8-class runs)
        if batch_frames < 1:
            raise InputError(f"batch_frames must be 1 or more, got {batch_frames}")
        self.log = log
        self._said: set[str] = set()
        self.batch_frames = batch_frames
        self.generation = self.run.finished_generation(wanted)
        self.n_members = self._pick_members(members)
        self.device = resolve_device(device)
        self.input_size = PRESETS[self.config.preset].input_size
        self.density = self._stored("feature density", self.run.density_path(self.generation), EnsembleDensity.load,
                                    "no OOD score")
        self.ood_threshold = None if self.density is None else self.density.threshold_for(self.n_members)
        self.calibration = self._stored("calibration", self.run.calibration_path(self.generation),
                                        lambda path: Calibration.load(path, self.tasks), "uncalibrated probabilities")
        self.levers = self._auto_levers() if levers is None else levers
        self.members = self._ensemble(backend)
        self.audio = self.config.modality == "va"
        self.detector = make_detector(detector, log=log)
        self.eyes = None if landmarks is None else EyeLocator(Path(landmarks))

    @property
    def name(self) -> str:
        """Run, generation and member count, e.g. "run/student2 (5 members)"."""
        return f"{self.run.root.name}/{generation_name(self.generation)} ({count(self.n_members, 'member')})"

    @property
    def bf16(self) -> bool:
        """Whether the members really run in bf16 (the lever, on the PyTorch backend)."""
        return isinstance(self.members, StackedMembers) and self.members.bf16

    @property
    def ensemble(self) -> bool:
        return self.n_members > 1

    def _ensemble(self, backend: str) -> SeparateMembers | StackedMembers:
        """The members as one ensemble: batched (PyTorch with a model lever on) or in turn."""
        levers = self.levers
        if backend == "torch" and (levers.batched or levers.fold_bn or levers.bf16):
            models = [self.run.load_member(self.generation, m, self.device) for m in range(self.n_members)]
            return StackedMembers(models, self.device, bf16=levers.bf16, fold_bn=levers.fold_bn)
        return SeparateMembers(self.run.members(self.generation, self.n_members, backend, self.device,
                                                log=self._say))

    def _auto_levers(self) -> Levers:
        """`Levers.auto()`; bf16 only on a CPU, whose flags say it multiplies bf16 natively (a
        GPU's are not what was measured)."""
        return Levers.auto(bf16=False) if self.device.type != "cpu" else Levers.auto()

    def _pick_members(self, members: int | None) -> int:
        available = self.config.members
        if members is None:
            return available
        if not 1 <= members <= available:
            raise InputError(f"--members must be between 1 and {available} for {self.run.root}, "
                             f"got {members}")
        return members

    def _stored(self, what: str, path: Path, load: Callable[[Path], object], without: str) -> object | None:
        """What `evaluate` stored for this generation at `path`, loaded; None, and a note saying
        what the table lacks, when it is missing or unreadable."""
        if not path.exists():
            self._say(f"{path} does not exist (run `emodistill evaluate`): {without}")
            return None
        try:
            return load(path)
        except InputError as error:
            self._say(f"{error}: {without}")
            return None

    def _say(self, message: str) -> None:
        """Log a note once per predictor."""
        if message not in self._said:
            self._said.add(message)
            self.log(f"note: {message}")

    def columns(self, source: Source) -> list[str]:
        return output_columns(self.tasks, self.ensemble, self.density is not None, source.has_file_column)

    def sequences(self, source: Source, faces: bool = False) -> Iterator[FrameSequence]:
        """The input as sequences of frames, each cropped at the model's input size."""
        size = self.input_size
        tracker = FaceTracker(detector=self.detector, crop_size=size, eyes=self.eyes,
                              detect_every=self.levers.detect_every)
        # With the decode-thread lever, decoding and face tracking run a few frames ahead of
        # the models, in a background thread (PyAV, dlib and PyTorch release the GIL).
        ahead = prefetch if self.levers.decode_thread else iter
        if source.kind == "video":
            yield FrameSequence(ahead(video_frames(source, tracker, faces)), True, self._audio_track(source))
        elif source.kind == "frames":
            if self.audio:
                self._say("frames in memory carry no sound: the audio-visual model hears silence")
            yield FrameSequence(ahead(array_frames(source, tracker, faces)), True)
        elif source.kind == "crops":
            if self.audio:
                self._say("face crop folders carry no sound: the audio-visual model hears silence")
            for folder in source.files:
                yield FrameSequence(ahead(crop_frames(folder, source.path, size, faces)), True)
        else:
            if self.audio:
                self._say("images carry no sound: the audio-visual model hears silence")
            yield FrameSequence(ahead(image_frames(source, tracker, faces)), False)

    def _audio_track(self, source: Source) -> AudioTrack | None:
        if not self.audio:
            return None
        if source.video is None or not source.video.has_audio:
            self._say(f"{source.path} has no sound: the audio-visual model hears silence")
            return None
        return AudioTrack(decode_audio(source.path), SAMPLE_RATE, source.video.fps)

    def predict_frames(
        self, path: Path | str | Source | np.ndarray | Iterable[np.ndarray], faces: bool = False,
        progress: bool = False,
    ) -> Iterator[FramePrediction]:
        """Predictions frame by frame, in input order, as they are made (flat memory).

        `faces`: keep each face at figure size in `FramePrediction.face`.
        """
        source = as_source(path)
        columns = self.columns(source)
        with tqdm(total=source.n_frames, unit="frame", disable=not progress, leave=False) as bar:
            for sequence in self.sequences(source, faces):
                for prediction in self._predict_sequence(sequence, columns):
                    bar.update()
                    yield prediction

    def predict(self, path: Path | str | np.ndarray | Iterable[np.ndarray], progress: bool = False,
                fps: float | None = None) -> pd.DataFrame:
        """A table with one row per frame (see `output_columns`) of a video, image or folder, or of
        frames in memory: a (T, H, W, 3) uint8 RGB array or an iterable of (H, W, 3) frames,
        taken as one video (`fps` gives their timestamps)."""
        source = as_source(path, fps)
        rows = [p.row for p in self.predict_frames(source, progress=progress)]
        return table(rows, self.columns(source))

    def _predict_sequence(
        self, sequence: FrameSequence, columns: list[str]
    ) -> Iterator[FramePrediction]:
        """Buffer up to `batch_frames` faces, so the CNN sees a batch and the GRU the whole run."""
        pending: list[Frame] = []
        hidden: list[object] = [None] * self.n_members
        previous: int | None = None
        for frame in sequence.frames:
            if sequence.continuous and (frame.crop is None or previous is None
                                        or frame.number != previous + 1):
                # A stretch without a face (or a missing crop) breaks the time series: the next
                # face starts from a zero GRU state, as every training clip does, not a stale one.
                yield from self._flush(pending, hidden, sequence, columns)
                hidden = [None] * self.n_members
            previous = frame.number
            if sequence.continuous and frame.crop is None:
                yield FramePrediction(frame_row(frame, columns), None, None)
                continue
            pending.append(frame)
            if len(pending) == self.batch_frames:
                yield from self._flush(pending, hidden, sequence, columns)
        yield from self._flush(pending, hidden, sequence, columns)

    def _flush(self, pending: list[Frame], hidden: list[object], sequence: FrameSequence,
               columns: list[str]) -> Iterator[FramePrediction]:
        """Predict the faces of `pending`, carry `hidden` on (in place) and empty `pending`."""
        found = [f for f in pending if f.crop is not None]
        values: dict[str, np.ndarray] = {}
        groups: dict[str, np.ndarray] = {}
        means: dict[str, np.ndarray] = {}
        if found:
            logits, features = self._forward(found, hidden, sequence)
            own = self.tasks.activate(logits)  # task -> (T, N, n)
            calibrated = own if self.calibration is None else self.tasks.activate(self.calibration.apply(logits))
            values, groups = summarise(self.tasks, calibrated, None if self.calibration is None else own,
                                       self._ood(features))
            # What `submit` decides on: the members' own outputs, as evaluate's challenge scores
            means = {name: probs.mean(0) for name, probs in own.items()}  # (N, n_logits) each
        parts = PARTS if self.ensemble else PARTS[:1]
        index = 0
        for frame in pending:
            row = frame_row(frame, columns)
            if frame.crop is None:
                yield FramePrediction(row, None, None)
                continue
            row.update({k: python_value(v[index]) for k, v in values.items() if k in row})
            yield FramePrediction(row, frame.display, {p: groups[p][index] for p in parts},
                                  {name: mean[index] for name, mean in means.items()})
            index += 1
        pending.clear()

    def _ood(self, features: np.ndarray | None) -> tuple[np.ndarray, float] | None:
        """The members' visual features (T, N, F) -> the density score (N,) and its threshold."""
        if self.density is None or features is None:
            return None
        return self.density.score(features), self.density.threshold_for(self.n_members)

    def _forward(
        self, found: list[Frame], hidden: list[object], sequence: FrameSequence
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Every member's logits, task -> (T, N, n_logits), for the faces `found`, and with a
        density their visual features (T, N, F) (None without one)."""
        crops = np.stack([f.crop for f in found])  # (N, S, S, 3)
        # A time series is one sequence (B=1, L=N); independent images are N sequences of one.
        shape = (1, len(found)) if sequence.continuous else (len(found), 1)
        frames = crops.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (N, 3, S, S)
        frames = frames.reshape(*shape, *frames.shape[1:])  # (B, L, 3, S, S)
        audio = None
        if self.audio:
            if sequence.audio is None:
                audio = silence(len(found))
            else:
                audio = sequence.audio.windows(np.array([f.number - 1 for f in found]))
            audio = audio.reshape(*shape, *audio.shape[1:])  # (B, L, 64, 64)
        features = None
        with torch_threads(self.levers.model_threads):
            if self.density is not None:
                logits, state, features = self.members.forward_with_features(frames, audio, hidden)
            else:
                logits, state = self.members.forward_stateful(frames, audio, hidden)
        if sequence.continuous:
            hidden[:] = list(state)  # per member, carried to the next chunk
        # (T, B, L, n) -> (T, N, n): B * L is the faces in input order either way
        return {k: v.reshape(self.n_members, len(found), -1) for k, v in logits.items()}, features
