"""Several runs' reports side by side (the paper's ablations, Tables 1 and 5)."""

from __future__ import annotations

from pathlib import Path

from emodistill.core.checkpoints import read_json
from emodistill.core.errors import InputError
from emodistill.report.tables import fmt, markdown_table, report_tasks, short_name
from emodistill.run import Run
from emodistill.tasks import PAPER_TASKS


def expand_seeds(paths: list[Path]) -> list[Path]:
    """Run folders, with a demo over several seeds (a folder of seed-k/ demos) standing for the run
    of each of its seeds, in seed order."""
    runs = []
    for path in map(Path, paths):
        seeds = sorted(path.glob("seed-*/run"), key=lambda p: int(p.parent.name.removeprefix("seed-")))
        runs += seeds if not Run(path).exists() and seeds else [path]
    return runs


def compare_runs(runs: list[Path]) -> str:
    """Several runs' reports side by side (e.g. the paper's ablations, Tables 1 and 5); a demo over
    several seeds (`demo --seeds N`) gives one row per seed."""
    rows = []
    for root in expand_seeds(runs):
        run = Run(root)
        if not run.report_path.exists():
            raise InputError(f"{run.report_path} does not exist; run `emodistill evaluate {root}` first")
        report = read_json(run.report_path)
        metrics = report_tasks(report).metric_names
        config = run.config()
        teacher = report["generations"][0]
        best = max(report["generations"], key=lambda g: g["ensemble"].get("total", float("-inf")))
        rows.append([
            str(root), config.preset, str(config.members),
            "yes" if config.train.reweight else "no", "yes" if config.train.balance else "no",
            *(fmt(teacher["ensemble"].get(k)) for k in (*metrics, "total")),
            fmt(teacher["single_mean"].get("total")),
            f"{short_name(best['name'])} {fmt(best['ensemble'].get('total'))}",
            fmt(max(g["ood_auc"] for g in report["generations"])),
        ])
    header = ["run", "preset", "T", "reweight", "balance", *(f"Tea {k}" for k in PAPER_TASKS.metric_names),
              "Tea total", "Tea single", "best generation", "best OOD AUC"]
    return markdown_table(header, rows)
