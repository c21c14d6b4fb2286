"""`emodistill bench`: model-only and whole-pipeline speed on this machine, side by side.

Writes benchmarks/results.json and a Markdown copy of its tables (results.md) for the README.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import onnxruntime as ort
import torch
from skimage import data as skdata

from emodistill.core.checkpoints import save_weights, write_json
from emodistill.core.runtime import set_threads, tune_allocator, usable_cpus
from emodistill.methods.losses import supervision_loss, training_class_weights
from emodistill.methods.training import member_seed
from emodistill.models import PRESETS, build_model, count_macs
from emodistill.models.batchnorm import reestimate_batchnorm
from emodistill.models.mobilefacenet import PReLU
from emodistill.models.speed import BF16_TOLERANCE, Levers, bf16_fast
from emodistill.predict.predictor import Predictor
from emodistill.predict.sources import discover
from emodistill.predict.tables import largest_difference, write_csv
from emodistill.report.tables import markdown_table
from emodistill.run import Run, RunConfig, TrainConfig, export_run
from emodistill.tasks import PAPER_TASKS

# Targets of the issue, for a 2-core CPU: frames/s.
PIPELINE_TARGET = 30.0  # whole pipeline, a 5-member ensemble of the paper preset (real time)
SINGLE_TARGET = 100.0  # model only, one member of the paper preset
LEVER_TARGET = 1.5  # whole pipeline of the ensemble with the speed levers, against the plain path
PAPER_PRESET = "emenet-v"
FPS = 25  # frame rate of the generated video
BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class BenchSizes:
    """How much the benchmark measures; `FULL` takes a few minutes, `QUICK` a few seconds."""

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


FULL = BenchSizes((PAPER_PRESET, "demo"), 5, ((1, 16), (8, 16)), 3, 2048, 10 * FPS, (640, 480))
QUICK = BenchSizes(("tiny",), 2, ((1, 4), (2, 4)), 2, 256, 10, (640, 480), threads=1)


def run_bench(
    out: Path = Path("benchmarks/results.json"),
    quick: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Measure everything, write `out` (JSON) and `out` with suffix .md; returns the results."""
    sizes = QUICK if quick else FULL
    previous_threads = torch.get_num_threads()
    try:
        results = measure(sizes, tune_allocator(), set_threads(sizes.threads), log)
    finally:
        torch.set_num_threads(previous_threads)  # the caller's setting, as it was
    results["quick"] = quick
    out = Path(out)
    write_json(out, results)
    out.with_suffix(".md").write_text(markdown(results))
    return results


def measure(sizes: BenchSizes, tuned: bool, threads: int, log: Callable[[str], None]) -> dict:
    """Every measurement of the benchmark, on members made for it in a temporary folder;
    `threads` is the most threads used (the whole pipeline runs with that many)."""
    thread_counts = sorted({1, threads})
    results: dict = {"machine": machine_info()}
    results["settings"] = {
        "threads": thread_counts,
        "repeats": sizes.repeats,
        "statistic": "median of the timed rounds (best round also given), after a warm-up round",
        "torch": "eager, inference_mode, channels_last"
        + (", glibc malloc tuned (no mmap, no trim)" if tuned else ""),
        "onnx": "ONNX Runtime CPU, graph optimisation ALL, intra-op threads as the row says, "
                "no spinning, no memory arena",
        "pipeline": f"PyTorch on {threads} threads; the Predictor's ONNX Runtime sessions on "
                    "their default (one thread per core)",
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="emodistill-bench-") as tmp:
        folder = Path(tmp)
        log("writing the test video")
        video = write_face_video(folder / "face.mp4", sizes.video_frames, sizes.video_size)
        crops = face_crops(video, 2 * sizes.clips[-1][1])
        log("matrix-multiply peak")
        first_peaks = [matmul_peak(sizes.matmul_n, n) for n in thread_counts]
        runs = {}
        for preset in sizes.presets:
            log(f"making and exporting {sizes.members} random {preset} members")
            runs[preset] = random_run(folder / preset, preset, sizes.members, crops)
        log("whole-pipeline speed")
        results["pipeline"] = pipeline(runs[sizes.presets[0]], video, sizes)
        log("speed levers against the plain path, side by side")
        results["levers"] = lever_speedup(runs[sizes.presets[0]], video, sizes)
        log("training steps of one member: fp32, bf16, torch's PReLU")
        results["training"] = training_speed(sizes.presets[0], sizes)
        log("model-only speed")
        # The peak is measured twice and the better kept: a program busy on a core for a
        # moment lowers one measurement, and a low peak would flatter every ratio.
        results["matmul_peak"] = [
            max(first, matmul_peak(sizes.matmul_n, first["threads"]),
                key=lambda p: p["gmacs_per_s"])
            for first in first_peaks
        ]
        results["model_only"] = model_only(runs, sizes, thread_counts, results["matmul_peak"])
        log("peak memory (one fresh process per case)")
        results["memory"] = memory(runs[sizes.presets[0]], sizes)
    results["targets"] = targets(results, sizes)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def bench_command(quick: bool = False) -> dict:
    """`emodistill bench [--quick]`: run, print the Markdown tables and where they were written."""
    out = Path("benchmarks/results.json")
    results = run_bench(out, quick, log=lambda line: print(f"bench: {line}", file=sys.stderr))
    print(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')} in {results['seconds']:.0f} s")
    return results


# ---------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU model, usable cores, vector extensions and library versions."""
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "cpu": cpu,
        "cores": usable_cpus(),
        "vector": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags],
        "bf16_fast": bf16_fast(flags),
        "flags": sorted(flags),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def matmul_peak(n: int, threads: int, repeats: int = 10) -> dict:
    """Best fp32 n x n matrix product on `threads` threads: 2 n^3 flops = n^3 multiply-adds."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up: thread pool, caches
        best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(repeats))
    finally:
        torch.set_num_threads(previous)
    macs = n**3 / best
    return {"threads": threads, "n": n, "gflops": _round(2 * macs / 1e9),
            "gmacs_per_s": _round(macs / 1e9),
            "convention": "one multiply-add = 2 flops; the ratio columns use multiply-adds"}


def _round(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits, for readable JSON that keeps small ratios."""
    return float(f"{value:.{digits}g}")


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- inputs


def face_frame(k: int, n: int, size: tuple[int, int]) -> np.ndarray:
    """Frame k of n: the astronaut's head (skimage) gliding over a grey-blue gradient; in frames
    whose shorter side is under 256 px the head is shrunk to fit it."""
    width, height = size
    patch = skdata.astronaut()[0:256, 96:352]  # (256, 256, 3), the face at (80..176, 64..160)
    side = min(256, width, height)
    if side < 256:
        patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    ramp = np.linspace(60, 200, width, dtype=np.float32)[None, :, None]  # (1, W, 1)
    frame = np.broadcast_to(ramp * [1.0, 1.0, 1.1], (height, width, 3)).clip(0, 255)
    frame = frame.astype(np.uint8)  # (H, W, 3)
    phase = 2 * np.pi * k / max(n, 1)
    left = round((width - side) * (0.5 + 0.4 * np.sin(phase)))
    top = round((height - side) * (0.5 + 0.3 * np.sin(2 * phase)))
    frame[top : top + side, left : left + side] = patch
    return frame


def write_face_video(path: Path, n_frames: int, size: tuple[int, int]) -> Path:
    """H.264 video of `face_frame`s at 25 frames/s, encoded with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(n_frames):
            rgb = face_frame(k, n_frames, size)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def face_crops(video: Path, n: int) -> np.ndarray:
    """The first `n` face crops of the video at 112 px, (n, 112, 112, 3) uint8."""
    from emodistill.data.media import FaceTracker, iter_frames

    tracker, crops = FaceTracker(crop_size=112), []
    for frame in iter_frames(video):
        _, crop = tracker.track(frame.rgb)
        if crop is not None:
            crops.append(crop)
        if len(crops) == n:
            break
    return np.stack(crops)


def crops_as_input(crops: np.ndarray, size: int, B: int, L: int) -> np.ndarray:
    """B x L face crops resized to `size`, as model input (B, L, 3, size, size) float32 [0, 1]."""
    import cv2

    index = np.arange(B * L) % len(crops)
    resized = [cv2.resize(crops[i], (size, size), interpolation=cv2.INTER_AREA) for i in index]
    frames = np.stack(resized).transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (B*L, 3, S, S)
    return frames.reshape(B, L, 3, size, size)


def estimate_batchnorm(model: torch.nn.Module, frames: np.ndarray) -> None:
    """BatchNorm statistics from real face crops (a trained model's activation scale), a clip at a
    time: a freshly initialised MobileFaceNet shrinks activations towards 1e-7 by the last layer,
    which no trained model does; timing and quantising such a model would mislead."""
    reestimate_batchnorm(model, ((clip, _silent_audio(model, clip)) for clip in torch.from_numpy(frames).split(1)))


def _silent_audio(model: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor | None:
    cfg = model.config
    return torch.zeros(*frames.shape[:2], cfg.n_mels, cfg.audio_frames) if cfg.audio else None


def random_run(root: Path, preset: str, members: int, crops: np.ndarray) -> Run:
    """A run folder whose teacher members are randomly initialised (speed does not depend on
    training), with ONNX files exported beside them."""
    run = Run(root)
    config = run.prepare(RunConfig(data="(none: random weights for the benchmark)",
                                        preset=preset, members=members, generations=0))
    size = PRESETS[preset].input_size
    frames = crops_as_input(crops, size, 2, len(crops) // 2)
    for m in range(members):
        seed = member_seed(config.seed, 0, m)
        torch.manual_seed(seed)
        model = build_model(preset)
        estimate_batchnorm(model, frames)
        save_weights(run.weights_path(0, m), model)
        write_json(run.record_path(0, m), {"generation": "teacher", "member": m, "seed": seed,
                                           "note": "random initialisation, for the benchmark"})
    export_run(root)
    return run


# ---------------------------------------------------------------------------- timing


def timed_rounds(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of every case: one warm-up round, then `repeats` rounds, interleaved
    so that load from other processes falls on every case alike."""
    for work in cases.values():
        work()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, work in cases.items():
            seconds[name].append(_seconds(work))
    return seconds


def ensemble_pass(members: list, frames: np.ndarray, threads: int) -> Callable[[], object]:
    """One forward pass of every member on the clip `frames` (B, L, 3, S, S), from zero state.

    PyTorch's thread count belongs to the process, so each pass sets it; an ONNX Runtime
    session keeps the count it was made with.
    """

    def work() -> None:
        torch.set_num_threads(threads)
        for member in members:
            member.forward_stateful(frames, None, None)

    return work


def model_only(
    runs: dict[str, Run], sizes: BenchSizes, thread_counts: list[int], peaks: list[dict]
) -> list[dict]:
    """Frames/s per preset, thread count, ensemble size, clip shape and backend.

    The ensemble runs on the most threads only; one member on every thread count.
    """
    peak_of = {p["threads"]: p["gmacs_per_s"] * 1e9 for p in peaks}
    cases, rows = {}, {}
    for preset, run in runs.items():
        config = PRESETS[preset]
        macs = count_macs(config)
        torch_members = run.members(0, sizes.members, "torch")
        for threads in thread_counts:
            loaded = {"torch": torch_members,
                      "onnx": run.members(0, sizes.members, "onnx", threads=threads)}
            ensembles = sorted({1, sizes.members}) if threads == max(thread_counts) else [1]
            for members in ensembles:
                for B, L in sizes.clips:
                    frames = np.random.default_rng(0).random(
                        (B, L, 3, config.input_size, config.input_size), np.float32)
                    for backend in BACKENDS:
                        key = (preset, threads, members, B, L, backend)
                        cases[key] = ensemble_pass(loaded[backend][:members], frames, threads)
                        rows[key] = {"preset": preset, "input_size": config.input_size,
                                     "threads": threads, "members": members, "batch": B,
                                     "length": L, "backend": backend,
                                     "macs_per_frame": macs * members}
    seconds = timed_rounds(cases, sizes.repeats)
    for key, row in rows.items():
        frames = row["batch"] * row["length"]
        row["seconds"] = [round(s, 4) for s in seconds[key]]
        row["frames_per_s"] = round(frames / statistics.median(seconds[key]), 1)
        row["best_frames_per_s"] = round(frames / min(seconds[key]), 1)
        achieved = row["macs_per_frame"] * row["frames_per_s"]
        row["gmacs_per_s"] = _round(achieved / 1e9)
        row["peak_ratio"] = _round(achieved / peak_of[row["threads"]])
    return list(rows.values())


def pipeline(run: Run, video: Path, sizes: BenchSizes) -> list[dict]:
    """Frames/s of `emodistill predict` on a video: decode, detect, crop, predict, write CSV."""
    source = discover(video)
    rows = []
    predictor = Predictor(run.root, members=1, backend="torch", device="cpu", log=lambda _: None, levers=Levers())
    seconds = _seconds(lambda: sum(1 for s in predictor.sequences(source) for _ in s.frames))
    rows.append({"stage": "decode + detect + crop", "members": 0, "backend": "-",
                 "frames": source.n_frames, "seconds": round(seconds, 2),
                 "frames_per_s": round(source.n_frames / seconds, 1)})
    for members in sorted({1, sizes.members}):
        for backend in BACKENDS:
            load = time.perf_counter()
            predictor = Predictor(run.root, members=members, backend=backend, device="cpu",
                                  log=lambda _: None, levers=Levers())
            load = time.perf_counter() - load
            _warm_up(predictor)
            with tempfile.TemporaryDirectory() as tmp:
                table = Path(tmp) / "emotions.csv"
                seconds = _seconds(lambda p=predictor, t=table: write_csv(
                    t, p.predict_frames(source), p.columns(source), lambda _: None))
            rows.append({"stage": "whole pipeline", "members": members, "backend": backend,
                         "frames": source.n_frames, "seconds": round(seconds, 2),
                         "frames_per_s": round(source.n_frames / seconds, 1),
                         "load_seconds": round(load, 2)})
    return rows


def _warm_up(predictor: Predictor) -> None:
    """One forward pass of the ensemble, so the first timed chunk pays no start-up cost."""
    size = predictor.input_size
    frames = np.zeros((1, predictor.batch_frames, 3, size, size), np.float32)
    predictor.members.forward_stateful(frames, None, None)


def lever_speedup(run: Run, video: Path, sizes: BenchSizes) -> dict:
    """The ensemble's whole pipeline with the speed levers (`Levers.auto()` on this CPU) against
    the plain fp32 path, timed side by side in interleaved rounds, and how far apart their
    outputs are (largest difference of any numeric column on frames with a face)."""
    source = discover(video)
    levers = Levers.auto()
    predictors = {name: Predictor(run.root, members=sizes.members, backend="torch", device="cpu",
                                  log=lambda _: None, levers=chosen)
                  for name, chosen in (("plain", Levers()), ("levers", levers))}
    for predictor in predictors.values():
        _warm_up(predictor)
    tables = {name: predictor.predict(source) for name, predictor in predictors.items()}
    seconds = timed_rounds({name: lambda p=p: p.predict(source) for name, p in predictors.items()},
                           sizes.repeats)
    plain, fast = (float(np.median(seconds[name])) for name in ("plain", "levers"))
    return {"members": sizes.members, "preset": run.config().preset, "frames": source.n_frames,
            "levers": levers.as_dict(), "plain_frames_per_s": round(source.n_frames / plain, 1),
            "levers_frames_per_s": round(source.n_frames / fast, 1), "speedup": _round(plain / fast, 3),
            "same_faces": bool((tables["plain"]["face"] == tables["levers"]["face"]).all()),
            "max_abs_difference": largest_difference(tables["plain"], tables["levers"]),
            "tolerance": BF16_TOLERANCE if levers.bf16 else 1e-4}


TORCH_PRELU = "fp32, torch's PReLU backward"


def training_speed(preset: str, sizes: BenchSizes) -> list[dict]:
    """Training steps of one member (forward, supervision loss, backward, Adam) on random clips
    of the default batch shape, side by side: fp32, bf16 autocast, and fp32 with torch's own
    PReLU backward instead of the backbone's (`mobilefacenet.PReLU`); clips/s and frames/s."""
    config = TrainConfig()
    B, L = 3 * config.clips_per_task, min(config.clip_length, sizes.clips[-1][1] * 4)
    size = PRESETS[preset].input_size
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.random((B, L, 3, size, size), np.float32))
    labels = {"AU": torch.from_numpy((rng.random((B, L, 12)) < 0.3).astype(np.float32)),
              "EXPR": torch.from_numpy(rng.integers(0, 7, (B, L))),
              "VA": torch.from_numpy(rng.uniform(-1, 1, (B, L, 2)).astype(np.float32))}
    masks = {name: torch.ones(B, L, dtype=torch.bool) for name in labels}
    flat_labels = {k: v.numpy().reshape(B * L, -1).squeeze() for k, v in labels.items()}
    weights = training_class_weights(PAPER_TASKS, flat_labels, {k: v.numpy().reshape(-1) for k, v in masks.items()},
                                     True)
    cases = {}
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16), (TORCH_PRELU, None)):
        torch.manual_seed(0)
        model = build_model(preset).train()
        if name == TORCH_PRELU:  # the backbone's PReLU layers with torch's own backward pass
            for layer in model.modules():
                if isinstance(layer, PReLU):
                    layer.__class__ = torch.nn.PReLU
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer,
                 dtype: torch.dtype | None = dtype) -> None:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model(frames)
            loss, _ = supervision_loss(PAPER_TASKS, {k: v.float() for k, v in logits.items()}, labels, masks, weights,
                                       {t: 1.0 for t in labels})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        cases[name] = step
    seconds = timed_rounds(cases, sizes.repeats)
    fp32 = float(np.median(seconds["fp32"]))
    return [{"preset": preset, "case": name, "clips": f"{B}x{L}", "bf16_fast": bf16_fast(),
             "clips_per_s": round(B / float(np.median(s)), 2), "frames_per_s": round(B * L / float(np.median(s)), 1),
             "vs_fp32": _round(fp32 / float(np.median(s)), 3)} for name, s in seconds.items()]


# ---------------------------------------------------------------------------- memory


def memory(run: Run, sizes: BenchSizes) -> dict:
    """Peak resident memory of fresh processes that import everything, load the members and
    run one forward pass of the largest clip; the baseline process only imports.

    The processes run side by side, one thread each (memory hardly depends on threads): each
    peak is its own, and the wait is short.
    """
    B, L = sizes.clips[-1]
    cases = {"baseline (imports only)": (None, 0)}
    cases |= {f"{backend}, {m} member{'s' * (m > 1)}": (backend, m)
              for m in sorted({1, sizes.members}) for backend in BACKENDS}
    probes = {name: _start_probe(run.root, backend, members, B, L)
              for name, (backend, members) in cases.items()}
    peaks = {}
    for name, probe in probes.items():
        stdout, stderr = probe.communicate()
        if probe.returncode != 0:
            raise RuntimeError(f"memory probe {name!r} failed: {stderr.strip()}")
        peaks[name] = float(stdout.split()[-1])
    return {"clip": f"{B}x{L}", "preset": run.config().preset, "peak_rss_mb": peaks,
            "bench_process_mb": peak_rss_mb(),
            "note": "VmHWM of a fresh one-thread process per case (the baseline only imports "
                    "Python, PyTorch and ONNX Runtime); bench_process_mb: this whole benchmark"}


def _start_probe(
    run_dir: Path, backend: str | None, members: int, B: int, L: int
) -> subprocess.Popen:
    """`peak_after_forward` in a new interpreter, whose peak memory is its own."""
    call = f"peak_after_forward({str(run_dir)!r}, {backend!r}, {members}, {B}, {L})"
    code = f"from emodistill.bench import peak_after_forward; print({call})"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def peak_after_forward(run_dir: str, backend: str | None, members: int, B: int, L: int) -> float:
    """Peak MiB of this process after one forward pass of `members` members on a B x L clip."""
    tune_allocator()
    set_threads(1)
    if backend is not None:
        run = Run(Path(run_dir))
        size = PRESETS[run.config().preset].input_size
        frames = np.random.default_rng(0).random((B, L, 3, size, size), np.float32)
        ensemble_pass(run.members(0, members, backend, threads=1), frames, threads=1)()
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux's VmHWM belongs to the process image; ru_maxrss would also carry the peak of the
    parent that forked this process, since it survives exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB -> MiB
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------- summary


def targets(results: dict, sizes: BenchSizes) -> dict:
    """The issue's speed targets against the fastest setting measured: frames/s of one member and
    of the ensemble's whole pipeline, and the levers' speed-up of that pipeline (a ratio)."""
    preset = sizes.presets[0]
    single = max((r for r in results["model_only"] if r["preset"] == preset and r["members"] == 1),
                 key=lambda r: r["frames_per_s"])
    whole = max((r for r in results["pipeline"] if r["members"] == sizes.members),
                key=lambda r: r["frames_per_s"])
    levers = results["levers"]
    if levers["levers_frames_per_s"] > whole["frames_per_s"]:
        whole = {"frames_per_s": levers["levers_frames_per_s"], "backend": "torch with the speed levers"}
    return {
        "single_member_model_only": {
            "preset": preset, "target": SINGLE_TARGET, "reached": single["frames_per_s"],
            "met": single["frames_per_s"] >= SINGLE_TARGET,
            "how": f"{single['backend']}, {single['threads']} thread(s), "
                   f"clip {single['batch']}x{single['length']}"},
        "ensemble_whole_pipeline": {
            "preset": preset, "members": sizes.members, "target": PIPELINE_TARGET,
            "reached": whole["frames_per_s"], "met": whole["frames_per_s"] >= PIPELINE_TARGET,
            "how": whole["backend"]},
        "ensemble_speed_up_with_levers": {
            "preset": preset, "members": sizes.members, "target": LEVER_TARGET,
            "reached": levers["speedup"], "met": levers["speedup"] >= LEVER_TARGET,
            "how": ", ".join(k for k, v in levers["levers"].items() if v and k != "detect_every")},
    }


def lever_lines(results: dict) -> list[str]:
    """The lever comparison and the training speeds as Markdown (absent in older results)."""
    lines = []
    if "levers" in results:
        lev = results["levers"]
        active = ", ".join(f"{k}={v}" for k, v in lev["levers"].items())
        lines += [f"Speed levers on this CPU ({active}) against the plain fp32 path, {lev['members']} "
                  f"{lev['preset']} members, whole pipeline, measured side by side:",
                  markdown_table(["path", "frames/s", "speed-up", "largest output difference"],
                                 [["plain fp32", lev["plain_frames_per_s"], 1.0, "-"],
                                  ["levers", lev["levers_frames_per_s"], lev["speedup"],
                                   f"{lev['max_abs_difference']:.1e} (tolerance {lev['tolerance']:g})"]])]
    if "training" in results:
        lines += ["Training steps of one member (forward, loss, backward, Adam), side by side:",
                  markdown_table(["preset", "case", "batch BxL", "clips/s", "frames/s", "vs fp32"],
                                 [[r["preset"], r["case"], r["clips"], r["clips_per_s"], r["frames_per_s"],
                                   r["vs_fp32"]] for r in results["training"]])]
    return lines


def markdown(results: dict) -> str:
    """The README tables: model-only, whole pipeline, memory, targets."""
    machine = results["machine"]
    peaks = ", ".join(f"{p['gmacs_per_s']:g} on {p['threads']} thread(s)"
                      for p in results["matmul_peak"])
    by_key = {(r["preset"], r["threads"], r["members"], r["batch"], r["length"], r["backend"]): r
              for r in results["model_only"]}
    model_rows = []
    for setting in dict.fromkeys(k[:5] for k in by_key):
        cells = [by_key[(*setting, b)] for b in BACKENDS]
        preset, threads, members, B, L = setting
        size = cells[0]["input_size"]
        model_rows.append([f"{preset} ({size}x{size})", threads, members, f"{B}x{L}",
                           *(c["frames_per_s"] for c in cells),
                           *(f"{100 * c['peak_ratio']:.0f}%" for c in cells)])
    pipeline_rows = [[r["stage"], r["members"] or "-", r["backend"], r["frames_per_s"]]
                     for r in results["pipeline"]]
    mem = results["memory"]
    memory_rows = [[name, value] for name, value in mem["peak_rss_mb"].items()]
    target_rows = [[name.replace("_", " "), t["target"], t["reached"], t["how"],
                    "yes" if t["met"] else "no"] for name, t in results["targets"].items()]
    load = "/".join(f"{x:.1f}" for x in machine["load_average_at_start"][:1]
                    + machine["load_average_at_end"][:1])
    parts = [
        f"Measured on {machine['cpu']} ({machine['cores']} cores, "
        f"{', '.join(machine['vector'])}), PyTorch {machine['torch']}, ONNX Runtime "
        f"{machine['onnxruntime']}; 1-minute load average at start/end {load}. Matrix-multiply "
        f"peak (fp32) in G multiply-adds/s: {peaks}; the % columns divide the achieved "
        "multiply-adds/s by the peak of the same thread count. Model only, frames/s, median of "
        f"{results['settings']['repeats']} rounds:",
        markdown_table(["model", "threads", "members", "clip BxL", "PyTorch", "ONNX Runtime",
                "PyTorch % peak", "ONNX % peak"], model_rows),
        f"Whole pipeline on a {results['pipeline'][0]['frames']}-frame 640x480 video "
        "(decode, detect, crop, predict, write CSV), frames/s:",
        markdown_table(["stage", "members", "backend", "frames/s"], pipeline_rows),
        *lever_lines(results),
        f"Peak memory, {mem['preset']}, clip {mem['clip']} (MiB, fresh process per case):",
        markdown_table(["case", "peak RSS MiB"], memory_rows),
        "Targets (frames/s; the speed-up is a ratio):",
        markdown_table(["target", "wanted", "reached", "with", "met"], target_rows),
    ]
    return "\n\n".join(parts) + "\n"
