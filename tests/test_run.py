"""End to end: the quick demo's report, resuming a killed run, refusing a changed config."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from emodistill.cli import main
from emodistill.report.compare import compare_runs

TINY_TRAIN = ["--preset", "tiny", "--epochs", "1", "--batches-per-epoch", "2", "--clip-length", "8", "--quiet",
              "--device", "cpu"]


def test_demo_quick_over_two_seeds_writes_sane_reports_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet", "--device", "cpu", "--seeds", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    reports = [json.loads((out / f"seed-{k}" / "run" / "report" / "report.json").read_text()) for k in (0, 1)]
    total = summary["Tea ens total"]
    assert total["values"] == [r["generations"][0]["ensemble"]["total"] for r in reports]
    assert total["mean"] == pytest.approx(np.mean(total["values"]))
    half = stats.t.ppf(0.975, 1) * np.std(total["values"], ddof=1) / np.sqrt(2)
    assert total["ci95"] == pytest.approx([total["mean"] - half, total["mean"] + half])
    difference = summary["Stu1 EXPR NLL - Tea EXPR NLL"]
    per_seed = [r["generations"][1]["nll"]["EXPR"] - r["generations"][0]["nll"]["EXPR"] for r in reports]
    assert difference["values"] == pytest.approx(per_seed)
    assert {"Stu1 AU NLL - TS AU NLL", "Tea ens total - Tea single total"} <= set(summary)
    assert "| Stu1 EXPR NLL - Tea EXPR NLL |" in (out / "summary.md").read_text()
    table = compare_runs([out])
    assert str(out / "seed-0" / "run") in table and str(out / "seed-1" / "run") in table
    report_dir = out / "seed-0" / "run" / "report"
    report = json.loads((report_dir / "report.json").read_text())
    assert [g["name"] for g in report["generations"]] == ["teacher", "student1"]
    for g in report["generations"]:
        assert set(g["ensemble"]) == {"AU", "EXPR", "valence", "arousal", "total"}
        assert set(g["single_mean"]) == set(g["single_std"]) == set(g["ensemble"])
        assert g["ensemble"]["total"] == pytest.approx(sum(g["ensemble"][k] for k in
                                                           ("AU", "EXPR", "valence", "arousal")))
        assert len(g["nll"]["AU"]) == 12 and g["nll"]["AU_mean"] > 0 and g["nll"]["EXPR"] > 0
        assert set(g["rmse"]) == {"valence", "arousal"} and set(g["ece"]) == {"AU", "EXPR"}
        assert 0.0 <= g["ood_auc"] <= 1.0 and 0.0 <= g["ood_auc_epistemic"] <= 1.0
        assert set(g["ood_flagged"]) == set(g["ood_flagged_single"]) == {
            "validation (held out)", report["ood_set"], report["nonface_set"]}
        assert set(g["calibrated"]["nll"]) == {"AU", "AU_mean", "EXPR"}
        assert set(g["ood_auc_by_task"]) == {"AU", "EXPR", "VA"}
        assert all(0.0 <= auc <= 1.0 for auc in g["ood_auc_by_task"].values())
        # The ensemble averages probabilities, so its NLL is at most the members' mean NLL
        # (Jensen); a wrong combination (averaged logits, a lost member) breaks this.
        for key in ("AU_mean", "EXPR"):
            assert g["ensemble_uncertainty"]["nll"][key] <= g["nll"][key] + 1e-9, key
    baselines = report["baselines"]
    assert len(baselines["temperature_scaling"]["nll"]["AU"]) == 12
    assert set(baselines["mc_dropout"]["rmse"]) == {"valence", "arousal"}
    assert report["ood_set"] in {"fashion-mnist", "lfw-nonfaces+digits"}
    # The oracle knows the true label distributions: no model beats its AU NLL by much.
    assert report["oracle"]["nll"]["AU_mean"] <= min(g["nll"]["AU_mean"] for g in report["generations"]) + 0.02
    for name in ("report.md", "emotion_per_generation.png", "roc.png", "reliability.png", "au_nll.png"):
        data = (report_dir / name).read_bytes()
        assert len(data) > 1000, name
    assert (report_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (report_dir / "report.md").read_text()
    assert "| Tea |" in markdown and "| Stu1 |" in markdown and "| TS |" in markdown
    assert ("| Generation | density AUC (ens.) | density AUC (single) | threshold | flagged: validation (held out) |"
            in markdown)
    assert "| epistemic AUC | AU epistemic | EXPR epistemic | VA epistemic |" in markdown
    assert "| Generation | AU NLL (single) raw -> calibrated | EXPR NLL (single) raw -> calibrated |" in markdown
    for name in ("density.safetensors", "calibration.safetensors"):  # what `predict` reads
        assert (out / "seed-0" / "run" / "student1" / name).exists(), name
    # The backbone line traces both stages, and the fine-tuning's kept landmark loss with its error.
    assert "landmark loss kept on" in markdown and "held-out landmark error after it" in markdown


def _train_command(data: Path, run: Path, members: int) -> list[str]:
    return [sys.executable, "-m", "emodistill.cli", "train", "--data", str(data), "--out", str(run),
            "--members", str(members), "--generations", "0", *TINY_TRAIN]


def test_killed_run_resumes_without_retraining_finished_members(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(_train_command(tiny_data, run, members=3), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    first = run / "teacher" / "member-0.json"
    deadline = time.time() + 120
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first.exists(), process.stderr.read().decode()
    assert not (run / "teacher" / "member-2.json").exists(), "the run finished before it could be killed"
    record_before = first.read_text()
    mtime_before = first.stat().st_mtime_ns

    resumed = subprocess.run(_train_command(tiny_data, run, members=3), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "teacher member 0: already trained, kept" in resumed.stdout
    assert first.read_text() == record_before and first.stat().st_mtime_ns == mtime_before
    for member in range(3):
        assert (run / "teacher" / f"member-{member}.safetensors").exists()
        assert (run / "teacher" / f"member-{member}.json").exists()
    assert not list(run.rglob("*.tmp")), "a half-written file was left behind"

    changed = subprocess.run(_train_command(tiny_data, run, members=4), capture_output=True, text=True)
    assert changed.returncode == 2
    assert "different config" in changed.stderr and "members" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_data_without_a_task_trains_the_others(tiny_data: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "no-expr"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(".emodistill-cache"))
    shutil.rmtree(data / "annotations" / "EXPR_Set")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--members", "1", "--generations", "1",
                 *TINY_TRAIN]) == 0
    assert "no EXPR labels" in capsys.readouterr().out
    record = json.loads((run / "student1" / "member-0.json").read_text())
    assert "EXPR" not in record["scores"] and "AU" in record["scores"]


def test_bad_run_folder_is_one_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is not an emodistill run" in err and err.count("\n") == 1


def test_missing_backbone_file_is_refused_before_any_work(tiny_data: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-backbone.safetensors"
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--backbone-weights", str(missing), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"--backbone-weights {missing}: no such file" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["train"].update(epochs="3"), "train.epochs"),
    (lambda c: c.update(members=2.5), "members"),
    (lambda c: c["train"].update(freeze_backbone=1), "train.freeze_backbone"),
    (lambda c: c.update(seed=True), "seed"),
    (lambda c: c.update(train=[1]), "train."),
])
def test_run_json_of_the_wrong_types_is_one_clear_error(tmp_path: Path, capsys, edit, field: str) -> None:
    from emodistill.run import RunConfig

    config = RunConfig(data=str(tmp_path), preset="tiny")
    stored = json.loads(json.dumps(asdict(config)))
    assert RunConfig.from_dict(stored) == config  # the right types read back as they were
    edit(stored)
    (tmp_path / "run.json").write_text(json.dumps(stored))
    assert main(["evaluate", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "run.json is not a run config this version can read" in err and field in err and err.count("\n") == 1
