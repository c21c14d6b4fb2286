"""The stage order of docs/ARCHITECTURE.md, enforced: a module imports only from its own stage
and the stages before it, and predicting never loads the training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import emodistill

PACKAGE = Path(emodistill.__file__).parent

# Stage -> the stages it may import from (besides itself). Keep in step with ARCHITECTURE.md.
MAY_IMPORT = {
    "core": set(),
    "tasks": {"core"},
    "data": {"core", "tasks"},
    "models": {"core", "tasks", "data"},
    "run": {"core", "tasks", "data", "models"},
    "methods": {"core", "tasks", "data", "models", "run"},
    "evaluation": {"core", "tasks", "data", "models", "run", "methods"},
    "report": {"core", "tasks", "data", "models", "run", "methods", "evaluation"},
    # Predicting builds on the models and the run folder; it reads uncertainty measures, never
    # the training code.
    "predict": {"core", "tasks", "data", "models", "run", "evaluation"},
}
APPS = {"cli", "demo", "bench", "__init__"}  # the commands: they may import every stage


def stage_of(module: str) -> str:
    """"emodistill.methods.training" -> "methods"; "emodistill.run" -> "run"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1] if len(parts) > 2 else [*parts[:-1], "__init__"]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every emodistill import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "emodistill" else [f"emodistill.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m == "emodistill" or m.startswith("emodistill.")]


def test_every_module_belongs_to_a_known_stage() -> None:
    stages = {stage_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert stages <= set(MAY_IMPORT) | APPS, stages - set(MAY_IMPORT) - APPS


def test_no_module_imports_from_a_later_stage() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = stage_of(module_name(path))
        if stage in APPS:
            continue
        for line, module in imported_modules(path):
            target = stage_of(module)
            if target != stage and target not in MAY_IMPORT[stage]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({stage}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from emodistill.methods.training import train_member\n")
    assert imported_modules(bad) == [(2, "emodistill.methods.training")]
    assert "methods" not in MAY_IMPORT["predict"]


def test_predicting_does_not_load_training_or_the_report() -> None:
    code = ("import sys, emodistill.predict, emodistill.predict.command, emodistill.predict.plots; "
            "print(sorted(m for m in sys.modules if m.startswith(('emodistill.methods', 'emodistill.report'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_public_api_is_listed_and_predictor_loads_no_training_or_reader() -> None:
    code = ("import sys, emodistill; names = dir(emodistill); emodistill.Predictor; "
            "print(sorted(m for m in sys.modules if m.startswith(('emodistill.methods', 'emodistill.report', "
            "'emodistill.data.affwild', 'emodistill.data.annotations', 'emodistill.data.layout', "
            "'emodistill.data.manifest', 'emodistill.data.sampler', 'emodistill.data.prepare')))); "
            "print(all(n in names for n in emodistill.__all__), emodistill.load_run.__doc__ is not None, "
            "emodistill.prepare.__doc__ is not None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True True True"], out


SAVED_RUN = Path(__file__).parent / "data" / "run-0.1.0"  # trained by the code before the layout change


def test_a_run_saved_before_the_layout_change_still_predicts_and_evaluates(tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    import numpy as np
    import torch

    from emodistill.core.checkpoints import read_json, write_json
    from emodistill.data.affwild import load_split
    from emodistill.evaluation.evaluate import evaluate_run
    from emodistill.methods.training import validation_scores
    from emodistill.predict import Predictor
    from emodistill.run import Run

    root = tmp_path / "run"
    shutil.copytree(SAVED_RUN, root)
    stored = read_json(root / "run.json")
    # The same simulated data (8 videos x 32 frames, 48 px, seed 3), only at another path.
    write_json(root / "run.json", stored | {"data": str(tiny_data)})
    run = Run(root)
    val, _ = load_split(tiny_data, "val", size=32, progress=False)
    for m in range(2):  # the weights give the validation scores they were saved with
        record = read_json(run.record_path(0, m))
        scores = validation_scores(run.load_member(0, m), val, torch.device("cpu"), run.config().train, False)
        assert scores == pytest.approx(record["scores"], abs=1e-6)
    video = sorted(p for p in (tiny_data / "cropped_aligned").iterdir() if p.is_dir())[0]
    table = Predictor(root, device="cpu", log=lambda _: None).predict(video)
    assert len(table) == len(list(video.glob("*.jpg"))) and table["face"].all()
    assert np.isfinite(table["AU12"].astype(float)).all()
    report = evaluate_run(root, torch.device("cpu"), ood_limit=32, mc_passes=2, progress=False, log=lambda _: None)
    assert [g["name"] for g in report["generations"]] == ["teacher"]
