"""Files of the Aff-wild2 layout: annotation text files, aligned JPEG crops, MP4 videos, truth.

Everything is written byte-for-byte reproducibly (fixed zip timestamps, fixed encoder settings)
so one seed gives the same data set on every run.
"""

from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emodistill.data.frontend.images import write_jpeg
from emodistill.data.synth.audio import SAMPLE_RATE
from emodistill.tasks import TASKS, Task

SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}  # Aff-wild2 (ABAW2) folder names
HEADERS = {task.name: ",".join(task.names) for task in TASKS}  # first line of each annotation file
JPEG_QUALITY = 90
_AUDIO_CHUNK = 1024  # samples per AAC frame


def annotation_path(root: Path, task: Task, split: str, video: str) -> Path:
    """annotations/<Task>_Set/<Split>_Set/<video>.txt"""
    return root / "annotations" / task.annotation_dir / SPLIT_DIRS[split] / f"{video}.txt"


def crop_path(root: Path, video: str, index: int) -> Path:
    """cropped_aligned/<video>/<index + 1 as 5 digits>.jpg: line i of the annotations."""
    return root / "cropped_aligned" / video / f"{index + 1:05d}.jpg"


def write_annotation(path: Path, task: Task, labels: np.ndarray, valid: np.ndarray) -> None:
    """One header line, then one line per frame; invalid frames carry the task's marker (-1, -5)."""
    invalid_row = np.full(labels.shape[1:], task.invalid, dtype=labels.dtype)
    lines = [HEADERS[task.name]]
    # AU: 0/1 per AU; EXPR: the class index; VA: two values with 4 decimals.
    lines += [task.annotation_line(row if ok else invalid_row) for row, ok in zip(labels, valid, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


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
