"""The same demo over several seeds: each headline figure's values, mean and 95% t-interval, and the
paired per-seed differences behind the report's claims, each said only where its interval
excludes zero (summary.json, summary.md)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from emodistill.report.tables import fmt, markdown_table, nll_keys, report_tasks, short_name

# Lower is better for these figures (NLL, RMSE); higher for the rest (totals, skill, AUC, P_*).
LOWER_IS_BETTER = ("NLL", "RMSE")


def figures(report: dict) -> dict[str, float]:
    """The headline figures of one report, by name: "Tea ens total", "Stu1 EXPR NLL", "TS AU NLL",
    "Stu2 OOD AUC", "Prior total", ... (NLL and RMSE of single members, as the report's tables)."""
    tasks = report_tasks(report)
    nll = nll_keys(report)
    out: dict[str, float] = {}

    def add(name: str, value: object) -> None:
        if isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)

    def scores(label: str, entry: dict) -> None:
        for task, key in nll.items():
            add(f"{label} {task} NLL", entry.get("nll", {}).get(key))
            add(f"{label} {task} NLL (calibrated)", entry.get("calibrated", {}).get("nll", {}).get(key))
        for name in ("valence", "arousal"):
            add(f"{label} {name} RMSE", entry.get("rmse", {}).get(name))

    for g in report["generations"]:
        label = short_name(g["name"])
        add(f"{label} ens total", g["ensemble"].get("total"))
        add(f"{label} single total", g["single_mean"].get("total"))
        scores(label, g)
        for metric in tasks.metric_names:
            add(f"{label} {metric} skill", g.get("skill", {}).get("single", {}).get(metric))
        add(f"{label} OOD AUC", g.get("ood_auc"))
        add(f"{label} OOD AUC (epistemic)", g.get("ood_auc_epistemic"))
        for name, value in g.get("ood_flagged", {}).items():  # validation, the OOD set, non-faces
            short = "non-faces" if "non-faces" in name else name.split(" ")[0]
            add(f"{label} flagged: {short}", value)
        for name, value in g.get("challenge", {}).get("scores", {}).items():
            add(f"{label} {name}", value)
    for key, entry in report.get("baselines", {}).items():
        scores(entry.get("label", key).split(" ")[0], entry)
    for label in ("prior", "oracle"):
        if label in report:
            add(f"{label.capitalize()} total", report[label]["emotion"].get("total"))
            scores(label.capitalize(), report[label])
    return out


def claims(names: list[str]) -> list[tuple[str, str]]:
    """The (a, b) pairs whose difference a - b the report claims something about: each student
    generation against the teachers and against each baseline, and each ensemble against its
    single members; those whose figures exist."""
    have = set(names)
    generations = [n.split(" ")[0] for n in names if n.endswith(" ens total")]
    students = [g for g in generations if g != "Tea"]
    baselines = sorted({n.split(" ")[0] for n in names if n.endswith(" NLL")} - {*generations, "Prior", "Oracle"})
    pairs = []
    measures = [n.removeprefix("Tea ") for n in names
                if n.startswith("Tea ") and not n.endswith(" skill") and "flagged" not in n]
    for student in students:
        pairs += [(f"{student} {m}", f"Tea {m}") for m in measures]
        for baseline in baselines:
            pairs += [(f"{student} {m}", f"{baseline} {m}") for m in measures if f"{baseline} {m}" in have]
    pairs += [(f"{g} ens total", f"{g} single total") for g in generations]
    return [(a, b) for a, b in pairs if a in have and b in have]


def interval(values: list[float]) -> dict:
    """{"values", "mean", "ci95": [low, high] (a t-interval; None for one value)}."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean())
    if len(array) < 2:
        return {"values": array.tolist(), "mean": mean, "ci95": None}
    half = float(stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array)))
    return {"values": array.tolist(), "mean": mean, "ci95": [mean - half, mean + half]}


def summarise_seeds(reports: list[dict]) -> dict[str, dict]:
    """Figure or "a - b" -> its interval over the seeds' reports (a figure missing from one
    report is left out)."""
    per_seed = [figures(report) for report in reports]
    common = [name for name in per_seed[0] if all(name in f for f in per_seed)]
    summary = {name: interval([f[name] for f in per_seed]) for name in common}
    for a, b in claims(common):
        summary[f"{a} - {b}"] = interval([f[a] - f[b] for f in per_seed])
    return summary


def verdict(name: str, entry: dict) -> str:
    """"better", "worse" or "not shown" for a difference a - b, by whether its interval excludes 0."""
    if entry["ci95"] is None:
        return "not shown (one seed)"
    low, high = entry["ci95"]
    if low <= 0 <= high:
        return "not shown"
    lower_better = any(word in name.split(" - ")[0] for word in LOWER_IS_BETTER)
    return "better" if (high < 0) == lower_better else "worse"


def render_summary(summary: dict[str, dict], seeds: int) -> str:
    """summary.md: each figure's mean and interval with its per-seed values, then each claim."""
    def cells(entry: dict) -> list[str]:
        ci = "-" if entry["ci95"] is None else f"[{fmt(entry['ci95'][0])}, {fmt(entry['ci95'][1])}]"
        return [fmt(entry["mean"]), ci, " / ".join(fmt(v) for v in entry["values"])]

    names = [n for n in summary if " - " not in n]
    differences = [n for n in summary if " - " in n]
    parts = [f"# The demo over {seeds} seeds",
             "Each seed k draws its own simulated data split, backbone fine-tuning and members "
             "(`emodistill demo --seeds N`, OUT/seed-k). Means with 95% t-intervals over the seeds; "
             "a claim a - b holds only where its interval excludes 0, and is \"not shown\" otherwise.",
             "## Claims (paired per seed)",
             markdown_table(["a - b", "mean", "95% interval", "per seed", "a is"],
                            [[n, *cells(summary[n]), verdict(n, summary[n])] for n in differences]),
             "## Figures",
             markdown_table(["figure", "mean", "95% interval", "per seed"], [[n, *cells(summary[n])] for n in names])]
    return "\n\n".join(parts) + "\n"
