"""Resident memory: of this process (its peak and now), of this process and its children
together (sampled while the benchmark runs), and of fresh processes that each measure one case
(`run_probe`), so that one case's peak neither includes nor inflates another's; here the
inference cases: members loaded and one forward pass of the largest clip."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from emodistill.bench.common import BACKENDS, BenchSizes
from emodistill.core.runtime import set_threads, tune_allocator, usable_cpus
from emodistill.models import PRESETS

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def _status_mb(key: str) -> float | None:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB -> MiB
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux's VmHWM belongs to the process image; ru_maxrss would also carry the peak of the
    parent that forked this process, since it survives exec.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    """This process's resident memory now in MiB (its peak where the OS tells no more)."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()


def tree_rss_mb(root: int | None = None) -> float:
    """Resident MiB of process `root` (default this one) and all its descendants now (Linux)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (name) state"
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
        except (OSError, IndexError, ValueError):
            continue
    return round(total, 1)


class TreeMemory:
    """Samples the resident memory of this process and its children together every `interval`
    seconds while inside `with`; `peak_mb` is the largest sum seen (0 where /proc is missing)."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mb, self.samples = interval, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-memory", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            if Path("/proc/self/statm").exists():
                self.peak_mb = max(self.peak_mb, tree_rss_mb())
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def process_seconds() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): the bench's whole wall time,
    interpreter start and imports included."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 1)


def start_probe(function: str, *args: object) -> subprocess.Popen:
    """`function` ("emodistill.bench.module.name") called with `args` (Python literals) in a new
    interpreter, whose peak memory is its own; it prints its JSON result last."""
    module, name = function.rsplit(".", 1)
    code = f"import json; from {module} import {name}; print(json.dumps({name}(*{args!r})))"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_probe(probe: subprocess.Popen, what: str) -> dict:
    """The JSON result of a started probe; RuntimeError with its error output if it failed."""
    stdout, stderr = probe.communicate()
    if probe.returncode != 0:
        raise RuntimeError(f"{what} failed in its own process: {stderr.strip()[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_probe(function: str, *args: object) -> dict:
    """`start_probe` and wait for its result."""
    return finish_probe(start_probe(function, *args), function)


def inference_memory(run_dir: Path, preset: str, sizes: BenchSizes) -> dict:
    """Peak resident memory of fresh processes that load the members and run one forward pass
    of the largest clip, one thread each (memory hardly depends on threads); the baseline
    process imports the prediction code only. `sizes.probes_at_once` run at once (0: one per core)."""
    B, L = sizes.clips[-1]
    cases = {"baseline (imports only)": (None, 0)}
    cases |= {f"{backend}, {m} member{'s' * (m > 1)}": (backend, m)
              for m in sorted({1, sizes.members}) for backend in BACKENDS}
    peaks, names = {}, list(cases)
    at_once = sizes.probes_at_once or max(1, usable_cpus())
    for start in range(0, len(names), at_once):
        batch = names[start : start + at_once]
        probes = {name: start_probe("emodistill.bench.memory.peak_after_forward", str(run_dir),
                                    cases[name][0], cases[name][1], B, L) for name in batch}
        for name, probe in probes.items():
            peaks[name] = finish_probe(probe, f"memory probe {name!r}")["peak_rss_mb"]
    return {"clip": f"{B}x{L}", "preset": preset, "peak_rss_mb": peaks,
            "note": f"VmHWM of a fresh one-thread process per case, {at_once} at a time (the baseline "
                    "only imports Python, PyTorch, ONNX Runtime and the prediction code)"}


def peak_after_forward(run_dir: str, backend: str | None, members: int, B: int, L: int) -> dict:
    """{"peak_rss_mb": this process's peak} after one forward pass of `members` members on a
    B x L clip (`backend` None: after the imports only)."""
    tune_allocator()
    set_threads(1)
    from emodistill.predict.predictor import Predictor  # noqa: F401 - the prediction code's imports
    from emodistill.run import Ensemble, Run

    if backend is not None:
        run = Run(Path(run_dir))
        size = PRESETS[run.config().preset].input_size
        frames = np.random.default_rng(0).random((B, L, 3, size, size), np.float32)
        for member in Ensemble(run, 0, members).members(backend, threads=1, log=lambda _: None):
            member.forward_stateful(frames, None, None)
    return {"peak_rss_mb": peak_rss_mb()}
