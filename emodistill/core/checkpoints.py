"""Atomic files of a run: member weights (safetensors), member records and run config (JSON).

A file is written beside its final name and moved into place (atomic.py), so an interrupted
run or a full disk never leaves a half-written file under a name that a later run would trust.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save_file as save_numpy_file
from safetensors.torch import load_file as load_torch_file
from safetensors.torch import save_file as save_torch_file

from emodistill.core.atomic import atomic_write
from emodistill.core.errors import InputError


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    """Read a JSON file; a missing or broken one is a clear error naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a UTF-8 text file, so not JSON") from None
    except OSError as error:
        raise InputError(f"{path} could not be read ({error.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid JSON for a run (nested too deeply)") from None
    except ValueError:  # Python's limit on the digits of an integer (4,300)
        raise InputError(f"{path}: not valid JSON for a run (a number too long to read)") from None


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """Save a model's state_dict as safetensors, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_torch_file(state, str(tmp)))


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load safetensors weights into `model`; missing, extra or misshapen keys are an error."""
    try:
        state = load_torch_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({error})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    # load_state_dict would convert a float64 or integer tensor silently: not a file we wrote.
    wrong_dtype = sorted(k for k in set(expected) & set(state) if expected[k].dtype != state[k].dtype)
    if missing or extra or wrong or wrong_dtype:
        raise InputError(
            f"{path} does not fit this model: missing {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shape {wrong[:3]}, wrong dtype {wrong_dtype[:3]}"
        )
    model.load_state_dict(state)


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save named arrays (e.g. soft labels) as safetensors, atomically."""
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write(path, lambda tmp: save_numpy_file(contiguous, str(tmp)))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load named arrays saved by `save_arrays`."""
    try:
        return load_numpy_file(str(path))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} is not a readable safetensors file ({error})") from None
    except (TypeError, AttributeError) as error:  # bfloat16, float8: dtypes NumPy lacks
        raise InputError(f"{path} holds a dtype that NumPy cannot read ({error})") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_npz(path: Path, missing: str = "") -> dict[str, np.ndarray]:
    """The arrays of a NumPy .npz file, never unpickled; a missing or unreadable file is one
    InputError sentence (`missing`: what the reader expected, added to the first)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        raise InputError(f"{path} is missing{'; ' + missing if missing else ''}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"{path} is not a readable .npz file ({err})") from None
