"""Tests for the benchmark (emodistill.bench): its parts, the training-memory table's plan, and
the quick run's files (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from emodistill.bench import (
    DLIB_EVERY_FRAME,
    FRONT_END,
    QUICK,
    clip_batches,
    face_frame,
    matmul_peak,
    predicted_peak,
    run_bench,
    timed_rounds,
    training_memory,
)
from emodistill.bench.machine import microarchitecture
from emodistill.bench.memory import rss_mb, tree_rss_mb
from emodistill.bench.training import SAFETY_MB
from emodistill.data.frontend import make_detector
from emodistill.models import build_model
from emodistill.models.batchnorm import reestimate_batchnorm


def test_timed_rounds_warms_up_then_interleaves_cases() -> None:
    calls: list[str] = []
    seconds = timed_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed ones
    assert [len(v) for v in seconds.values()] == [3, 3]
    assert all(s >= 0 for v in seconds.values() for s in v)
    calls.clear()
    timed_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, warm_up=False)
    assert calls == ["a", "b"] * 2  # the caller warmed them up


def test_generated_frames_show_a_detectable_face_where_it_was_pasted() -> None:
    detector = make_detector()
    for k in (0, 7, 19):
        frame = face_frame(k, 25, (640, 480))
        found = detector.detect(frame)
        assert len(found) == 1, k
        box = found[0].box
        # The astronaut patch is the only part of the frame that is not a smooth gradient.
        patch_rows, patch_cols = np.nonzero(np.abs(np.diff(frame[..., 0].astype(int), axis=1)) > 8)
        cx, cy = box.centre
        assert patch_cols.min() <= cx <= patch_cols.max() and patch_rows.min() <= cy <= patch_rows.max()


@pytest.mark.parametrize("size", [(320, 240), (200, 150), (100, 180)])
def test_generated_frames_smaller_than_the_face_patch_fit_it(size: tuple[int, int]) -> None:
    width, height = size
    for k in (0, 5, 12):
        frame = face_frame(k, 25, size)
        assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        # The patch (the only non-gradient part) lies wholly inside the frame, shrunk if needed.
        rows, cols = np.nonzero(np.abs(np.diff(frame[..., 0].astype(int), axis=1)) > 8)
        assert len(rows) > 0 and cols.max() - cols.min() <= min(256, width, height)


def test_matmul_peak_counts_a_multiply_add_as_two_flops() -> None:
    threads = torch.get_num_threads()
    peak = matmul_peak(64, threads=1, repeats=2)
    assert peak["threads"] == 1 and peak["gmacs_per_s"] > 0
    assert torch.get_num_threads() == threads, "the caller's thread count was not restored"
    assert abs(peak["gflops"] - 2 * peak["gmacs_per_s"]) <= 1e-3 * peak["gflops"]


def test_peak_rss_grows_with_touched_memory() -> None:
    # A fresh interpreter, whose peak so far is its imports: 256 MiB more must show.
    code = ("import numpy as np; from emodistill.bench import peak_rss_mb; "
            "before = peak_rss_mb(); block = np.ones(32 * 2**20); print(before, peak_rss_mb())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(float, done.stdout.split())
    assert before > 0 and 250 <= after - before <= 300


def test_bench_members_get_unit_scale_features_from_the_one_batchnorm_reestimation() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    frames = torch.rand(2, 4, 3, 32, 32)  # (B, L, 3, S, S)
    with torch.no_grad():
        fresh = model.eval().backbone(frames.flatten(0, 1)).std()
        reestimate_batchnorm(model, clip_batches(model, frames.numpy()))
        calibrated = model.backbone(frames.flatten(0, 1)).std()
    assert not model.training
    assert calibrated > 0.1 and calibrated > 100 * fresh


def test_cpuid_family_and_model_name_the_generation() -> None:
    assert microarchitecture("AuthenticAMD", 25, 17) == "Zen 4 (EPYC Genoa)"
    assert microarchitecture("GenuineIntel", 6, 143) == "Sapphire Rapids"
    assert microarchitecture("GenuineIntel", 6, 1) == "unknown"
    assert microarchitecture("", None, None) == "unknown"


def test_tree_memory_counts_the_children() -> None:
    code = "import sys, numpy as np; a = np.ones(32 * 2**20); print('ready', flush=True); sys.stdin.read()"
    before = tree_rss_mb()
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert tree_rss_mb() - before >= 256  # the child's 256 MiB block, and its interpreter
    finally:
        child.communicate("")


def test_predicted_peak_is_proportional_from_one_batch_then_linear() -> None:
    assert predicted_peak({}, 2) is None
    assert predicted_peak({1: 300.0}, 5)[0] == pytest.approx(1500.0)
    peak, how = predicted_peak({1: 300.0, 2: 500.0, 3: 800.0}, 5)
    assert peak == pytest.approx(1400.0) and "2 and 3" in how  # through the two largest


def test_training_memory_extrapolates_what_would_exceed_the_budget() -> None:
    measured: list[tuple[str, int, int]] = []

    def fake(preset: str, clips: int, length: int) -> dict:
        measured.append((preset, clips, length))
        peak = 100 + 10 * clips if preset == "tiny" else 1000 + 1000 * clips
        return {"peak_rss_mb": float(peak), "seconds_per_step": 0.5}

    # demo: 2000 MiB at 1 clip; 2 clips predicted 4000 (run: 3000); 5 predicted 6000 (not run).
    sizes = replace(QUICK, train_presets=("tiny", "demo"), train_batches=(5, 1, 2),
                    budget_mb=rss_mb() + SAFETY_MB + 4500)
    table = training_memory(sizes, measure=fake)
    assert measured == [("tiny", 1, 4), ("tiny", 2, 4), ("tiny", 5, 4), ("demo", 1, 4), ("demo", 2, 4)]
    rows = {(r["preset"], r["clips_per_task"]): r for r in table["rows"]}
    assert [r["how"] for r in table["rows"]].count("measured") == 5
    over = rows[("demo", 5)]
    assert over["peak_rss_mb"] == pytest.approx(6000.0) and over["seconds_per_step"] is None
    assert over["how"].startswith("extrapolated") and over["default"] and over["batch"] == "15x4"
    assert rows[("tiny", 2)]["frames"] == 24 and rows[("tiny", 2)]["peak_rss_mb"] == 120.0
    # Where the default batch was measured, the extrapolation from the smaller ones is checked.
    assert table["extrapolation_check"] == [{"preset": "tiny", "clips_per_task": 5, "from": [1, 2],
                                             "predicted_mb": 150.0, "measured_mb": 150.0, "error_percent": 0.0}]


def test_quick_bench_writes_results_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    threads = torch.get_num_threads()
    returned = run_bench(out, quick=True)
    assert torch.get_num_threads() == threads
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert {"machine", "settings", "matmul_peak", "model_only", "pipeline", "memory", "levers", "members_ratio",
            "training", "training_memory", "resources", "targets"} <= set(results)
    assert results["machine"]["cores"] >= 1 and results["machine"]["torch"]
    model_rows = results["model_only"]
    # Every (members, clip) is measured once per backend.
    assert len(model_rows) == 2 * 2 * 2
    assert {r["backend"] for r in model_rows} == {"torch", "onnx"}
    for row in model_rows:
        assert row["frames_per_s"] > 0 and row["best_frames_per_s"] >= row["frames_per_s"]
        assert 0 < row["peak_ratio"] < 10
        expected = row["macs_per_frame"] * row["frames_per_s"] / 1e9
        assert abs(row["gmacs_per_s"] - expected) <= 1e-3 * expected
    stages = [(r["stage"], r["members"], r["backend"]) for r in results["pipeline"]]
    assert [stage for stage, _, _ in stages[:2]] == [FRONT_END, DLIB_EVERY_FRAME]
    first, dlib = results["pipeline"][:2]
    assert first["vs_dlib_every_frame"] == pytest.approx(first["frames_per_s"] / dlib["frames_per_s"], rel=0.1)
    assert {(m, b) for _, m, b in stages[2:]} == {(1, "torch"), (1, "onnx"), (2, "torch"),
                                                 (2, "onnx")}
    assert all(r["frames_per_s"] > 0 and r["frames"] == 10 for r in results["pipeline"])
    peaks = results["memory"]["peak_rss_mb"]
    assert len(peaks) == 5 and all(v > 0 for v in peaks.values())
    assert all(v >= peaks["baseline (imports only)"] for v in peaks.values())
    assert set(results["targets"]) == {"single_member_model_only", "ensemble_whole_pipeline", "front_end",
                                       "one_member_vs_ensemble_pipeline", "ensemble_speed_up_with_levers",
                                       "bench_peak_memory_mb", "bench_wall_seconds"}
    front = results["targets"]["front_end"]
    assert front["reached"] == results["pipeline"][0]["frames_per_s"] and front["met"] == (front["reached"] >= 200)
    ratio = results["targets"]["ensemble_speed_up_with_levers"]
    assert ratio["reached"] == results["levers"]["speedup"] and ratio["met"] == (ratio["reached"] >= 1.5)
    # Members sharing a frozen backbone: the levers run it once, with their own plain path's outputs.
    frozen = results["levers"]["frozen_front"]
    assert frozen["levers_frames_per_s"] > 0 and frozen["max_abs_difference"] <= results["levers"]["tolerance"]
    assert "sharing a frozen backbone" in out.with_suffix(".md").read_text()
    members = results["members_ratio"]
    whole_rows = {(r["members"], r["backend"]): r for r in results["pipeline"][2:]}
    assert members["one_member_frames_per_s"] == whole_rows[(1, "torch")]["frames_per_s"]
    assert members["ensemble_frames_per_s"] == whole_rows[(2, "torch")]["frames_per_s"]
    assert members["ratio"] == pytest.approx(members["one_member_frames_per_s"] / members["ensemble_frames_per_s"],
                                             rel=0.02)
    one = results["targets"]["one_member_vs_ensemble_pipeline"]
    assert one["reached"] == members["ratio"] and one["met"] == (one["reached"] >= 3)
    whole = results["targets"]["ensemble_whole_pipeline"]
    assert whole["reached"] >= max(r["frames_per_s"] for r in results["pipeline"] if r["members"] == 2)
    # The training-memory table: tiny at --clips-per-task 1 and 2, each measured in its own process.
    train = results["training_memory"]["rows"]
    assert [(r["preset"], r["clips_per_task"], r["batch"], r["how"]) for r in train] == [
        ("tiny", 1, "3x4", "measured"), ("tiny", 2, "6x4", "measured")]
    assert all(200 < r["peak_rss_mb"] < 4000 and r["seconds_per_step"] > 0 for r in train)
    assert [r["case"] for r in results["training"]] == ["fp32", "bf16 autocast", "fp32, torch's PReLU backward"]
    # The bench's own cost: its peak counts this process and its children together.
    own = results["resources"]
    assert own["peak_rss_mb"] >= max(own["self_peak_mb"], own["largest_child_peak_mb"], own["sampled_tree_peak_mb"])
    assert own["largest_child_peak_mb"] >= max(r["peak_rss_mb"] for r in train)
    assert 0 < own["wall_seconds"] == results["targets"]["bench_wall_seconds"]["reached"]
    assert results["targets"]["bench_peak_memory_mb"]["reached"] == own["peak_rss_mb"]
    assert results["machine"]["microarchitecture"] and "caches" in results["machine"]
    table = out.with_suffix(".md").read_text()
    assert "| tiny (32x32) | 1 | 2 | 2x4 |" in table and "| whole pipeline | 2 | onnx |" in table
    assert "What `train` will take" in table and "| tiny (32x32) | 1 | 3x4 |" in table
    assert "This benchmark's own cost" in table


def test_a_frozen_front_bench_run_shares_all_but_the_tail(tmp_path: Path) -> None:
    from emodistill.bench.inputs import FROZEN_TAIL, random_run
    from emodistill.models.mobilefacenet import shared_tail_blocks

    crops = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    frozen = random_run(tmp_path / "frozen", "tiny", 3, crops, frozen_tail=FROZEN_TAIL)
    backbones = [frozen.load_member(0, m).backbone for m in range(3)]
    assert shared_tail_blocks(backbones) == FROZEN_TAIL
    independent = random_run(tmp_path / "independent", "tiny", 2, crops)
    assert shared_tail_blocks([independent.load_member(0, m).backbone for m in range(2)]) is None
