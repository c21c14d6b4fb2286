"""Tests for the benchmark (emodistill.bench): its parts, and the quick run's files (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emodistill.bench import (
    DLIB_EVERY_FRAME,
    FRONT_END,
    estimate_batchnorm,
    face_frame,
    matmul_peak,
    run_bench,
    timed_rounds,
)
from emodistill.data.frontend import make_detector
from emodistill.models import build_model


def test_timed_rounds_warms_up_then_interleaves_cases() -> None:
    calls: list[str] = []
    seconds = timed_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed ones
    assert [len(v) for v in seconds.values()] == [3, 3]
    assert all(s >= 0 for v in seconds.values() for s in v)


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


def test_estimate_batchnorm_gives_a_fresh_model_unit_scale_features() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    frames = torch.rand(2, 4, 3, 32, 32)  # (B, L, 3, S, S)
    with torch.no_grad():
        fresh = model.eval().backbone(frames.flatten(0, 1)).std()
        estimate_batchnorm(model, frames.numpy())
        calibrated = model.backbone(frames.flatten(0, 1)).std()
    assert not model.training
    assert calibrated > 0.1 and calibrated > 100 * fresh


def test_quick_bench_writes_results_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    threads = torch.get_num_threads()
    returned = run_bench(out, quick=True)
    assert torch.get_num_threads() == threads
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert {"machine", "settings", "matmul_peak", "model_only", "pipeline", "memory",
            "targets"} <= set(results)
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
                                       "ensemble_speed_up_with_levers"}
    front = results["targets"]["front_end"]
    assert front["reached"] == results["pipeline"][0]["frames_per_s"] and front["met"] == (front["reached"] >= 200)
    ratio = results["targets"]["ensemble_speed_up_with_levers"]
    assert ratio["reached"] == results["levers"]["speedup"] and ratio["met"] == (ratio["reached"] >= 1.5)
    whole = results["targets"]["ensemble_whole_pipeline"]
    assert whole["reached"] >= max(r["frames_per_s"] for r in results["pipeline"] if r["members"] == 2)
    table = out.with_suffix(".md").read_text()
    assert "| tiny (32x32) | 1 | 2 | 2x4 |" in table and "| whole pipeline | 2 | onnx |" in table
