"""`prepare`: raw videos -> the Aff-wild2 layout (face crops, raw video beside them, a manifest).

Each video is written to a scratch folder and moved into place when whole, so an interrupted or
failed run keeps every finished video and a rerun only does the rest.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from emodistill.data.media import Box, FaceTracker, VideoFrame, iter_frames, probe_video
from emodistill.errors import InputError

CROPS = "cropped_aligned"  # out/cropped_aligned/<video>/{frame:05d}.jpg, as Aff-wild2
RAW = Path("videos") / "batch1"  # out/videos/batch1/<video file>: audio and frame rate
TRACKS = "tracks"  # out/tracks/<video>.csv: that video's manifest rows; written last
SCRATCH = ".partial"  # videos being prepared
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("video", "frame", "timestamp", "face", "x", "y", "w", "h")
JPEG_QUALITY = 95


@dataclass
class PrepareSummary:
    """What one `prepare_videos` call did."""

    videos: int = 0  # videos prepared by this call
    skipped: int = 0  # videos already complete from an earlier run
    frames: int = 0  # frames decoded
    faces: int = 0  # frames with a face, each written as a JPEG crop
    seconds: float = 0.0  # wall time of the call

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"prepared {self.videos} videos ({self.skipped} already done): "
            f"{self.frames} frames, {self.faces} with a face, "
            f"in {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s)"
        )


def prepare_videos(
    videos: Sequence[Path],
    out: Path,
    size: int = 112,
    progress: bool = True,
    detect_every: int = 1,
) -> PrepareSummary:
    """Decode, track and crop the face of every video into `out`, skipping videos already done."""
    videos = [Path(v) for v in videos]
    out = Path(out)
    _check_inputs(videos, out, size)
    tracker = FaceTracker(crop_size=size, detect_every=detect_every)
    for folder in (CROPS, RAW, TRACKS, SCRATCH):
        (out / folder).mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary()
    start = time.perf_counter()
    try:
        for number, path in enumerate(videos, start=1):
            if _is_complete(out, path.stem):
                summary.skipped += 1
                continue
            frames, faces = _prepare_one(path, out, tracker, f"{number}/{len(videos)} {path.stem}",
                                         progress)
            summary.videos += 1
            summary.frames += frames
            summary.faces += faces
    finally:
        _write_manifest(out)
        shutil.rmtree(out / SCRATCH, ignore_errors=True)
        summary.seconds = time.perf_counter() - start
    return summary


def _check_inputs(videos: list[Path], out: Path, size: int) -> None:
    """Fail before any work on what can be seen without decoding."""
    if size < 1:
        raise InputError(f"the crop size must be a positive number of pixels, got {size}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path exists and is not a folder")
    seen: dict[str, Path] = {}
    for path in videos:
        if not path.is_file():
            raise InputError(f"{path}: no such video file")
        if path.stem in seen:
            raise InputError(
                f"{seen[path.stem]} and {path} would both become {CROPS}/{path.stem}; rename one"
            )
        seen[path.stem] = path


def _is_complete(out: Path, stem: str) -> bool:
    return (out / TRACKS / f"{stem}.csv").is_file() and (out / CROPS / stem).is_dir()


def _prepare_one(path: Path, out: Path, tracker: FaceTracker, label: str,
                 progress: bool) -> tuple[int, int]:
    """Prepare one video through the scratch folder; returns (frames, faces)."""
    info = probe_video(path)
    scratch_crops = out / SCRATCH / path.stem
    scratch_track = out / SCRATCH / f"{path.stem}.csv"
    shutil.rmtree(scratch_crops, ignore_errors=True)  # left by a run that was killed
    scratch_crops.mkdir()
    tracker.reset()
    frames = faces = 0
    try:
        with (
            scratch_track.open("w", newline="") as table,
            tqdm(total=info.n_frames, desc=label, unit="frame", disable=not progress,
                 leave=False) as bar,
        ):
            rows = csv.writer(table, lineterminator="\n")
            rows.writerow(MANIFEST_COLUMNS)
            for frame in iter_frames(path):
                box, crop = tracker.track(frame.rgb)
                if crop is not None:
                    _write_jpeg(scratch_crops / f"{frame.index + 1:05d}.jpg", crop)
                    faces += 1
                rows.writerow(_manifest_row(path.stem, frame, box))
                frames += 1
                bar.update()
        _link_or_copy(path, out / RAW / path.name)
        crops = out / CROPS / path.stem
        shutil.rmtree(crops, ignore_errors=True)  # moved in by a run killed before its track
        scratch_crops.rename(crops)
        scratch_track.replace(out / TRACKS / f"{path.stem}.csv")  # last: the video is complete
    except BaseException:
        shutil.rmtree(scratch_crops, ignore_errors=True)
        scratch_track.unlink(missing_ok=True)
        raise
    return frames, faces


def _manifest_row(stem: str, frame: VideoFrame, box: Box | None) -> list[str | int]:
    if box is None:
        return [stem, frame.index + 1, f"{frame.timestamp:.4f}", 0, "", "", "", ""]
    return [stem, frame.index + 1, f"{frame.timestamp:.4f}", 1,
            round(box.x), round(box.y), round(box.w), round(box.h)]


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    path.write_bytes(encoded.tobytes())


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard link (no extra disk) where source and target share a file system, else copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_manifest(out: Path) -> None:
    """Concatenate the tracks of all complete videos in `out` into manifest.csv, by video name."""
    tracks = sorted(p for p in (out / TRACKS).glob("*.csv") if _is_complete(out, p.stem))
    scratch = out / f"{MANIFEST}.partial"
    with scratch.open("w", newline="") as manifest:
        manifest.write(",".join(MANIFEST_COLUMNS) + "\n")
        for track in tracks:
            with track.open(newline="") as rows:
                next(rows)  # the header
                shutil.copyfileobj(rows, manifest)
    scratch.replace(out / MANIFEST)
