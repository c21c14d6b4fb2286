"""Files of the Aff-wild2 layout of one release: annotation text files (and the multi-task files
of the releases that have them), aligned JPEG crops, MP4 videos, truth.

Everything is written byte-for-byte reproducibly (fixed zip timestamps, fixed encoder settings)
so one seed gives the same data set on every run.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emodistill.data.frontend.images import write_jpeg
from emodistill.data.synth.audio import SAMPLE_RATE
from emodistill.tasks import Task, TaskSet, release

SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}  # every release's split folder names
# The multi-task files' header (the releases that have them); one row per image follows.
MTL_HEADER = "image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
MTL_STEP = 3  # every third frame of a video is a multi-task row: those sets are sparse, static frames
NEW_VIDEOS_EVERY = 5  # in the split-crop releases, every fifth raw video is one of the "new" ones
JPEG_QUALITY = 90
_AUDIO_CHUNK = 1024  # samples per AAC frame


@dataclass(frozen=True)
class SynthLayout:
    """Where the simulator puts each file, as one Aff-wild2 release spells it."""

    release: str
    annotations: str  # the annotation root
    task_dirs: dict[str, str] = field(default_factory=dict)  # task -> its folder (none: multi-task only)
    mtl: dict[str, str] = field(default_factory=dict)  # split -> multi-task file, below the annotation root
    split_crops: bool = False  # crops over cropped_aligned/cropped_aligned and .../cropped_aligned_new_50_vids

    def annotation_path(self, root: Path, task: Task, split: str, video: str) -> Path:
        """<annotation root>/<task folder>/<Split>_Set/<video>.txt"""
        return root / self.annotations / self.task_dirs[task.name] / SPLIT_DIRS[split] / f"{video}.txt"

    def is_new(self, index: int) -> bool:
        """Whether raw video `index` is one of the later-added ones (its own crop and video folders)."""
        return self.split_crops and index % NEW_VIDEOS_EVERY == NEW_VIDEOS_EVERY - 1

    def crop_dir(self, root: Path, video: str, index: int) -> Path:
        """The folder of one subject's crops, of raw video `index`."""
        if not self.split_crops:
            return root / "cropped_aligned" / video
        inner = "cropped_aligned_new_50_vids" if self.is_new(index) else "cropped_aligned"
        return root / "cropped_aligned" / inner / video

    def raw_path(self, root: Path, base: str, index: int) -> Path:
        folder = ("new_vids" if self.is_new(index) else "videos") if self.split_crops else "videos/batch1"
        return root / folder / f"{base}.mp4"


_CHALLENGE_DIRS = {"AU": "AU_Detection_Challenge", "VA": "VA_Estimation_Challenge"}
SYNTH_LAYOUTS = {layout.release: layout for layout in (
    SynthLayout("ABAW2", "annotations", {"AU": "AU_Set", "EXPR": "EXPR_Set", "VA": "VA_Set"}),
    SynthLayout("ABAW3", "Third ABAW Annotations", {**_CHALLENGE_DIRS, "EXPR": "EXPR_Classification_Challenge"},
                {"train": "MTL_Challenge/train_set.txt", "val": "MTL_Challenge/validation_set.txt"}),
    SynthLayout("ABAW4", "4th_ABAW_Annotations", {},
                {"train": "training_set_annotations.txt", "val": "validation_set_annotations.txt"}),
    SynthLayout("ABAW5", "5th_ABAW_Annotations", {**_CHALLENGE_DIRS, "EXPR": "EXPR_Classification_Challenge"},
                split_crops=True),
    SynthLayout("ABAW6", "6th_ABAW_Annotations", {**_CHALLENGE_DIRS, "EXPR": "EXPR_Recognition_Challenge"},
                split_crops=True),
    SynthLayout("ABAW7", "7th_ABAW_Annotations", {},
                {"train": "training_set_annotations.txt", "val": "validation_set_annotations.txt"}),
    SynthLayout("ABAW8", "8th_ABAW_Annotations", {**_CHALLENGE_DIRS, "EXPR": "EXPR_Recognition_Challenge"},
                split_crops=True),
)}


def synth_layout(name: str) -> SynthLayout:
    """The layout the simulator writes for a release ("abaw6", ...)."""
    return SYNTH_LAYOUTS[release(name).name]


def header(task: Task) -> str:
    """The first line of the task's annotation files: its output names."""
    return ",".join(task.names)


def write_annotation(path: Path, task: Task, labels: np.ndarray, valid: np.ndarray) -> None:
    """One header line, then one line per frame; invalid frames carry the task's marker (-1, -5)."""
    invalid_row = np.full(labels.shape[1:], task.invalid, dtype=labels.dtype)
    lines = [header(task)]
    # AU: 0/1 per AU; EXPR: the class index; VA: two values with 4 decimals.
    lines += [task.annotation_line(row if ok else invalid_row) for row, ok in zip(labels, valid, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def multi_task_rows(tasks: TaskSet, video: str, labels: dict[str, np.ndarray],
                    valid: dict[str, np.ndarray]) -> list[str]:
    """Every MTL_STEP-th frame of one subject as rows `video/00001.jpg,v,a,expr,AU1..AU26`; a frame
    its single-task annotation calls invalid carries the task's no-label marker there too."""
    rows = []
    n = len(labels["AU"])
    for i in range(0, n, MTL_STEP):
        cells = []
        for name in ("VA", "EXPR", "AU"):
            task = tasks[name]
            ok = bool(valid[name][i]) if name in valid else True  # multi-task sets label every task
            row = labels[name][i] if ok else np.full(np.shape(labels[name][i]), task.invalid)
            cells.append(task.annotation_line(row))
        rows.append(f"{video}/{i + 1:05d}.jpg," + ",".join(cells))
    return rows


def write_truth(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz (np.load reads it) with fixed member timestamps, so bytes repeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w") as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)


def write_crop(path: Path, image: np.ndarray) -> None:
    """A BGR crop as a JPEG of Aff-wild2's quality."""
    write_jpeg(path, image[..., ::-1], JPEG_QUALITY)  # the RGB view: the same bytes as the BGR


class Mp4Writer:
    """An H.264 + AAC MP4: feed BGR frames one by one; the audio track is known up front."""

    def __init__(self, path: Path, width: int, height: int, fps: int, audio: np.ndarray):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=Fraction(fps))
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.codec_context.thread_count = 1  # one thread: the same bytes on every run
        self.video.options = {"preset": "ultrafast", "crf": "23"}
        self.audio = self.container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        self.audio.options = {"aac_coder": "fast"}
        self.samples = audio.astype(np.float32)
        self.fps, self.frames, self.sent = fps, 0, 0

    def _send_audio(self, until: int) -> None:
        """Encode whole AAC frames of audio up to sample `until` (the rest at close)."""
        while self.sent + _AUDIO_CHUNK <= until or (until >= len(self.samples) > self.sent):
            chunk = self.samples[self.sent : self.sent + _AUDIO_CHUNK]
            frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, self.sent
            self.container.mux(self.audio.encode(frame))
            self.sent += len(chunk)

    def write(self, bgr: np.ndarray) -> None:
        """Append one (H, W, 3) BGR frame and the audio that plays during it."""
        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        frame.pts = self.frames
        self.container.mux(self.video.encode(frame))
        self.frames += 1
        self._send_audio(self.frames * SAMPLE_RATE // self.fps)

    def close(self) -> None:
        """Encode the remaining audio, flush both encoders and finish the file."""
        self._send_audio(len(self.samples))
        self.container.mux(self.video.encode(None))
        self.container.mux(self.audio.encode(None))
        self.container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
