"""Prediction speed: the members alone (model only) per preset, thread count, ensemble size,
clip and runtime; the front end beside dlib on every frame; and the whole `predict` pipeline,
where one member, the ensemble and the ensemble with the speed levers run side by side."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from emodistill.bench.common import BACKENDS, BenchSizes, seconds_of, significant, timed_rounds
from emodistill.bench.inputs import FROZEN_TAIL
from emodistill.models import PRESETS, count_macs
from emodistill.models.speed import BF16_TOLERANCE, Levers
from emodistill.predict.predictor import Predictor
from emodistill.predict.sources import discover
from emodistill.predict.tables import largest_difference, write_csv
from emodistill.run import Ensemble, Run

FRONT_END = "decode + detect or follow + align + crop"
# The front end before issue 28, for the ratio: dlib on every frame (now with O-net's landmarks
# and the alignment on top, so a little more work than it did then).
DLIB_EVERY_FRAME = "decode + dlib on every frame + align + crop"
WHOLE = "whole pipeline"


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
    """Frames/s per preset, thread count, ensemble size, clip shape and runtime.

    The ensemble runs on the most threads only; one member on every thread count.
    """
    peak_of = {p["threads"]: p["gmacs_per_s"] * 1e9 for p in peaks}
    cases, rows = {}, {}
    for preset, run in runs.items():
        config = PRESETS[preset]
        macs = count_macs(config)
        ensemble = Ensemble(run, 0, sizes.members)
        torch_members = ensemble.members("torch", log=lambda _: None)
        for threads in thread_counts:
            loaded = {"torch": torch_members,
                      "onnx": ensemble.members("onnx", threads=threads, log=lambda _: None)}
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
        row["gmacs_per_s"] = significant(achieved / 1e9)
        row["peak_ratio"] = significant(achieved / peak_of[row["threads"]])
    return list(rows.values())


def front_end(run: Run, video: Path, sizes: BenchSizes) -> list[dict]:
    """Frames/s of `predict`'s front end alone (decoding in its thread, faces found every
    `DETECT_EVERY` frames and followed in between, aligned crops) beside dlib on every frame,
    in interleaved rounds (medians, and the ratio of the two, which other load touches least)."""
    source = discover(video)
    fronts = {FRONT_END: {}, DLIB_EVERY_FRAME: {"detector": "dlib", "detect_every": 1}}
    predictors = {stage: Predictor(run.root, members=1, runtime="torch", device="cpu", log=lambda _: None,
                                   levers=Levers(), **options) for stage, options in fronts.items()}
    seconds = {stage: float(np.median(times)) for stage, times in timed_rounds(
        {stage: lambda p=p: sum(1 for s in p.sequences(source) for _ in s.frames) for stage, p in predictors.items()},
        sizes.repeats).items()}
    return [{"stage": stage, "members": 0, "backend": "-", "frames": source.n_frames,
             "seconds": round(seconds[stage], 2), "frames_per_s": round(source.n_frames / seconds[stage], 1),
             "vs_dlib_every_frame": significant(seconds[DLIB_EVERY_FRAME] / seconds[stage], 3)}
            for stage in fronts]


def _warm_up(predictor: Predictor) -> None:
    """One forward pass of the ensemble, so the first timed chunk pays no start-up cost."""
    size = predictor.input_size
    frames = np.zeros((1, predictor.batch_frames, 3, size, size), np.float32)
    predictor.members.forward_stateful(frames, None, None)


FROZEN = "frozen-front levers"  # the frozen-backbone ensemble with the levers


def whole_pipeline(run: Run, video: Path, sizes: BenchSizes, frozen: Run | None = None) -> dict:
    """`emodistill predict` on the video, decode to CSV, frames/s.

    Side by side in interleaved rounds (after a warm-up pass each): one member and the
    ensemble on the plain fp32 PyTorch path, and the ensemble with the speed levers
    (`Levers.auto()` on this CPU); their ratios are the targets. The ensemble's outputs with
    and without the levers are compared on the warm-up pass (largest difference of any numeric
    column). The ONNX Runtime pipelines run once each, after a warm-up forward pass.

    With `frozen`, a run whose members share a frozen backbone below their tails (as the demo
    trains them), its ensemble with the levers runs in the same rounds: the levers then compute
    the shared layers once. Its outputs are compared with its own plain path's (warm-up only).

    Returns {"rows": pipeline rows, "levers": the lever comparison, "members": 1 vs ensemble}.
    """
    source = discover(video)
    n, levers = sizes.members, Levers.auto()
    plan = {"1 plain": (run, 1, Levers()), f"{n} plain": (run, n, Levers()), f"{n} levers": (run, n, levers)}
    if frozen is not None:
        plan[FROZEN] = (frozen, n, levers)
    predictors, load = {}, {}
    for name, (source_run, members, chosen) in plan.items():
        started = time.perf_counter()
        predictors[name] = Predictor(source_run.root, members=members, runtime="torch", device="cpu",
                                     log=lambda _: None, levers=chosen)
        load[name] = time.perf_counter() - started
    tables = {name: predictor.predict(source) for name, predictor in predictors.items()}  # warm-up
    if frozen is not None:
        tables[f"{FROZEN} plain"] = Predictor(frozen.root, members=n, runtime="torch", device="cpu",
                                              log=lambda _: None, levers=Levers()).predict(source)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "emotions.csv"

        def csv_pass(predictor: Predictor) -> Callable[[], object]:
            return lambda: write_csv(out, predictor.predict_frames(source), predictor.columns(source),
                                     lambda _: None)

        seconds = timed_rounds({name: csv_pass(p) for name, p in predictors.items()}, sizes.repeats,
                               warm_up=False)
        fps = {name: source.n_frames / float(np.median(s)) for name, s in seconds.items()}
        once = {}
        for members in sorted({1, n}):
            started = time.perf_counter()
            predictor = Predictor(run.root, members=members, runtime="onnx", device="cpu",
                                  log=lambda _: None, levers=Levers())
            loaded = time.perf_counter() - started
            _warm_up(predictor)
            once[members] = (seconds_of(csv_pass(predictor)), loaded)
    rows = []
    for members in sorted({1, n}):
        name = f"{members} plain"
        rows.append({"stage": WHOLE, "members": members, "backend": "torch", "frames": source.n_frames,
                     "seconds": round(source.n_frames / fps[name], 2), "frames_per_s": round(fps[name], 1),
                     "load_seconds": round(load[name], 2), "rounds": sizes.repeats})
        took, loaded = once[members]
        rows.append({"stage": WHOLE, "members": members, "backend": "onnx", "frames": source.n_frames,
                     "seconds": round(took, 2), "frames_per_s": round(source.n_frames / took, 1),
                     "load_seconds": round(loaded, 2), "rounds": 1})
    plain, fast = tables[f"{n} plain"], tables[f"{n} levers"]
    lever_row = {"members": n, "preset": run.config().preset, "frames": source.n_frames,
                 "levers": levers.as_dict(), "plain_frames_per_s": round(fps[f"{n} plain"], 1),
                 "levers_frames_per_s": round(fps[f"{n} levers"], 1),
                 "speedup": significant(fps[f"{n} levers"] / fps[f"{n} plain"], 3),
                 "same_faces": bool((plain["face"] == fast["face"]).all()),
                 "max_abs_difference": largest_difference(plain, fast),
                 "tolerance": BF16_TOLERANCE if levers.bf16 else 1e-4, "rounds": sizes.repeats}
    if frozen is not None:
        lever_row["frozen_front"] = {
            "tail_blocks": FROZEN_TAIL, "levers_frames_per_s": round(fps[FROZEN], 1),
            "speedup": significant(fps[FROZEN] / fps[f"{n} plain"], 3),
            "max_abs_difference": largest_difference(tables[f"{FROZEN} plain"], tables[FROZEN])}
    members_row = {"members": n, "preset": run.config().preset, "frames": source.n_frames,
                   "one_member_frames_per_s": round(fps["1 plain"], 1),
                   "ensemble_frames_per_s": round(fps[f"{n} plain"], 1),
                   "ratio": significant(fps["1 plain"] / fps[f"{n} plain"], 3),
                   "how": f"PyTorch, plain fp32, medians of {sizes.repeats} interleaved rounds"}
    return {"rows": rows, "levers": lever_row, "members": members_row}
