"""`emodistill bench`: speed and memory on this machine, side by side.

Writes benchmarks/results.json and a Markdown copy of its tables (results.md) for the README.
The parts, by what they measure: `machine` (CPU, matrix-multiply peak), `inputs` (the face
video, crops, random members), `inference` (model only, front end, whole pipeline, levers),
`training` (training speed and what `train` takes in memory), `memory` (resident memory of
this process, of its children, of fresh probe processes), `report` (targets, Markdown).

The parts are imported when first used, so a probe process that imports one part (say
`training`) carries only that part's libraries, as the command it stands for would.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from emodistill.bench.common import FULL, QUICK, BenchSizes, timed_rounds

# Names used from outside the package -> the part that defines them.
_PARTS = {
    "machine_info": "machine", "matmul_peak": "machine",
    "face_frame": "inputs", "write_face_video": "inputs", "face_crops": "inputs", "clip_batches": "inputs",
    "random_run": "inputs",
    "FRONT_END": "inference", "DLIB_EVERY_FRAME": "inference",
    "peak_rss_mb": "memory", "TreeMemory": "memory",
    "training_memory": "training", "predicted_peak": "training",
    "markdown": "report", "targets": "report",
}
__all__ = ["FULL", "QUICK", "BenchSizes", "bench_command", "measure", "run_bench", "timed_rounds", *_PARTS]


def __getattr__(name: str) -> object:
    if name in _PARTS:
        return getattr(importlib.import_module(f"emodistill.bench.{_PARTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_bench(
    out: Path = Path("benchmarks/results.json"),
    quick: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Measure everything, write `out` (JSON) and `out` with suffix .md; returns the results."""
    import torch

    from emodistill.bench.memory import TreeMemory
    from emodistill.bench.report import markdown, targets
    from emodistill.core.checkpoints import write_json
    from emodistill.core.runtime import set_threads, tune_allocator

    sizes = QUICK if quick else FULL
    started, load = time.perf_counter(), list(os.getloadavg())
    previous_threads = torch.get_num_threads()
    try:
        with TreeMemory() as tree:
            results = measure(sizes, tune_allocator(), set_threads(sizes.threads), log)
    finally:
        torch.set_num_threads(previous_threads)  # the caller's setting, as it was
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["resources"] = resources(results, tree, load)
    results["targets"] = targets(results, sizes.presets[0], sizes.members, sizes.budget_mb)
    results["quick"] = quick
    out = Path(out)
    write_json(out, results)
    out.with_suffix(".md").write_text(markdown(results))
    return results


def measure(sizes: BenchSizes, tuned: bool, threads: int, log: Callable[[str], None]) -> dict:
    """Every measurement of the benchmark, on members made for it in a temporary folder;
    `threads` is the most threads used (the whole pipeline runs with that many)."""
    from emodistill.bench.inference import front_end, model_only, whole_pipeline
    from emodistill.bench.inputs import FROZEN_TAIL, face_crops, random_run, write_face_video
    from emodistill.bench.machine import machine_info, matmul_peak
    from emodistill.bench.memory import inference_memory
    from emodistill.bench.training import training_memory, training_speed

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
        "training": "each case in a fresh process, one at a time; training first, while this process is small",
    }
    sections: dict[str, float] = {}

    def section(name: str) -> None:
        sections[name] = time.perf_counter()
        log(name)

    with tempfile.TemporaryDirectory(prefix="emodistill-bench-") as tmp:
        folder = Path(tmp)
        section("matrix-multiply peak")
        first_peaks = [matmul_peak(sizes.matmul_n, n) for n in thread_counts]
        section("training memory per preset and --clips-per-task (one fresh process per case)")
        results["training_memory"] = training_memory(sizes, log=log)
        section("training steps of one member: fp32, bf16, torch's PReLU (one fresh process)")
        results["training"] = training_speed(sizes.presets[0], sizes)
        section("writing the test video and making random members")
        video = write_face_video(folder / "face.mp4", sizes.video_frames, sizes.video_size)
        crops = face_crops(video, 2 * sizes.clips[-1][1])
        runs = {preset: random_run(folder / preset, preset, sizes.members, crops) for preset in sizes.presets}
        frozen = random_run(folder / "frozen-front", sizes.presets[0], sizes.members, crops, frozen_tail=FROZEN_TAIL)
        section("front end beside dlib on every frame")
        results["pipeline"] = front_end(runs[sizes.presets[0]], video, sizes)
        section(f"whole pipeline: 1 member, {sizes.members}, {sizes.members} with the levers, side by side")
        whole = whole_pipeline(runs[sizes.presets[0]], video, sizes, frozen)
        results["pipeline"] += whole["rows"]
        results["levers"], results["members_ratio"] = whole["levers"], whole["members"]
        section("model-only speed")
        # The peak is measured twice and the better kept: a program busy on a core for a
        # moment lowers one measurement, and a low peak would flatter every ratio.
        results["matmul_peak"] = [
            max(first, matmul_peak(sizes.matmul_n, first["threads"]), key=lambda p: p["gmacs_per_s"])
            for first in first_peaks
        ]
        results["model_only"] = model_only(runs, sizes, thread_counts, results["matmul_peak"])
        section("peak memory of prediction (one fresh process per case)")
        results["memory"] = inference_memory(runs[sizes.presets[0]].root, sizes.presets[0], sizes)
        section("end")
    names = list(sections)
    results["sections_seconds"] = {name: round(sections[after] - sections[name], 1)
                                   for name, after in itertools.pairwise(names)}
    return results


def resources(results: dict, tree: object, load_at_start: list[float]) -> dict:
    """The bench's own peak resident memory (the largest of: this process and its children
    sampled together, this process's own peak, the largest child's) and wall time."""
    from emodistill.bench.memory import peak_rss_mb, process_seconds

    children = [r["peak_rss_mb"] for r in results["training_memory"]["rows"] if r["how"] == "measured"]
    children += [r["peak_rss_mb"] for r in results["training"]]
    children += list(results["memory"]["peak_rss_mb"].values())
    own = {"sampled_tree_peak_mb": round(tree.peak_mb, 1), "self_peak_mb": peak_rss_mb(),
           "largest_child_peak_mb": max(children)}
    return {"peak_rss_mb": max(own.values()), **own, "samples": tree.samples, "interval_s": tree.interval,
            "wall_seconds": results["seconds"], "process_seconds": process_seconds(),
            "load_average_at_start": load_at_start, "load_average_at_end": results["machine"]["load_average_at_end"],
            "note": "wall_seconds: from the start of measuring to the end; process_seconds: since this "
                    "interpreter started (imports included; in a test, the whole test session)"}


def bench_command(quick: bool = False) -> dict:
    """`emodistill bench [--quick]`: run, print the Markdown tables and where they were written."""
    from emodistill.bench.report import markdown

    out = Path("benchmarks/results.json")
    results = run_bench(out, quick, log=lambda line: print(f"bench: {line}", file=sys.stderr))
    print(markdown(results))
    print(f"wrote {out} and {out.with_suffix('.md')} in {results['seconds']:.0f} s")
    return results
