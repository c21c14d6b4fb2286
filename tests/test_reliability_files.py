"""Malformed model and run files, fuzzed with Hypothesis: weights that do not fit, damaged
safetensors, JSON run files and configs, and a foreign pickle that would run code; each ends in one
sentence naming the file."""

from __future__ import annotations

import builtins
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.numpy import save as save_numpy_bytes

# Bounded so that the whole file runs in seconds on two shared cores; a longer hunt for bugs:
# EMODISTILL_FUZZ_EXAMPLES=5000 pytest tests/test_reliability_inputs.py
from test_reliability_inputs import (
    FUZZ,
    assert_one_sentence,
)

from emodistill.core.checkpoints import load_arrays, load_weights, read_json, save_weights
from emodistill.core.errors import InputError


def small_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))


@st.composite
def foreign_states(draw) -> dict[str, np.ndarray]:
    """small_model's state with a key dropped or added, a shape or a dtype changed."""
    state = {k: v.numpy() for k, v in small_model().state_dict().items()}
    change = draw(st.sampled_from(["drop", "add", "shape", "dtype", "scalar"]))
    key = draw(st.sampled_from(sorted(state)))
    if change == "drop":
        del state[key]
    elif change == "add":
        state["head.extra.weight"] = np.zeros((2, 2), np.float32)
    elif change == "shape":
        state[key] = np.zeros((*state[key].shape, 2), state[key].dtype)
    elif change == "dtype":
        wrong = {np.dtype(np.float32): np.float64, np.dtype(np.int64): np.float32}[state[key].dtype]
        state[key] = state[key].astype(wrong)
    else:
        state[key] = np.array(1.0, np.float32)
    return state


@FUZZ
@given(foreign_states())
def test_weights_that_do_not_fit_are_refused(scratch: Path, state: dict[str, np.ndarray]) -> None:
    path = scratch / "member-0.safetensors"
    path.write_bytes(save_numpy_bytes(state))
    with pytest.raises(InputError) as error:
        load_weights(path, small_model())
    assert_one_sentence(error.value, path)
    assert "does not fit this model" in str(error.value)


def safetensors_bytes() -> bytes:
    return save_numpy_bytes({"AU": np.arange(24, dtype=np.float32).reshape(2, 12), "EXPR": np.ones((2, 7), np.float32)})


@st.composite
def damaged_safetensors(draw) -> bytes:
    """Valid safetensors bytes, truncated, with bytes flipped, or with a rewritten header."""
    data = bytearray(safetensors_bytes())
    how = draw(st.sampled_from(["truncate", "flip", "header"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    header = {
        "AU": {"dtype": draw(st.sampled_from(["F32", "F64", "BF16", "F8_E4M3", "I64", "BOOL", "X"])),
               "shape": draw(st.lists(st.integers(0, 30), max_size=3)),
               "data_offsets": [0, draw(st.integers(0, 200))]},
    }
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"a": "b"}, {"a": 1}, "x"]))
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + bytes(draw(st.integers(0, 200)))


def bfloat16_safetensors() -> bytes:
    """A well-formed file of a dtype NumPy has no type for."""
    header = json.dumps({"AU": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(4)


@FUZZ
@given(damaged_safetensors())
@example(bfloat16_safetensors())
def test_damaged_safetensors_files(scratch: Path, data: bytes) -> None:
    path = scratch / "soft_labels.safetensors"
    path.write_bytes(data)
    for load in (load_arrays, lambda p: load_weights(p, small_model())):
        try:
            load(path)
        except InputError as error:
            assert_one_sentence(error, path)


@FUZZ
@given(st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                 max_leaves=8).map(lambda value: json.dumps(value).encode()),
).map(lambda data: data[: len(data) // 2] if data[:1] == b"{" else data))
@example(b"[" * 100_000)
@example(b'{"a": ' + b"9" * 5_000 + b"}")
@example(b"\xff\xfe{}")
def test_json_run_files_fuzzed(scratch: Path, data: bytes) -> None:
    path = scratch / "member-0.json"
    path.write_bytes(data)
    try:
        read_json(path)
    except InputError as error:
        assert_one_sentence(error, path)


RUN_FIELDS = ["data", "preset", "modality", "members", "generations", "seed", "backbone_weights"]
TRAIN_FIELDS = ["epochs", "lr", "lr_step", "batches_per_epoch", "clip_length", "clips_per_task", "reweight"]
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 30), st.text(max_size=4),
                        st.lists(st.integers(), max_size=2))


@st.composite
def run_configs(draw) -> object:
    """run.json as a later version, an editor or a crash might leave it."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON_VALUES)
    keys = st.one_of(st.sampled_from(RUN_FIELDS), st.text(max_size=5))
    config = draw(st.dictionaries(keys, JSON_VALUES, max_size=8))
    if draw(st.booleans()):
        config["data"] = "data/synth"
    if draw(st.booleans()):
        train_keys = st.one_of(st.sampled_from(TRAIN_FIELDS), st.text(max_size=5))
        config["train"] = draw(st.one_of(st.dictionaries(train_keys, JSON_VALUES, max_size=4), JSON_VALUES))
    return config


@FUZZ
@given(run_configs())
@example({"data": "data/synth", "train": {"bogus": 1}})
@example([1, 2])
@example({"data": "data/synth", "train": {"\n": 0}})  # found by the fuzzer: the field's name broke the line
def test_run_config_files_fuzzed(scratch: Path, config: object) -> None:
    from emodistill.run import Run, RunConfig

    run = Run(scratch / "run")
    run.root.mkdir(exist_ok=True)
    run.config_path.write_text(json.dumps(config))
    try:
        assert isinstance(run.config(), RunConfig)
    except InputError as error:
        assert_one_sentence(error, run.config_path)


def test_run_files_that_are_not_files(scratch: Path) -> None:
    folder = scratch / "run.json"
    folder.mkdir(exist_ok=True)
    for read in (read_json, load_arrays, lambda p: load_weights(p, small_model())):
        with pytest.raises(InputError) as error:
            read(folder)
        assert_one_sentence(error.value, folder)


# --- a foreign checkpoint whose pickle would run code -----------------------------------------

class CreatesAFile:
    """Unpickling this calls open(marker, "w"): code from the checkpoint runs on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    from emodistill.models import build_model
    from emodistill.models.weights import load_backbone_weights

    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "mobilefacenet.pth"
    state = {k: v for k, v in build_model("tiny").backbone.state_dict().items()}
    torch.save({"state_dict": state, "hook": CreatesAFile(marker)}, checkpoint)
    # The file is really malicious: an unrestricted load runs its code.
    torch.load(checkpoint, weights_only=False)["hook"].close()
    assert marker.exists()
    marker.unlink()

    with pytest.raises(InputError) as error:
        load_backbone_weights(build_model("tiny"), checkpoint)
    assert_one_sentence(error.value, checkpoint)
    assert "weights-only" in str(error.value)
    assert not marker.exists()


def test_a_member_file_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    member = tmp_path / "member-0.safetensors"
    torch.save({"weight": CreatesAFile(marker)}, member)  # a pickle under a safetensors name
    with pytest.raises(InputError) as error:
        load_weights(member, small_model())
    assert_one_sentence(error.value, member)
    assert not marker.exists()
    save_weights(member, small_model())  # and a real one loads
    load_weights(member, small_model())
