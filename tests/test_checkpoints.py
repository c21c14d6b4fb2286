"""Atomic run files: nothing half-written under a trusted name, clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emodistill.core.checkpoints import (
    atomic_write,
    load_arrays,
    load_weights,
    read_json,
    save_arrays,
    save_weights,
    write_json,
)
from emodistill.core.errors import InputError


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_json(target, {"a": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text("{half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert read_json(target) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_weights_round_trip_and_mismatch(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    save_weights(tmp_path / "m.safetensors", model)
    other = torch.nn.Linear(3, 2)
    load_weights(tmp_path / "m.safetensors", other)
    assert torch.equal(other.weight, model.weight)
    with pytest.raises(InputError, match="does not fit this model"):
        load_weights(tmp_path / "m.safetensors", torch.nn.Linear(4, 2))
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"bad\.safetensors"):
        load_weights(tmp_path / "bad.safetensors", model)


def test_arrays_round_trip_and_broken_json(tmp_path: Path) -> None:
    arrays = {"AU": np.random.default_rng(0).random((5, 12), dtype=np.float32)}
    save_arrays(tmp_path / "soft.safetensors", arrays)
    assert np.array_equal(load_arrays(tmp_path / "soft.safetensors")["AU"], arrays["AU"])
    (tmp_path / "run.json").write_text('{"preset": "tiny",\n oops}')
    with pytest.raises(InputError, match=r"run\.json:2"):
        read_json(tmp_path / "run.json")
