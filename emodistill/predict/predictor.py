"""`Predictor`: a trained generation of a run -> one row of emotions per face per frame, each with
how sure the model is (paper Fig. 1 as a product).

Per face: AU probabilities, expression, valence/arousal, the normalised entropy of each task
(split into aleatoric and epistemic parts for an ensemble, Eq. 14) and an out-of-domain flag from
the distance of the face's features and stage statistics to the training frames' (one member or many). Each person of
a video is a time series of their own: the GRU heads carry one state per face_id. The run's
evaluation stores what the probabilities are calibrated with and what the flag is thresholded at.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from emodistill.core.errors import InputError
from emodistill.core.runtime import resolve_device
from emodistill.data.audio import SAMPLE_RATE, decode_audio, silence
from emodistill.data.frontend import DETECT_EVERY, FaceCrop, FrontEnd, prefetch
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
from emodistill.run import Ensemble


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
        runtime: str = "torch",
        device: str = "auto",
        batch_frames: int = 16,
        log: Callable[[str], None] = print,
        detector: str | None = None,
        landmarks: Path | str | None = None,
        levers: Levers | None = None,
        max_faces: int | None = None,
        detect_every: int = DETECT_EVERY,
        backend: str | None = None,
    ):
        """`generation`: teacher, studentK or K (default: the last finished one); `members`:
        use the first N members (default all); `batch_frames`: frames per forward pass;
        `detector`: mtcnn, dlib or haar (default mtcnn); `landmarks`: a CSV file of the faces'
        five landmarks per frame, used instead of a detector (format:
        `emodistill.data.frontend.given`); `max_faces`: follow at most this many faces, the
        largest; `detect_every`: full face detection every k-th frame, faces followed in
        between; `levers`: the speed levers (default `Levers.auto()`: the ones whose outputs
        match the plain path within their tolerances; `Levers()` is the plain fp32 path);
        `runtime`: torch or onnx (`backend`, its old name, is still accepted)."""
        if backend is not None:
            warnings.warn("Predictor(backend=...) is now Predictor(runtime=...)", DeprecationWarning, stacklevel=2)
            runtime = backend
        self.ensemble = Ensemble.open(run, generation, members)
        self.run, self.generation, self.n_members = self.ensemble.run, self.ensemble.generation, self.ensemble.size
        self.config = self.run.config()
        self.tasks = self.config.task_set  # the run's tasks and output names (EXPR_Other in 8-class runs)
        if batch_frames < 1:
            raise InputError(f"batch_frames must be 1 or more, got {batch_frames}")
        self.log = log
        self._said: set[str] = set()
        self.batch_frames = batch_frames
        self.device = resolve_device(device)
        self.input_size = PRESETS[self.config.preset].input_size
        self.density = self._stored("feature density", self.run.density_path(self.generation), EnsembleDensity.load,
                                    "no OOD score")
        self.ood_threshold = None if self.density is None else self.density.threshold_for(self.n_members)
        self.calibration = self._stored("calibration", self.run.calibration_path(self.generation),
                                        lambda path: Calibration.load(path, self.tasks), "uncalibrated probabilities")
        self.levers = self._auto_levers() if levers is None else levers
        self.members = self._loaded(runtime)
        self.audio = self.config.modality == "va"
        self.front = FrontEnd.build(detector, self.input_size, detect_every, max_faces, landmarks, log)

    @property
    def name(self) -> str:
        """Run, generation and member count, e.g. "run/student2 (5 members)"."""
        return self.ensemble.name

    @property
    def bf16(self) -> bool:
        """Whether the members really run in bf16 (the lever, on the PyTorch backend)."""
        return isinstance(self.members, StackedMembers) and self.members.bf16

    def _loaded(self, runtime: str) -> SeparateMembers | StackedMembers:
        """The members as one ensemble: batched (PyTorch with a model lever on) or in turn."""
        levers = self.levers
        if runtime == "torch" and (levers.batched or levers.fold_bn or levers.bf16):
            return StackedMembers(self.ensemble.models(self.device), self.device, bf16=levers.bf16,
                                  fold_bn=levers.fold_bn)
        return SeparateMembers(self.ensemble.members(runtime, self.device, log=self._say))

    def _auto_levers(self) -> Levers:
        """`Levers.auto()`; bf16 only on a CPU, whose flags say it multiplies bf16 natively (a
        GPU's are not what was measured)."""
        return Levers.auto(bf16=False) if self.device.type != "cpu" else Levers.auto()

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
        return output_columns(self.tasks, self.n_members > 1, self.density is not None, source.has_file_column)

    def sequences(self, source: Source, faces: bool = False) -> Iterator[FrameSequence]:
        """The input as sequences of frames, their faces aligned at the model's input size."""
        # With the decode-thread lever, face finding and alignment run a few frames ahead of
        # the models, in a background thread (PyAV, OpenCV and PyTorch release the GIL), while
        # decoding runs a few frames ahead of that in a thread of its own.
        ahead = prefetch if self.levers.decode_thread else iter
        front = self.front
        if source.kind == "video":
            yield FrameSequence(ahead(video_frames(source, front, faces)), True, self._audio_track(source))
        elif source.kind == "frames":
            if self.audio:
                self._say("frames in memory carry no sound: the audio-visual model hears silence")
            yield FrameSequence(ahead(array_frames(source, front, faces)), True)
        elif source.kind == "crops":
            if self.audio:
                self._say("face crop folders carry no sound: the audio-visual model hears silence")
            for folder in source.files:
                yield FrameSequence(ahead(crop_frames(folder, source.path, self.input_size, faces)), True)
        else:
            if self.audio:
                self._say("images carry no sound: the audio-visual model hears silence")
            yield FrameSequence(ahead(image_frames(source, front, faces)), False)

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
        """Predictions row by row (each face of each frame, by face_id; one row for a frame
        without a face), in input order, as they are made (flat memory).

        `faces`: keep each face at figure size in `FramePrediction.face`.
        """
        source = as_source(path)
        columns = self.columns(source)
        with tqdm(total=source.n_frames, unit="frame", disable=not progress, leave=False) as bar:
            for sequence in self.sequences(source, faces):
                last = None
                for prediction in self._predict_sequence(sequence, columns):
                    frame = (prediction.row.get("file"), prediction.row["frame"])
                    bar.update(frame != last)  # a frame with several faces has several rows
                    last = frame
                    yield prediction

    def predict(self, path: Path | str | np.ndarray | Iterable[np.ndarray], progress: bool = False,
                fps: float | None = None) -> pd.DataFrame:
        """A table with one row per face per frame (see `output_columns`; one row for a frame
        without a face) of a video, image or folder, or of frames in memory: a (T, H, W, 3) uint8
        RGB array or an iterable of (H, W, 3) frames, taken as one video (`fps` gives their
        timestamps)."""
        source = as_source(path, fps)
        rows = [p.row for p in self.predict_frames(source, progress=progress)]
        return table(rows, self.columns(source))

    def _predict_sequence(
        self, sequence: FrameSequence, columns: list[str]
    ) -> Iterator[FramePrediction]:
        """Buffer `batch_frames` frames, so the CNN sees each person's faces in a batch and their
        GRU state the whole video."""
        pending: list[Frame] = []
        states: dict[int, _State] = {}
        for frame in sequence.frames:
            pending.append(frame)
            if len(pending) == self.batch_frames:
                yield from self._flush(pending, states, sequence, columns)
                pending = []
        yield from self._flush(pending, states, sequence, columns)

    def _flush(self, pending: list[Frame], states: dict[int, _State], sequence: FrameSequence,
               columns: list[str]) -> Iterator[FramePrediction]:
        """Predict every face of `pending` and yield its rows in order; `states` (face_id -> GRU
        state) carried on in place."""
        results: dict[tuple[int, int], _Result] = {}
        if sequence.continuous:
            for run in _runs(pending):
                self._predict_run(run, states, sequence, results)
        else:  # independent pictures: every face a sequence of one, from a zero state
            faces = [(frame, face) for frame in pending for face in frame.faces]
            if faces:
                self._predict_faces(faces, None, sequence, results)
        parts = PARTS if self.n_members > 1 else PARTS[:1]
        for frame in pending:
            if not frame.faces:
                yield FramePrediction(frame_row(frame, None, columns), None, None)
            for face in frame.faces:
                row = frame_row(frame, face, columns)
                result = results[(frame.number, face.face_id)]
                row.update({k: v for k, v in result.values.items() if k in row})
                yield FramePrediction(row, face.display, {p: result.groups[p] for p in parts}, result.means)

    def _predict_run(self, run: list[tuple[Frame, FaceCrop]], states: dict[int, _State],
                     sequence: FrameSequence, results: dict[tuple[int, int], _Result]) -> None:
        """One person's consecutive frames: continue their GRU state if they were on the frame
        just before, else start from a zero state (a stretch without them breaks their time
        series, as every training clip starts from zero)."""
        face_id, first = run[0][1].face_id, run[0][0].number
        state = states.get(face_id)
        hidden = state.hidden if state is not None and state.last == first - 1 else None
        states[face_id] = _State(self._predict_faces(run, hidden, sequence, results), run[-1][0].number)

    def _predict_faces(self, faces: list[tuple[Frame, FaceCrop]], hidden: list[object] | None,
                       sequence: FrameSequence, results: dict[tuple[int, int], _Result]) -> list[object]:
        """Put each face's result in `results`, keyed by (frame number, face_id); returns the
        members' GRU states after the last face."""
        logits, state, features = self._forward(faces, hidden, sequence)
        own = self.tasks.activate(logits)  # task -> (T, N, n)
        calibrated = own if self.calibration is None else self.tasks.activate(self.calibration.apply(logits))
        values, groups = summarise(self.tasks, calibrated, None if self.calibration is None else own,
                                   self._ood(features))
        # What `submit` decides on: the members' own outputs, as evaluate's challenge scores
        means = Ensemble.average(own)  # (N, n_logits) each
        for index, (frame, face) in enumerate(faces):
            results[(frame.number, face.face_id)] = _Result(
                {k: python_value(v[index]) for k, v in values.items()}, {p: g[index] for p, g in groups.items()},
                {name: mean[index] for name, mean in means.items()})
        return state

    def _ood(self, features: np.ndarray | None) -> tuple[np.ndarray, float] | None:
        """The members' density inputs (T, N, D) -> the density score (N,) and its threshold."""
        if self.density is None or features is None:
            return None
        return self.density.score(features), self.density.threshold_for(self.n_members)

    def _forward(
        self, faces: list[tuple[Frame, FaceCrop]], hidden: list[object] | None, sequence: FrameSequence
    ) -> tuple[dict[str, np.ndarray], list[object], np.ndarray | None]:
        """Every member's logits, task -> (T, N, n_logits), for the N faces; the members' GRU
        states after the last face; and with a density, their density inputs (T, N, D) (None
        without one)."""
        n = len(faces)
        crops = np.stack([face.crop for _, face in faces])  # (N, S, S, 3)
        # A time series is one sequence (B=1, L=N); independent images are N sequences of one.
        shape = (1, n) if sequence.continuous else (n, 1)
        frames = crops.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (N, 3, S, S)
        frames = frames.reshape(*shape, *frames.shape[1:])  # (B, L, 3, S, S)
        audio = None
        if self.audio:
            if sequence.audio is None:
                audio = silence(n)
            else:
                audio = sequence.audio.windows(np.array([frame.number - 1 for frame, _ in faces]))
            audio = audio.reshape(*shape, *audio.shape[1:])  # (B, L, 64, 64)
        hidden = [None] * self.n_members if hidden is None else hidden
        features = None
        with torch_threads(self.levers.model_threads):
            if self.density is not None:
                logits, state, features = self.members.forward_with_features(frames, audio, hidden)
            else:
                logits, state = self.members.forward_stateful(frames, audio, hidden)
        # (T, B, L, n) -> (T, N, n): B * L is the faces in input order either way
        return {k: v.reshape(self.n_members, n, -1) for k, v in logits.items()}, list(state), features


@dataclass(frozen=True)
class _Result:
    """One face's prediction, ready for its row."""

    values: dict[str, object]  # column -> value
    groups: dict[str, np.ndarray]  # part -> (outputs,) uncertainty, for Figure 1
    means: dict[str, np.ndarray]  # task -> (n_logits,) the ensemble's mean probabilities


@dataclass(frozen=True)
class _State:
    """One person's GRU state between chunks."""

    hidden: list[object]  # per member, as its forward pass returned it
    last: int  # the frame number it was computed up to


def _runs(frames: list[Frame]) -> list[list[tuple[Frame, FaceCrop]]]:
    """Each person's faces in `frames`, split where they miss a frame: runs of consecutive frames,
    by face_id."""
    by_person: dict[int, list[tuple[Frame, FaceCrop]]] = defaultdict(list)
    for frame in frames:
        for face in frame.faces:
            by_person[face.face_id].append((frame, face))
    runs = []
    for _, faces in sorted(by_person.items()):
        run = [faces[0]]
        for item in faces[1:]:
            if item[0].number != run[-1][0].number + 1:
                runs.append(run)
                run = []
            run.append(item)
        runs.append(run)
    return runs
