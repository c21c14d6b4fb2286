"""Malformed inputs, fuzzed with Hypothesis: each ends in one sentence naming the file (and line).

Covers the Aff-wild2 annotation reader, labels.csv / manifest.csv, the IDX reader, safetensors
and JSON run files, and a foreign `.pth` whose pickle would run code.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from emodistill.core.errors import InputError
from emodistill.data.annotations import read_annotation_file
from emodistill.data.manifest import label_columns, read_manifest
from emodistill.data.ood import read_idx
from emodistill.tasks import PAPER_TASKS

# Bounded so that the whole file runs in seconds on two shared cores; a longer hunt for bugs:
# EMODISTILL_FUZZ_EXAMPLES=5000 pytest tests/test_reliability_inputs.py
FUZZ = settings(max_examples=int(os.environ.get("EMODISTILL_FUZZ_EXAMPLES", "50")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# Cells a person, a spreadsheet or a broken export might write, good and bad.
CELLS = st.sampled_from([
    "0", "1", "-1", "-5", "3", "6", "7", "0.5", "-0.25", "1.0", "2", "", " ", " 1 ", "nan", "inf",
    "-inf", "1e400", "abc", "0x1", "+1", ".5", "-", "1_0", "１", "²", "\u00a01", "1,5", "\"1\"", "\x00",
    "9" * 25, "-0", "1e-3", "é", "\ufeff1",
])
TEXT_CELLS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r"])


def assert_one_sentence(error: InputError, path: Path) -> None:
    message = str(error)
    assert message.startswith(str(path)), message
    assert "\n" not in message and "Traceback" not in message, message


def line_of(error: InputError, path: Path) -> int | None:
    match = re.match(rf"{re.escape(str(path))}:(\d+): ", str(error))
    return int(match.group(1)) if match else None


# --- Aff-wild2 annotation files ---------------------------------------------------------------

def good_line(task, draw) -> str:
    if task.kind == "binary":
        return ",".join(draw(st.lists(st.sampled_from(["0", "1", "-1"]), min_size=12, max_size=12)))
    if task.kind == "categorical":
        return draw(st.sampled_from(["0", "3", "6", "-1"]))
    return ",".join(draw(st.lists(st.sampled_from(["0.5", "-0.25", "1", "-5"]), min_size=2, max_size=2)))


@st.composite
def annotation_files(draw) -> tuple:
    """A task and the text of an annotation file for it: good lines with random damage."""
    task = draw(st.sampled_from(PAPER_TASKS.tasks))
    header = draw(st.sampled_from([",".join(label_columns(task)), "", "Neutral,Anger", "1,0"]))
    lines = [good_line(task, draw) for _ in range(draw(st.integers(0, 6)))]
    for _ in range(draw(st.integers(0, 3))):
        damaged = ",".join(draw(st.lists(st.one_of(CELLS, TEXT_CELLS), min_size=0, max_size=14)))
        lines.insert(draw(st.integers(0, len(lines))), damaged)
    return task, draw(LINE_ENDS).join([header, *lines]) + draw(st.sampled_from(["", "\n", "\n\n"]))


@FUZZ
@given(annotation_files())
@example((PAPER_TASKS[0], "AU1\n" + "\x0c" * 3))
def test_annotation_reader_fuzzed(scratch: Path, case: tuple) -> None:
    task, text = case
    path = scratch / "video.txt"
    path.write_bytes(text.encode("utf-8"))
    try:
        labels, _ = read_annotation_file(task, path)
    except InputError as error:
        assert_one_sentence(error, path)
        return
    assert labels.values.shape == (len(labels.frame_index), len(label_columns(task)))


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xff\xfe\x00A")
def test_annotation_reader_on_random_bytes(scratch: Path, data: bytes) -> None:
    path = scratch / "video.txt"
    path.write_bytes(data)
    for task in PAPER_TASKS:
        try:
            read_annotation_file(task, path)
        except InputError as error:
            assert_one_sentence(error, path)


@FUZZ
@given(st.data())
def test_annotation_errors_name_the_damaged_line(scratch: Path, data: st.DataObject) -> None:
    task = data.draw(st.sampled_from(PAPER_TASKS.tasks))
    lines = [good_line(task, data.draw) for _ in range(data.draw(st.integers(1, 8)))]
    out_of_range = {"binary": "2", "categorical": "7", "binned": "1.5"}[task.kind]
    cells = lines[0].split(",")
    # An empty cell is a blank line in a one-column file, and trailing blank lines are no frames.
    empty = [""] if len(cells) > 1 else []
    bad_cell = data.draw(st.sampled_from(["abc", out_of_range, "nan", "1e400", *empty]))
    cells[data.draw(st.integers(0, len(cells) - 1))] = bad_cell
    at = data.draw(st.integers(0, len(lines)))
    lines.insert(at, ",".join(cells))
    path = scratch / "video.txt"
    path.write_text("\n".join([",".join(label_columns(task)), *lines]) + "\n")
    with pytest.raises(InputError) as error:
        read_annotation_file(task, path)
    assert_one_sentence(error.value, path)
    assert line_of(error.value, path) == at + 2  # line 1 is the header


# --- labels.csv / manifest.csv ----------------------------------------------------------------

MANIFEST_COLUMNS = ["video", "frame", "split", *(c for task in PAPER_TASKS for c in label_columns(task))]


def mostly(draw, good: st.SearchStrategy, bad: st.SearchStrategy) -> str:
    """A good value nine times in ten: damage one thing at a time, so deep checks are reached."""
    return draw(good) if draw(st.integers(0, 9)) else draw(bad)


BAD_FRAMES = st.sampled_from(["0", "-1", "1.5", "x", "", "9" * 30, "²", "１", "+2", "1_0"])


@st.composite
def manifests(draw) -> str:
    """A manifest: usually the expected columns (shuffled, maybe extra ones) and rows in which
    now and then one cell, a task's group of cells or the row's length is wrong."""
    columns = [c for c in MANIFEST_COLUMNS if c != "split" or draw(st.booleans())]
    if draw(st.integers(0, 4)) == 0:  # an image data set: `image` stands for video and frame
        columns = ["image", *(c for c in columns if c not in ("video", "frame"))]
    if draw(st.integers(0, 9)) == 0:
        columns.remove(draw(st.sampled_from(columns)))
    columns += draw(st.lists(st.sampled_from(["extra", "Video", " FRAME ", ""]), max_size=2))
    columns = draw(st.permutations(columns))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        values = {
            "video": mostly(draw, st.sampled_from(["clip01", "clip02", "clip01_left"]), st.sampled_from(["", "é"])),
            "frame": mostly(draw, st.sampled_from(["1", "2", "3", " 4 "]), BAD_FRAMES),
            "split": mostly(draw, st.sampled_from(["train", "val", "TRAIN"]), st.sampled_from(["test", ""])),
            "image": mostly(draw, st.sampled_from(["a.jpg", "faces/b.png", "c.jpg"]),
                            st.sampled_from(["", ".", "/", "a.jpg/", "é.jpg"])),
        }
        for task in PAPER_TASKS:
            names = label_columns(task)
            if draw(st.booleans()):
                good = [good_line(task, draw)] if len(names) == 1 else good_line(task, draw).split(",")
                cells = [mostly(draw, st.just(cell), st.one_of(CELLS, TEXT_CELLS)) for cell in good]
            else:
                cells = [mostly(draw, st.just(""), CELLS) for _ in names]
            values.update(zip(names, cells, strict=True))
        row = [values.get(column, draw(TEXT_CELLS)) for column in columns]
        if draw(st.integers(0, 19)) == 0:
            row = row[: draw(st.integers(0, len(row)))]  # a short row
        rows.append(row)
    quoted = [",".join(json.dumps(c) if ("," in c or '"' in c) else c for c in r) for r in rows]
    return draw(LINE_ENDS).join([",".join(columns), *quoted]) + "\n"


@FUZZ
@given(manifests(), st.sampled_from(["train", "val"]))
@example("video,frame,split," + ",".join(MANIFEST_COLUMNS[3:]) + "\n", "train")
def test_manifest_reader_fuzzed(scratch: Path, text: str, split: str) -> None:
    path = scratch / "labels.csv"
    path.write_bytes(text.encode("utf-8"))
    try:
        label_set = read_manifest(path, split, PAPER_TASKS)
    except InputError as error:
        assert_one_sentence(error, path)
        return
    for frames in label_set.frames.values():
        assert (frames >= 0).all()


@FUZZ
@given(st.binary(max_size=400))
@example(b"video,frame\n\x00\x00")
@example(b'"' + b"a" * 140_000)
def test_manifest_reader_on_random_bytes(scratch: Path, data: bytes) -> None:
    path = scratch / "manifest.csv"
    path.write_bytes(data)
    try:
        read_manifest(path, "train", PAPER_TASKS)
    except InputError as error:
        assert_one_sentence(error, path)


# --- IDX (Fashion-MNIST) ----------------------------------------------------------------------

@st.composite
def idx_files(draw) -> bytes:
    """Near-valid IDX bytes: a magic number, dimensions and data, each possibly wrong."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]))
    dims = draw(st.lists(st.integers(0, 6), max_size=4))
    ndim = draw(st.one_of(st.just(len(dims)), st.integers(0, 255)))
    head = bytes([draw(st.sampled_from([0, 1])), 0, code, ndim]) + struct.pack(f">{len(dims)}I", *dims)
    size = int(np.prod(dims)) if dims else 1
    body = draw(st.binary(min_size=0, max_size=size * 8 + 4))
    if draw(st.booleans()):
        dims_huge = struct.pack(">2I", 2**32 - 1, 2**32 - 1)
        head = bytes([0, 0, code, 2]) + dims_huge
    return head + body


@FUZZ
@given(st.one_of(idx_files(), st.binary(max_size=64)), st.booleans())
def test_idx_reader_fuzzed(scratch: Path, data: bytes, compressed: bool) -> None:
    import gzip

    path = scratch / ("images-idx3-ubyte.gz" if compressed else "images-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if compressed and data[:1] != b"\xff" else data)
    try:
        array = read_idx(path)
    except InputError as error:
        assert_one_sentence(error, path)
        return
    assert array.dtype.isnative


# --- safetensors and JSON run files -----------------------------------------------------------
