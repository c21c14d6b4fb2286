"""Where an Aff-wild2 copy keeps its labels, crops and raw videos, and which release it is, found
from the folder itself (every ABAW release 2021-2025, or a CSV manifest of one's own).

Layouts known (the data root is the folder given as --data):
- 2021 (ABAW2): `annotations/{AU_Set,EXPR_Set,VA_Set}/{Train_Set,Validation_Set}/<video>.txt`,
  also nested as `annotations/annotations/`.
- 2022-2025 (ABAW3-ABAW8): an annotation root such as `Third ABAW Annotations`,
  `5th_ABAW_Annotations` or `6th ABAW Annotations`, at most two levels below the data root,
  holding `AU_Detection_Challenge`, `EXPR_Classification_Challenge` (or
  `EXPR_Recognition_Challenge`), `VA_Estimation_Challenge`, each with the split folders, and in
  2022 `MTL_Challenge/{train_set,validation_set}.txt`.
- The multi-task releases (ABAW4 2022, ABAW7 2024): `training_set_annotations.txt` and
  `validation_set_annotations.txt`, at most three levels down.
- A CSV manifest: `labels.csv` in the root (or any file given as `labels`).
Crops are read from every `cropped_aligned*` folder up to two levels down (the 2023+ copies
split them over `cropped_aligned/` and `cropped_aligned_new_50_vids/`, some unpack them one level
deeper or under `batch1/`, `batch2/`); raw videos from `videos/`, `batch1/`, `batch2/` and
`new_vids/` and the folders below them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from emodistill.core.errors import InputError
from emodistill.data.crops import CROPS
from emodistill.data.media import VIDEO_SUFFIXES
from emodistill.tasks import PAPER_RELEASE, RELEASES, Release, release

SPLIT_FOLDERS = {"train": ("Train_Set", "Training_Set"), "val": ("Validation_Set",)}
# Task -> the folder names its annotations live in: 2021, then 2022+.
TASK_FOLDERS = {
    "AU": ("AU_Set", "AU_Detection_Challenge"),
    "EXPR": ("EXPR_Set", "EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "VA": ("VA_Set", "VA_Estimation_Challenge"),
}
ABAW2_FOLDERS = tuple(names[0] for names in TASK_FOLDERS.values())
CHALLENGE_FOLDERS = (*(n for names in TASK_FOLDERS.values() for n in names[1:]), "MTL_Challenge")
# split -> the multi-task file names: ABAW3's MTL_Challenge, then ABAW4 / ABAW7.
MTL_FILES = {"train": ("train_set.txt", "training_set_annotations.txt"),
             "val": ("validation_set.txt", "validation_set_annotations.txt")}
CROP_PREFIX = CROPS  # cropped_aligned, cropped_aligned_new_50_vids
VIDEO_FOLDERS = ("videos", "batch1", "batch2", "new_vids")
MANIFEST = "labels.csv"
ORDINALS = {"second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8}
KNOWN_LAYOUTS = ("annotations/{AU,EXPR,VA}_Set (ABAW2, 2021)",
                 "an '<N>th ABAW Annotations' folder with *_Challenge folders (ABAW3-ABAW8, 2022-2025)",
                 "training_set_annotations.txt and validation_set_annotations.txt (ABAW4/ABAW7)",
                 f"a {MANIFEST} manifest")


@dataclass
class Layout:
    """Where one data root keeps each thing, and the release its labels follow."""

    root: Path
    release: Release
    how: str  # what the release was told by, for the load summary
    labels_from: str  # "task folders" | "multi-task files" | "manifest"
    annotations: Path | None = None  # the folder holding the task folders
    task_folders: dict[str, Path] = field(default_factory=dict)  # task -> folder of its split folders
    mtl_files: dict[str, Path] = field(default_factory=dict)  # split -> multi-task file
    manifest: Path | None = None
    crop_dirs: list[Path] = field(default_factory=list)  # folders of <video>/NNNNN.jpg
    video_dirs: list[Path] = field(default_factory=list)  # folders searched for raw videos

    def describe(self) -> str:
        """"release ABAW6 (2024), told by the folder 6th_ABAW_Annotations"."""
        return f"release {self.release.label}, {self.how}"


def _subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted (none when it cannot be listed)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _opaque(folder: Path) -> bool:
    """A crop folder holds a folder of thousands of crops per video and none of a layout's other parts."""
    return folder.name.lower().startswith(CROP_PREFIX)


def _folders(root: Path, depth: int, top: bool = True) -> Iterator[tuple[Path, int]]:
    """(folder, depth) of root and every folder below it up to `depth` levels, sorted; crop
    folders below the root are yielded but not looked into."""
    yield root, 0
    if depth == 0 or (not top and _opaque(root)):
        return
    for child in _subfolders(root):
        for folder, level in _folders(child, depth - 1, top=False):
            yield folder, level + 1


def release_in_name(path: Path) -> Release | None:
    """The release a folder's name (or a parent's, up to two) spells: `6th_ABAW_Annotations`,
    `Third ABAW Annotations`, `ABAW5`, ..."""
    for part in [path.name, path.parent.name, path.parent.parent.name]:
        text = part.lower()
        match = re.search(r"(\d+)(?:st|nd|rd|th)[ _-]*abaw|abaw[ _-]*(\d+)", text)
        number = next((int(g) for g in match.groups() if g), None) if match else None
        if number is None:
            number = next((n for word, n in ORDINALS.items() if re.search(rf"\b{word}[ _-]*abaw", text)), None)
        if number is not None and f"ABAW{number}" in RELEASES:
            return RELEASES[f"ABAW{number}"]
    return None


def _has(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_dir() for name in names)


def _single_task_root(root: Path) -> tuple[Path, str] | None:
    """(annotation root, "2021" | "2022") of the first folder holding task folders."""
    for folder, _ in _folders(root, 2):
        if folder.name.lower() == "annotations" and _has(folder, ABAW2_FOLDERS):
            return folder, "2021"
        if _has(folder, CHALLENGE_FOLDERS):
            return folder, "2022"
    return None


def _mtl_pair(root: Path) -> dict[str, Path]:
    """split -> the ABAW4/ABAW7 multi-task files, found up to three levels down."""
    for folder, _ in _folders(root, 3):
        found = {split: folder / names[1] for split, names in MTL_FILES.items() if (folder / names[1]).is_file()}
        if found:
            return found
    return {}


def find_crop_dirs(root: Path) -> list[Path]:
    """Every `cropped_aligned*` folder up to two levels down that holds video folders; one that
    wraps further `cropped_aligned*` folders (a copy unpacked one level deeper) is looked through."""
    found = []
    for folder, _ in _folders(root, 2):
        if folder == root or not folder.name.lower().startswith(CROP_PREFIX):
            continue
        subs = _subfolders(folder)
        inner = [p for p in subs if p.name.lower().startswith(CROP_PREFIX)]
        found += inner + ([folder] if len(inner) < len(subs) else [])
    return found


def _video_dirs(root: Path) -> list[Path]:
    """The raw-video folders up to two levels down (their own sub-folders are searched too)."""
    dirs = [f for f, _ in _folders(root, 2) if f.name.lower() in VIDEO_FOLDERS]
    return [d for d in dirs if not any(parent in dirs for parent in d.parents)]


def find_layout(root: Path, release_name: str | None = None, labels: Path | None = None) -> Layout:
    """The layout of a data root; `release_name` overrides the release the folder tells, and a
    `labels` file (CSV manifest, or a multi-task file) stands for the annotation folders."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; expected a data root with annotations and cropped_aligned/")
    forced = release(release_name) if release_name else None
    layout = _label_source(root, labels)
    if forced is not None:
        layout.release, layout.how = forced, f"as asked (--release); {layout.how}"
    layout.crop_dirs = find_crop_dirs(root)
    if not layout.crop_dirs:
        raise InputError(f"{root} holds no {CROP_PREFIX}/ folder (searched two levels down); expected one folder "
                         "of face crops per video in it")
    layout.video_dirs = _video_dirs(root)
    return layout


def _label_source(root: Path, labels: Path | None) -> Layout:
    """The layout's labels and the release they tell, before crops and videos are looked for."""
    if labels is not None:
        labels = Path(labels)
        mtl = mtl_files_for(labels)
        if mtl:
            told = release_in_name(labels) or RELEASES["ABAW3" if labels.name in MTL_FILES["train"][:1] else "ABAW4"]
            return Layout(root, told, f"multi-task files {', '.join(p.name for p in mtl.values())}",
                          "multi-task files", mtl_files=mtl)
        return Layout(root, release(PAPER_RELEASE), f"CSV manifest {labels} (7 expressions unless --release)",
                      "manifest", manifest=labels)
    single = _single_task_root(root)
    if single is not None:
        folder, year = single
        tasks = {name: folder / n for name, names in TASK_FOLDERS.items() for n in names if (folder / n).is_dir()}
        if year == "2021":
            return Layout(root, release(PAPER_RELEASE), f"the 2021 layout {_shown(folder, root)}/*_Set",
                          "task folders", folder, task_folders=tasks)
        mtl = mtl_files_for(folder / "MTL_Challenge")
        told = release_in_name(folder)
        how = (f"told by the folder name {folder.name!r}" if told is not None else
               f"{_shown(folder, root)} does not name its edition: the 2022+ conventions (8 expressions) apply, "
               "and --release names it")
        return Layout(root, told or RELEASES["ABAW3"], how, "task folders", folder, task_folders=tasks,
                      mtl_files=mtl)
    mtl = _mtl_pair(root)
    if mtl:
        told = release_in_name(next(iter(mtl.values())).parent)
        how = "multi-task files " + ", ".join(_shown(p, root) for p in mtl.values())
        return Layout(root, told or RELEASES["ABAW4"], how if told else f"{how} (ABAW4 and ABAW7 share them)",
                      "multi-task files", mtl_files=mtl)
    if (root / MANIFEST).is_file():
        return Layout(root, release(PAPER_RELEASE), f"CSV manifest {MANIFEST} (7 expressions unless --release)",
                      "manifest", manifest=root / MANIFEST)
    seen = sorted(f"{_shown(f, root)}/" for f, level in _folders(root, 2) if level > 0)[:12]
    raise InputError(
        f"{root} is no Aff-wild2 layout this version knows: it holds {', '.join(seen) or 'no folders'}; "
        f"expected {'; or '.join(KNOWN_LAYOUTS)}"
    )


def mtl_files_for(path: Path) -> dict[str, Path]:
    """split -> multi-task file, given one of the pair or the folder holding them ({} for anything else)."""
    folder, name = (path, None) if path.is_dir() else (path.parent, path.name)
    for position in range(2):
        pair = {split: folder / names[position] for split, names in MTL_FILES.items()}
        if (name is None or name in (p.name for p in pair.values())) and any(p.is_file() for p in pair.values()):
            return {split: p for split, p in pair.items() if p.is_file()}
    return {}


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return str(path)


def split_folder(layout: Layout, task: str, split: str) -> Path | None:
    """The folder of one task's annotation files for a split; InputError when both spellings
    of the training folder are there."""
    folder = layout.task_folders.get(task)
    if folder is None:
        return None
    present = [folder / name for name in SPLIT_FOLDERS[split] if (folder / name).is_dir()]
    if len(present) > 1:
        raise InputError(f"{folder} holds both {' and '.join(SPLIT_FOLDERS[split])}; keep one")
    return present[0] if present else None


def crop_folders(crop_dirs: list[Path], videos: list[str]) -> dict[str, Path]:
    """Video -> its crop folder, from the first of `crop_dirs` (`Layout.crop_dirs`) that has it."""
    found: dict[str, Path] = {}
    for crops in crop_dirs:
        try:
            names = set(os.listdir(crops))
        except OSError:
            continue
        for video in videos:
            if video not in found and video in names:
                found[video] = crops / video
    return found


def raw_video_files(layout: Layout) -> dict[str, Path]:
    """File stem -> raw video under the layout's video folders (the first of a stem, sorted)."""
    by_stem: dict[str, Path] = {}
    for folder in layout.video_dirs:
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                by_stem.setdefault(path.stem, path)
    return by_stem
