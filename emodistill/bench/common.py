"""What every part of the benchmark shares: how much it measures (`BenchSizes`), timing in
interleaved rounds, and numbers rounded for readable JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

PAPER_PRESET = "emenet-v"
FPS = 25  # frame rate of the generated video
BACKENDS = ("torch", "onnx")  # how the members run (`Ensemble.members`' runtimes)
BUDGET_MB = 8192.0  # the most resident memory a full bench may take, its children included
BUDGET_SECONDS = 600.0  # the longest a full bench may take on 2 cores


@dataclass(frozen=True)
class BenchSizes:
    """How much the benchmark measures; `FULL` takes a few minutes, `QUICK` well under one."""

    presets: tuple[str, ...]  # model-only presets; the first also runs the whole pipeline
    members: int  # ensemble size (the paper's T)
    clips: tuple[tuple[int, int], ...]  # (B, L) input shapes of the model-only runs
    repeats: int  # timed rounds over every case, after one warm-up round; the median is kept
    matmul_n: int  # side of the square matrices timed for the matrix-multiply peak
    video_frames: int  # frames of the generated pipeline video (25 frames/s)
    video_size: tuple[int, int]  # (width, height) of the pipeline video
    # Most threads for PyTorch and ONNX Runtime; None: every core. One member is also timed on
    # one thread: several threads stall at every barrier when other programs hold a core, so
    # one-thread numbers are the ones that other work on a shared machine disturbs least.
    threads: int | None = None
    # Training memory: `train`'s peak per preset and --clips-per-task (a batch holds that many
    # clips of each of the 3 tasks), clips of `train_length` frames, each in a fresh process.
    train_presets: tuple[str, ...] = ("tiny",)
    train_batches: tuple[int, ...] = (1, 2)
    train_length: int = 16
    # --clips-per-task of the training-speed comparison (fp32, bf16, torch's PReLU), timed
    # side by side in one fresh process: below train's default 5, which holds ~14 GB for
    # emenet-v (see the memory table), far over `budget_mb`.
    speed_batch: int = 1
    budget_mb: float = BUDGET_MB  # a training probe predicted to exceed it is extrapolated
    probes_at_once: int = 0  # inference memory probes (one thread each) run at once; 0: one per core


FULL = BenchSizes((PAPER_PRESET, "demo"), 5, ((1, 16), (8, 16)), 3, 2048, 10 * FPS, (640, 480),
                  train_presets=("tiny", "demo", "small", PAPER_PRESET), train_batches=(1, 2, 5))
QUICK = BenchSizes(("tiny",), 2, ((1, 4), (2, 4)), 2, 256, 10, (640, 480), threads=1,
                   train_presets=("tiny",), train_batches=(1, 2), train_length=4, probes_at_once=5)


def significant(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits, for readable JSON that keeps small ratios."""
    return float(f"{value:.{digits}g}")


def seconds_of(work: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of `work`."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def timed_rounds(cases: dict[str, Callable[[], object]], repeats: int,
                 warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds per call of every case: one warm-up round (unless the caller warmed them up),
    then `repeats` rounds, interleaved so that load from other processes falls on every case alike."""
    if warm_up:
        for work in cases.values():
            work()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, work in cases.items():
            seconds[name].append(seconds_of(work))
    return seconds
