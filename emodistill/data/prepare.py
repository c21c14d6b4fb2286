"""`prepare`: raw videos and images -> the Aff-wild2 layout (aligned face crops, raw video beside
them, a manifest); an image becomes a video of one frame, `cropped_aligned/<image stem>/00001.jpg`.

Every face is followed: a video with one person gives `cropped_aligned/<video>/`, one with more
gives a folder per person, `<video>_face1`, `<video>_face2`, ... (as Aff-wild2 names its
`_left`/`_right` people). Each input is written to a scratch folder and moved into place when
whole, so an interrupted or failed run keeps every finished input and a rerun only does the rest.
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

import numpy as np
from tqdm import tqdm

from emodistill.core.errors import InputError
from emodistill.data.crops import CROPS
from emodistill.data.frontend import (
    DETECT_EVERY,
    LANDMARK_COLUMNS,
    FaceCrop,
    FrontEnd,
    VideoFrame,
    iter_frames,
    probe_video,
    read_image,
    write_jpeg,
)
from emodistill.data.frontend.inputs import expand_inputs, is_image
from emodistill.data.manifest import raw_video_name

RAW = Path("videos") / "batch1"  # out/videos/batch1/<video file>: audio and frame rate
TRACKS = "tracks"  # out/tracks/<video>.csv: that video's manifest rows; written last
SCRATCH = ".partial"  # videos being prepared
MANIFEST = "manifest.csv"
# `video` is the crop folder of the row's face (the input's stem on a row without a face).
MANIFEST_COLUMNS = ("video", "frame", "timestamp", "face", "face_id", "x", "y", "w", "h", *LANDMARK_COLUMNS)
JPEG_QUALITY = 95


@dataclass
class PrepareSummary:
    """What one `prepare` call did."""

    detector: str = ""  # where the faces came from: the detector's name, or the landmarks file
    videos: int = 0  # videos prepared by this call
    images: int = 0  # images prepared by this call
    skipped: int = 0  # inputs already complete from an earlier run
    frames: int = 0  # frames decoded (an image is one frame)
    faces: int = 0  # frames with at least one face
    crops: int = 0  # faces written as JPEG crops (more than `faces` when frames hold several)
    people: int = 0  # persons followed, summed over the inputs (each gets a crop folder)
    turned: int = 0  # videos turned upright as their display matrix says
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
            f"({self.detection_rate:.1%} found by {self.detector}), {self.people} "
            f"{'person' if self.people == 1 else 'people'} followed, {self.crops} crops"
            f"{f', {self.turned} video(s) turned as their display matrix says' if self.turned else ''}, "
            f"in {self.seconds:.1f} s ({self.frames_per_second:.1f} frames/s)"
        )


def prepare(
    inputs: Sequence[Path | str],
    out: Path,
    size: int = 112,
    progress: bool = True,
    detect_every: int = DETECT_EVERY,
    detector: str | None = None,
    landmarks: Path | None = None,
    log: Callable[[str], None] = print,
    max_faces: int | None = None,
) -> PrepareSummary:
    """Find, follow and align every face of every video and image into `out`, skipping inputs
    already done. `inputs` are files, folders or glob patterns; `detector` is mtcnn, dlib or haar
    (default mtcnn); `detect_every`: full detection every k-th frame, faces followed in between;
    `landmarks` a CSV file of the faces' landmarks to use instead of a detector (format:
    `emodistill.data.frontend.given`); `max_faces`: follow at most this many (the largest)."""
    out = Path(out)
    if size < 1:
        raise InputError(f"the crop size must be a positive number of pixels, got {size}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: the output path exists and is not a folder")
    paths = expand_inputs(inputs, log)
    _check_stems(paths)
    front = FrontEnd.build(detector, size, detect_every, max_faces, landmarks, log)
    for folder in (CROPS, RAW, TRACKS, SCRATCH):
        (out / folder).mkdir(parents=True, exist_ok=True)
    summary = PrepareSummary(detector=front.source)
    start = time.perf_counter()
    try:
        with tqdm(total=len(paths), desc="prepare", unit="input", disable=not progress) as bar:
            for path in paths:
                bar.update()
                if _is_complete(out, path.stem):
                    summary.skipped += 1
                    continue
                image = is_image(path)
                done = _prepare_one(path, out, front, image, progress)
                summary.images += image
                summary.videos += not image
                summary.frames += done.frames
                summary.faces += done.faces
                summary.crops += done.crops
                summary.people += done.people
                summary.turned += done.turned
    finally:
        _write_manifest(out)
        shutil.rmtree(out / SCRATCH, ignore_errors=True)
        summary.seconds = time.perf_counter() - start
    return summary


def _check_stems(paths: list[Path]) -> None:
    """Fail before any work when two inputs could be written to the same crop folder: the same
    stem, or one named as a person of the other (`talk_face2` beside `talk`)."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise InputError(
                f"{seen[path.stem]} and {path} would both become {CROPS}/{path.stem}; rename one"
            )
        seen[path.stem] = path
    for stem, path in seen.items():
        base = raw_video_name(stem)
        if base != stem and base in seen:
            raise InputError(f"{seen[base]} and {path} could both become {CROPS}/{stem} (the "
                             f"folder of a second person in {seen[base].name}); rename one")


def _is_complete(out: Path, stem: str) -> bool:
    return (out / TRACKS / f"{stem}.csv").is_file()


def _image_frames(path: Path) -> Iterator[VideoFrame]:
    """An image as a video of one frame at time 0."""
    yield VideoFrame(0, 0.0, read_image(path))


@dataclass
class _Prepared:
    """What preparing one input gave."""

    frames: int = 0
    faces: int = 0  # frames with a face
    crops: int = 0
    people: int = 0
    turned: int = 0  # 1 when the video was turned as its display matrix says


def _prepare_one(path: Path, out: Path, front: FrontEnd, image: bool, progress: bool) -> _Prepared:
    """Prepare one video or image through the scratch folder (a sub-folder per person, named as
    in the end once the number of people is known)."""
    info = None if image else probe_video(path)
    scratch = out / SCRATCH / path.stem
    shutil.rmtree(scratch, ignore_errors=True)  # left by a run that was killed
    scratch.mkdir()
    front.start(path.stem)
    done = _Prepared(turned=int(bool(info and info.rotation)))
    rows: list[tuple[VideoFrame, FaceCrop | None]] = []
    try:
        with tqdm(total=1 if image else info.n_frames, desc=path.stem, unit="frame",
                  disable=not progress or image, leave=False) as bar:
            for frame in _image_frames(path) if image else iter_frames(path, thread=True):
                faces = front.faces(frame.rgb, frame.index + 1)
                for face in faces:
                    person = scratch / str(face.face_id)
                    person.mkdir(exist_ok=True)
                    write_jpeg(person / f"{frame.index + 1:05d}.jpg", face.crop, JPEG_QUALITY)
                rows += [(frame, face) for face in faces] or [(frame, None)]
                done.frames += 1
                done.faces += bool(faces)
                done.crops += len(faces)
                bar.update()
        people = sorted(int(p.name) for p in scratch.iterdir())
        done.people = len(people)
        folders = {face_id: path.stem if len(people) == 1 else f"{path.stem}_face{face_id}" for face_id in people}
        with (out / SCRATCH / f"{path.stem}.csv").open("w", newline="") as table:
            writer = csv.writer(table, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(_manifest_row(path.stem, frame, face, folders, timed=not image) for frame, face in rows)
        if not image:  # the raw video gives audio and frame rate; an image has neither
            _link_or_copy(path, out / RAW / path.name)
        _move_crops(out, path.stem, scratch, folders)
        (out / SCRATCH / f"{path.stem}.csv").replace(out / TRACKS / f"{path.stem}.csv")  # last: complete
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        (out / SCRATCH / f"{path.stem}.csv").unlink(missing_ok=True)
        raise
    return done


def _move_crops(out: Path, stem: str, scratch: Path, folders: dict[int, str]) -> None:
    """Move each person's crops into place, replacing what a run killed before its track file
    had moved in. A video without a face still gets its (empty) folder, as Aff-wild2's do."""
    for old in [out / CROPS / stem, *(out / CROPS).glob(f"{glob.escape(stem)}_face[0-9]*")]:
        shutil.rmtree(old, ignore_errors=True)
    if not folders:
        (out / CROPS / stem).mkdir()
    for face_id, name in folders.items():
        (scratch / str(face_id)).rename(out / CROPS / name)
    shutil.rmtree(scratch)


def _manifest_row(stem: str, frame: VideoFrame, face: FaceCrop | None, folders: dict[int, str],
                  timed: bool) -> list[str | int | float]:
    """One manifest line; an image (`timed` False) has no timestamp."""
    timestamp = f"{frame.timestamp:.4f}" if timed else ""
    if face is None:
        return [stem, frame.index + 1, timestamp, 0, "", "", "", "", "", *[""] * len(LANDMARK_COLUMNS)]
    box = face.face.box
    return [folders[face.face_id], frame.index + 1, timestamp, 1, face.face_id, round(box.x), round(box.y),
            round(box.w), round(box.h), *np.round(face.face.landmarks.ravel(), 1).tolist()]


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
