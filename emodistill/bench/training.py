"""Training: one member's step as `train` takes it (channels_last, augmented clips, forward,
supervision loss, backward, Adam), its speed in three variants side by side, and its peak
resident memory per preset and --clips-per-task, the table of what `train` will take.

Each measurement runs in a fresh process (`memory.run_probe`): with the tuned allocator
(no trim) a process keeps the peak of its largest step, so a step measured here would hold
the benchmark's own memory at that peak for the rest of the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from emodistill.bench.common import BenchSizes, significant, timed_rounds
from emodistill.bench.memory import peak_rss_mb, rss_mb, run_probe
from emodistill.core.runtime import set_threads, tune_allocator
from emodistill.methods.losses import supervision_loss, training_class_weights
from emodistill.methods.training import augment_clips
from emodistill.models import PRESETS, build_model
from emodistill.models.mobilefacenet import PReLU
from emodistill.models.speed import bf16_fast
from emodistill.run import TrainConfig
from emodistill.tasks import PAPER_TASKS

TORCH_PRELU = "fp32, torch's PReLU backward"
SAFETY_MB = 512.0  # head-room kept below the budget when deciding whether a probe may run
STEPS = 2  # steps per memory probe: the second holds the gradients and Adam's state of the first


def training_batch(preset: str, B: int, L: int, seed: int = 0) -> dict:
    """Random clips (B, L) of the preset's input size with labels of the paper's three tasks,
    every label valid, and the class weights `train` would derive from them."""
    config = PRESETS[preset]
    rng = np.random.default_rng(seed)
    size = config.input_size
    labels = {"AU": torch.from_numpy((rng.random((B, L, 12)) < 0.3).astype(np.float32)),
              "EXPR": torch.from_numpy(rng.integers(0, 7, (B, L))),
              "VA": torch.from_numpy(rng.uniform(-1, 1, (B, L, 2)).astype(np.float32))}
    masks = {name: torch.ones(B, L, dtype=torch.bool) for name in labels}
    flat = {k: v.numpy().reshape(B * L, -1).squeeze() for k, v in labels.items()}
    weights = training_class_weights(PAPER_TASKS, flat, {k: v.numpy().reshape(-1) for k, v in masks.items()}, True)
    audio = torch.zeros(B, L, config.n_mels, config.audio_frames) if config.audio else None
    return {"frames": torch.from_numpy(rng.random((B, L, 3, size, size), np.float32)), "audio": audio,
            "labels": labels, "masks": masks, "weights": weights}


def training_step(model: torch.nn.Module, batch: dict, dtype: torch.dtype | None = None) -> Callable[[], None]:
    """One step of `train` on `batch`: augment, forward (under bf16 autocast with `dtype`),
    supervision loss, backward, Adam; the model is put in training mode, channels_last."""
    model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=TrainConfig().lr)
    generator = torch.Generator().manual_seed(0)
    task_weights = {t: 1.0 for t in batch["labels"]}

    def step() -> None:
        frames = augment_clips(batch["frames"], generator)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(frames, batch["audio"])
        loss, _ = supervision_loss(PAPER_TASKS, {k: v.float() for k, v in logits.items()}, batch["labels"],
                                   batch["masks"], batch["weights"], task_weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def training_speed_here(preset: str, clips_per_task: int, length: int, repeats: int,
                        threads: int | None = None) -> list[dict]:
    """Training steps of one member in this process, side by side in interleaved rounds: fp32,
    bf16 autocast, and fp32 with torch's own PReLU backward instead of the backbone's
    (`mobilefacenet.PReLU`); clips/s and frames/s."""
    tune_allocator()
    set_threads(threads)
    B = len(PAPER_TASKS) * clips_per_task
    batch = training_batch(preset, B, length)
    cases = {}
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16), (TORCH_PRELU, None)):
        torch.manual_seed(0)
        model = build_model(preset)
        if name == TORCH_PRELU:  # the backbone's PReLU layers with torch's own backward pass
            for layer in model.modules():
                if isinstance(layer, PReLU):
                    layer.__class__ = torch.nn.PReLU
        cases[name] = training_step(model, batch, dtype)
    seconds = timed_rounds(cases, repeats)
    fp32 = float(np.median(seconds["fp32"]))
    return [{"preset": preset, "case": name, "clips": f"{B}x{length}", "clips_per_task": clips_per_task,
             "bf16_fast": bf16_fast(), "clips_per_s": round(B / float(np.median(s)), 2),
             "frames_per_s": round(B * length / float(np.median(s)), 1),
             "vs_fp32": significant(fp32 / float(np.median(s)), 3), "peak_rss_mb": peak_rss_mb()}
            for name, s in seconds.items()]


def training_speed(preset: str, sizes: BenchSizes) -> list[dict]:
    """`training_speed_here` in a fresh process, at --clips-per-task `sizes.speed_batch`."""
    return run_probe("emodistill.bench.training.training_speed_here", preset, sizes.speed_batch,
                     sizes.train_length, sizes.repeats, sizes.threads)


def step_peak(preset: str, clips_per_task: int, length: int, threads: int | None = None, steps: int = STEPS) -> dict:
    """Peak resident MiB of this (fresh) process after `steps` fp32 training steps of one member
    at `clips_per_task` clips of each task, `length` frames each, with the tuned allocator and on
    every core (`threads` None), as `train` runs; and the seconds of the last step."""
    tune_allocator()
    set_threads(threads)
    batch = training_batch(preset, len(PAPER_TASKS) * clips_per_task, length)
    torch.manual_seed(0)
    step = training_step(build_model(preset), batch)
    before = peak_rss_mb()
    took = 0.0
    for _ in range(steps):
        started = time.perf_counter()
        step()
        took = time.perf_counter() - started
    return {"peak_rss_mb": peak_rss_mb(), "before_steps_mb": before, "seconds_per_step": round(took, 2)}


def predicted_peak(points: dict[int, float], clips: int) -> tuple[float, str] | None:
    """The peak MiB expected at `clips` clips per task from the measured `points` (clips ->
    peak): linear through the two largest, or proportional to the clips from a single one (an
    over-estimate: the fixed part scales too); None without points."""
    if not points:
        return None
    if len(points) == 1:
        (c, peak), = points.items()
        return peak * clips / c, f"proportional to the clips from the measured --clips-per-task {c}"
    (c1, p1), (c2, p2) = sorted(points.items())[-2:]
    slope = (p2 - p1) / (c2 - c1)
    return p2 + slope * (clips - c2), f"extrapolated linearly through the measured --clips-per-task {c1} and {c2}"


def training_memory(
    sizes: BenchSizes,
    measure: Callable[[str, int, int], dict] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Peak resident memory of one member's training step per preset and --clips-per-task, each
    measured in a fresh process, one at a time; a case whose predicted peak (from the smaller
    batches measured before it) with this process's memory would exceed `sizes.budget_mb` is
    extrapolated instead, and labelled so. `measure(preset, clips_per_task, length)` -> the
    probe's result (default: `step_peak` in a fresh process, on `sizes.threads`)."""
    if measure is None:
        def measure(preset: str, clips: int, length: int) -> dict:
            return run_probe("emodistill.bench.training.step_peak", preset, clips, length, sizes.threads)
    L, default = sizes.train_length, TrainConfig().clips_per_task
    rows, checks = [], []
    for preset in sizes.train_presets:
        points: dict[int, float] = {}
        for clips in sorted(sizes.train_batches):
            B = len(PAPER_TASKS) * clips
            row = {"preset": preset, "input_size": PRESETS[preset].input_size, "clips_per_task": clips,
                   "batch": f"{B}x{L}", "frames": B * L, "default": clips == default}
            guess = predicted_peak(points, clips)
            if guess is not None and guess[0] + rss_mb() + SAFETY_MB > sizes.budget_mb:
                log(f"training memory: {preset} at --clips-per-task {clips} would take about "
                    f"{guess[0] / 1024:.1f} GiB, over the budget: extrapolated, not run")
                rows.append(row | {"peak_rss_mb": round(guess[0], 1), "seconds_per_step": None,
                                   "how": guess[1]})
                continue
            log(f"training memory: {preset} at --clips-per-task {clips} ({B}x{L})")
            result = measure(preset, clips, L)
            points[clips] = result["peak_rss_mb"]
            rows.append(row | {"peak_rss_mb": result["peak_rss_mb"], "seconds_per_step": result["seconds_per_step"],
                               "how": "measured"})
        if len(points) >= 3:  # how far the extrapolation from the two smallest lands from the largest
            largest = max(points)
            guess = predicted_peak({c: points[c] for c in sorted(points)[:2]}, largest)
            assert guess is not None
            checks.append({"preset": preset, "clips_per_task": largest, "from": sorted(points)[:2],
                           "predicted_mb": round(guess[0], 1), "measured_mb": points[largest],
                           "error_percent": round(100 * (guess[0] - points[largest]) / points[largest], 1)})
    return {"rows": rows, "clip_length": L, "steps": STEPS, "budget_mb": sizes.budget_mb,
            "extrapolation_check": checks,
            "note": f"VmHWM of a fresh process (the tuned allocator, {sizes.threads or 'all'} thread(s); `train` "
                    f"uses all) after {STEPS} fp32 steps of one member: forward, loss, backward, Adam; the training "
                    "data `train` holds in memory come on top, and each Ray worker takes this much"}
