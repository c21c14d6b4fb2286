"""`prepare`: raw videos and images -> the Aff-wild2 layout (face crops, raw video beside them, a
manifest); an image becomes a video of one frame, `cropped_aligned/<image stem>/00001.jpg`.

Each input is written to a scratch folder and moved into place when whole, so an interrupted or
failed run keeps every finished input and a rerun only does the rest.
"""

from __future__ import annotations

import csv
import glob
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from emodistill.core.errors import InputError
from emodistill.data.crops import CROPS
from emodistill.data.faces import EyeLocator, make_detector
from emodistill.data.media import (
    VIDEO_SUFFIXES,
    Box,
    FaceTracker,
    VideoFrame,
    is_image_file,
    iter_frames,
    probe_video,
    read_image,
    write_jpeg,
)

RAW = Path("videos") / "batch1"  # out/videos/batch1/<video file>: audio and frame rate
TRACKS = "tracks"  # out/tracks/<video>.csv: that video's manifest rows; written last
SCRATCH = ".partial"  # videos being prepared
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("video", "frame", "timestamp", "face", "x", "y", "w", "h")
JPEG_QUALITY = 95
GLOB_CHARACTERS = "*?["


@dataclass
class PrepareSummary:
    """What one `prepare` call did."""

    detector: str = ""  # name of the face detector used
    videos: int = 0  # videos prepared by this call
    images: int = 0  # images prepared by this call
    skipped: int = 0  # inputs already complete from an earlier run
    frames: int = 0  # frames decoded (an image is one frame)
    faces: int = 0  # frames with a face, each written as a JPEG crop
    seconds: float = 0.0  # wall time of the call

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def detection_rate(self) -> float:
        """Share of the frames prepared by this call in which a face was found."""
        return self.faces / self.frames if self.frames else 0.0

    def __str__(self) -> str:
        return (
            f"prepared {self.videos} videos and {self.images} images ({self.skipped} already "
            f"done): {self.frames} frames, {self.faces} with a face "
            f"({self.detection_rate:.1%} found by {self.detector}), "
            f"in {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s)"
        )


def prepare(
    inputs: Sequence[Path | str],
    out: Path,
    size: int = 112,
    progress: bool = True,
    detect_every: int = 1,
    detector: str | None = None,
    landmarks: Path | None = None,
    log: Callable[[str], None] = print,
) -> PrepareSummary:
    """Detect, track and crop the face of every video and image into `out`, skipping inputs already
    done. `inputs` are files, folders or glob patterns; `detector` is dlib or haar (default dlib,
    Haar when dlib is missing); `landmarks` a dlib shape model file, to align crops by the eyes."""
    out = Path(out)
    if size < 1:
        raise InputError(f"the crop size must be a positive number of pixels, got {size}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path exists and is not a folder")
    paths = expand_inputs(inputs, log)
    _check_stems(paths)
    eyes = None if landmarks is None else EyeLocator(Path(landmarks))
    tracker = FaceTracker(detector=make_detector(detector, log), crop_size=size,
                          detect_every=detect_every, eyes=eyes)
    for folder in (CROPS, RAW, TRACKS, SCRATCH):
        (out / folder).mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(detector=tracker.detector.name)
    start = time.perf_counter()
    try:
        with tqdm(total=len(paths), desc="prepare", unit="input", disable=not progress) as bar:
            for path in paths:
                bar.update()
                if _is_complete(out, path.stem):
                    summary.skipped += 1
                    continue
                image = is_image_file(path)
                frames, faces = _prepare_one(path, out, tracker, image, progress)
                summary.images += image
                summary.videos += not image
                summary.frames += frames
                summary.faces += faces
    finally:
        _write_manifest(out)
        shutil.rmtree(out / SCRATCH, ignore_errors=True)
        summary.seconds = time.perf_counter() - start
    return summary


def expand_inputs(inputs: Sequence[Path | str], log: Callable[[str], None] = print) -> list[Path]:
    """Files, folders (their images and videos) and glob patterns -> the files to prepare, in the
    order given; a file named twice is prepared once, with a note."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files += _folder_media(path, log)
        elif path.is_file():
            files.append(path)
        elif any(c in str(given) for c in GLOB_CHARACTERS):
            matches = sorted(Path(m) for m in glob.glob(str(given), recursive=True))
            if not matches:
                raise InputError(f"{given}: no file matches this pattern")
            files += [m for m in matches if m.is_file()]
        else:
            raise InputError(f"{path}: no such video, image or folder")
    unique: dict[Path, Path] = {}
    for path in files:
        key = path.resolve()
        if key in unique:
            log(f"note: {path} is given more than once (first as {unique[key]}); it is prepared once")
            continue
        unique[key] = path
    return list(unique.values())


def _folder_media(folder: Path, log: Callable[[str], None]) -> list[Path]:
    """The images (by content) and videos (by name) directly in `folder`, sorted by name."""
    media, others = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        is_media = path.suffix.lower() in VIDEO_SUFFIXES or is_image_file(path)
        (media if is_media else others).append(path)
    if others:
        log(f"note: {folder}: {len(others)} file(s) that are neither images nor videos were "
            f"skipped (such as {others[0].name})")
    return media


def _check_stems(paths: list[Path]) -> None:
    """Fail before any work when two inputs would be written to the same crop folder."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise InputError(
                f"{seen[path.stem]} and {path} would both become {CROPS}/{path.stem}; rename one"
            )
        seen[path.stem] = path


def _is_complete(out: Path, stem: str) -> bool:
    return (out / TRACKS / f"{stem}.csv").is_file() and (out / CROPS / stem).is_dir()


def _image_frames(path: Path) -> Iterator[VideoFrame]:
    """An image as a video of one frame at time 0."""
    yield VideoFrame(0, 0.0, read_image(path))


def _prepare_one(path: Path, out: Path, tracker: FaceTracker, image: bool,
                 progress: bool) -> tuple[int, int]:
    """Prepare one video or image through the scratch folder; returns (frames, faces)."""
    n_frames = 1 if image else probe_video(path).n_frames
    scratch_crops = out / SCRATCH / path.stem
    scratch_track = out / SCRATCH / f"{path.stem}.csv"
    shutil.rmtree(scratch_crops, ignore_errors=True)  # left by a run that was killed
    scratch_crops.mkdir()
    tracker.reset()
    frames = faces = 0
    try:
        with (
            scratch_track.open("w", newline="") as table,
            tqdm(total=n_frames, desc=path.stem, unit="frame", disable=not progress or image,
                 leave=False) as bar,
        ):
            rows = csv.writer(table, lineterminator="\n")
            rows.writerow(MANIFEST_COLUMNS)
            for frame in _image_frames(path) if image else iter_frames(path):
                box, crop = tracker.track(frame.rgb)
                if crop is not None:
                    write_jpeg(scratch_crops / f"{frame.index + 1:05d}.jpg", crop, JPEG_QUALITY)
                    faces += 1
                rows.writerow(_manifest_row(path.stem, frame, box, timed=not image))
                frames += 1
                bar.update()
        if not image:  # the raw video gives audio and frame rate; an image has neither
            _link_or_copy(path, out / RAW / path.name)
        crops = out / CROPS / path.stem
        shutil.rmtree(crops, ignore_errors=True)  # moved in by a run killed before its track
        scratch_crops.rename(crops)
        scratch_track.replace(out / TRACKS / f"{path.stem}.csv")  # last: the input is complete
    except BaseException:
        shutil.rmtree(scratch_crops, ignore_errors=True)
        scratch_track.unlink(missing_ok=True)
        raise
    return frames, faces


def _manifest_row(stem: str, frame: VideoFrame, box: Box | None, timed: bool) -> list[str | int]:
    """One manifest line; an image (`timed` False) has no timestamp."""
    timestamp = f"{frame.timestamp:.4f}" if timed else ""
    if box is None:
        return [stem, frame.index + 1, timestamp, 0, "", "", "", ""]
    return [stem, frame.index + 1, timestamp, 1,
            round(box.x), round(box.y), round(box.w), round(box.h)]


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
