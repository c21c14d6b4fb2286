"""The Markdown and terminal tables of a report, each drawn from report.json alone (paper Tables
1, 3, 4 and the ABAW challenge's own scores), with the task set the report recorded.
"""

from __future__ import annotations

from emodistill.evaluation.evaluate import skill_scores
from emodistill.tasks import PAPER_TASKS, TaskSet

SHORT = {"teacher": "Tea"}
# Task -> the key of its summary NLL in a score dict's "nll": {"AU": "AU_mean", "EXPR": "EXPR"}.

def report_tasks(report: dict) -> TaskSet:
    """The report's task set; the paper's (2021) for a report written before it recorded one."""
    return TaskSet.from_dict(report["task_set"]) if "task_set" in report else PAPER_TASKS


def nll_keys(report: dict) -> dict[str, str]:
    """Task -> the key of its summary NLL in a score dict's "nll": {"AU": "AU_mean", "EXPR": "EXPR"}."""
    return {name: key for name, (group, key) in skill_scores(report_tasks(report)).items() if group == "nll"}


def short_name(name: str) -> str:
    """teacher -> Tea, student2 -> Stu2 (the paper's labels)."""
    return SHORT.get(name, name.replace("student", "Stu"))

def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are written with `str`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)

def reference_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, scores) of the fixed predictors every score is read against: what a model that
    learned nothing scores (the class prior) and, on simulator data, the best possible (oracle)."""
    rows = [("Prior (train frequencies)", report["prior"])] if "prior" in report else []
    if "oracle" in report:
        rows.append(("Oracle (true distributions)", report["oracle"]))
    return rows

def emotion_table(report: dict) -> str:
    """Ensemble metrics per generation with the single members' total (Table 1, Figure 4)."""
    keys = [k for k in (*report_tasks(report).metric_names, "total") if k in report["generations"][0]["ensemble"]]
    rows = []
    for g in report["generations"]:
        single = f"{fmt(g['single_mean'].get('total'))} ± {fmt(g['single_std'].get('total'))}"
        nll = g.get("ensemble_uncertainty", {}).get("nll", {})
        rows.append([short_name(g["name"]), *(fmt(g["ensemble"].get(k)) for k in keys), single,
                     *(fmt(nll.get(key)) for key in nll_keys(report).values())])
    for label, scores in reference_rows(report):
        rows.append([label, *(fmt(scores["emotion"].get(k)) for k in keys), "",
                     *(fmt(scores["nll"].get(key)) for key in nll_keys(report).values())])
    return markdown_table(["Generation", *(f"{k} (ens.)" for k in keys), "total (single, mean ± std)",
                           *(f"{name} NLL (ens.)" for name in nll_keys(report))], rows)

def baseline_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, scores) of every baseline evaluate scored, in its order."""
    return [(entry.get("label", key), entry) for key, entry in report.get("baselines", {}).items()]

def skill_table(report: dict) -> str:
    """Per generation and baseline: the share of the prior-to-oracle gap closed, per task."""
    names = list(skill_scores(report_tasks(report)))
    rows = [[short_name(g["name"]), *(fmt(g["skill"][kind].get(n)) for kind in ("single", "ensemble") for n in names)]
            for g in report["generations"] if "skill" in g]
    for label, baseline in baseline_rows(report):
        if "skill" in baseline:
            rows.append([label, *(fmt(baseline["skill"].get(n)) for n in names), *("" for _ in names)])
    header = ["Method", *(f"{n} (single)" for n in names), *(f"{n} (ens.)" for n in names)]
    return markdown_table(header, rows) if rows else ""

def uncertainty_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, scores) for each generation's single members, the baselines, prior and oracle."""
    rows = [(short_name(g["name"]), g) for g in report["generations"]]
    return rows + baseline_rows(report) + [(label.split(" ")[0], scores) for label, scores in reference_rows(report)]

def au_nll_table(report: dict) -> str:
    """NLL of each AU for single members and baselines (Table 3)."""
    tasks = report_tasks(report)
    if "AU" not in tasks:
        return ""
    rows = []
    for label, scores in uncertainty_rows(report):
        per_au = scores.get("nll", {}).get("AU")
        if per_au:
            rows.append([label, *(fmt(v) for v in per_au), fmt(scores["nll"][nll_keys(report)["AU"]])])
    return markdown_table(["Method", *tasks["AU"].names, "Avg."], rows) if rows else ""

def other_uncertainty_table(report: dict) -> str:
    """EXPR NLL, valence and arousal RMSE, and ECE (Table 4, plus calibration error)."""
    rows = []
    for label, scores in uncertainty_rows(report):
        rmse = scores.get("rmse", {})
        ece = scores.get("ece", {})
        rows.append([label, fmt(scores.get("nll", {}).get("EXPR")), fmt(rmse.get("valence")),
                     fmt(rmse.get("arousal")), fmt(ece.get("AU")), fmt(ece.get("EXPR"))])
    return markdown_table(["Method", "EXPR NLL", "Valence RMSE", "Arousal RMSE", "AU ECE", "EXPR ECE"], rows)

def ood_table(report: dict) -> str:
    """Per generation: the ROC AUC of the feature-density score (`predict`'s flag) for the
    ensemble and a single member, its threshold and the share of each set it flags, and the AUC
    of the paper's score (epistemic uncertainty averaged over the tasks), with each task's alone."""
    gens = report["generations"]
    tasks = list(gens[0].get("ood_auc_by_task", {}))
    sets = list(gens[0].get("ood_flagged", {}))
    rows = [[short_name(g["name"]), fmt(g["ood_auc"]) if "ood_auc_epistemic" in g else "-",
             fmt(g.get("ood_auc_single")), fmt(g.get("ood_threshold")),
             *(f"{100 * g['ood_flagged'][name]:.1f}% ({100 * g['ood_flagged_single'][name]:.1f}%)" for name in sets),
             fmt(g.get("ood_auc_epistemic", g["ood_auc"])), *(fmt(g["ood_auc_by_task"].get(t)) for t in tasks)]
            for g in gens]
    note = ("ROC AUC against the OOD set of the feature-density score (Mahalanobis distances of the frame's "
            "visual features and of its stage statistics, each channel's mean and log spread at the end of every "
            "resolution stage of the backbone, to class-conditional Gaussians fitted on training frames; per "
            "member the larger of the two, each divided by its own 5% threshold on validation frames, then "
            "averaged over the members; the score `predict` flags with), for the ensemble and a single member "
            "(mean over members); the share of each set flagged at the threshold that flags 5% of the validation "
            "frames (validation: threshold set on the other half of the videos), for the ensemble (and its first "
            "member alone); then the AUC of the paper's score, the epistemic uncertainty averaged over the tasks "
            "(Fig. 5), and of each task's epistemic part alone (a diagnostic). 0.5 is chance.")
    header = ["Generation", "density AUC (ens.)", "density AUC (single)", "threshold",
              *(f"flagged: {name}" for name in sets), "epistemic AUC", *(f"{t} epistemic" for t in tasks)]
    table = note + "\n\n" + markdown_table(header, rows)
    if "ood_flagged_by_part" in gens[0]:
        parts = list(gens[0]["ood_flagged_by_part"])
        by_part = [[short_name(g["name"]), *(f"{100 * g['ood_flagged_by_part'][part][name]:.1f}%"
                                             for part in parts for name in g["ood_flagged_by_part"][part])]
                   for g in gens]
        names = list(gens[0]["ood_flagged_by_part"][parts[0]])
        table += ("\n\nWhat each part of the density flags alone, at its own 5% of validation frames (ensemble):"
                  "\n\n" + markdown_table(["Generation", *(f"{part}: {name}" for part in parts for name in names)],
                                           by_part))
    return table


def calibration_table(report: dict) -> str:
    """Per generation and calibrated task: NLL raw and calibrated, single members (mean) and the
    ensemble, beside the class prior; and the challenge score with either decision."""
    gens = [g for g in report["generations"] if "calibrated" in g]
    if not gens:
        return ""
    keys = {name: key for name, key in nll_keys(report).items() if key in gens[0]["calibrated"]["nll"]}
    rows = []
    for g in gens:
        pairs = [(g["nll"], g["calibrated"]["nll"]),
                 (g["ensemble_uncertainty"]["nll"], g["ensemble_calibrated"]["nll"])]
        rows.append([short_name(g["name"]), *(f"{fmt(raw.get(key))} -> {fmt(cal.get(key))}"
                                              for raw, cal in pairs for key in keys.values()),
                     *(f"{fmt(v)} -> {fmt(g['challenge_calibrated']['scores'].get(k))}"
                       for k, v in g["challenge"]["scores"].items())])
    if "prior" in report:
        prior = report["prior"]
        rows.append(["Prior", *(fmt(prior["nll"].get(key)) for _ in range(2) for key in keys.values()),
                     *(fmt(v) for v in prior["challenge"]["scores"].values())])
    header = ["Generation", *(f"{name} NLL (single) raw -> calibrated" for name in keys),
              *(f"{name} NLL (ens.) raw -> calibrated" for name in keys),
              *(f"{k} own -> calibrated decisions" for k in gens[0]["challenge"]["scores"])]
    note = ("Calibrated: the class reweighting's prior shift undone and a scale and bias per logit fitted by NLL, "
            "per member, on validation videos other than the scored frame's (5-fold cross-fitting by video). "
            "The challenge scores decide with the members' own (reweighted) outputs, as `predict` does; the "
            "calibrated decisions are shown for comparison.")
    return note + "\n\n" + markdown_table(header, rows)


def _nll_cells(nll: dict, keys: dict[str, str]) -> str:
    """The summary NLL of each task, right-aligned under its header in `summary_table`."""
    return "".join(f"{fmt(nll.get(key)):>{_nll_width(name)}}" for name, key in keys.items())

def _nll_width(name: str) -> int:
    """A column as wide as its header "<task> NLL" and a space, and at least 8."""
    return max(8, len(f"{name} NLL") + 1)


def summary_table(report: dict) -> str:
    """A short plain-text table for the terminal."""
    keys = nll_keys(report)
    nll_header = "".join(f"{name + ' NLL':>{_nll_width(name)}}" for name in keys)
    lines = [f"{'generation':<11}{'ensemble':>9}{'single':>15}{nll_header}{'OOD AUC':>8}{'epist.':>7}"]
    for g in report["generations"]:
        single = f"{g['single_mean'].get('total', 0):.3f}±{g['single_std'].get('total', 0):.3f}"
        lines.append(f"{short_name(g['name']):<11}{g['ensemble'].get('total', 0):>9.3f}{single:>15}"
                     f"{_nll_cells(g['nll'], keys)}{g['ood_auc']:>8.3f}{fmt(g.get('ood_auc_epistemic')):>7}")
        if "calibrated" in g:
            lines.append(f"{'calibrated':>35}{_nll_cells(g['calibrated']['nll'], keys)}")
    for label, scores in uncertainty_rows(report)[len(report["generations"]):]:
        total = fmt(scores["emotion"].get("total")) if "emotion" in scores else ""
        lines.append(f"{label:<11}{total:>9}{'':>15}{_nll_cells(scores['nll'], keys)}")
    return "\n".join(lines)


def challenge_table(report: dict) -> str:
    """The ensembles' challenge scores under the release's own formulas, beside the prior and
    the oracle; '' for a report from before they were computed."""
    gens = [g for g in report["generations"] if "challenge" in g]
    if not gens:
        return ""
    rows = [(short_name(g["name"]) + " (ens.)", g["challenge"]) for g in gens]
    rows += [(label, scores["challenge"]) for label, scores in reference_rows(report) if "challenge" in scores]
    names = list(dict.fromkeys(k for _, c in rows for k in c["scores"]))
    parts = list(dict.fromkeys((t, p) for _, c in rows for t, values in c["parts"].items() for p in values))
    table = markdown_table(["Predictor", *names, *(f"{t} {p}" for t, p in parts)],
                           [[label, *(fmt(c["scores"].get(n)) for n in names),
                             *(fmt(c["parts"].get(t, {}).get(p)) for t, p in parts)] for label, c in rows])
    year = report.get("scoring", "2021")
    formulas = ("P_EXPR = 0.67 F1 + 0.33 accuracy, P_AU = 0.5 F1 + 0.5 accuracy, P_VA = mean CCC" if year == "2021"
                else "P_EXPR = macro F1, P_AU = mean F1, P_VA = mean CCC, P_MTL = their sum")
    return f"{report.get('release', 'ABAW2 (2021)')}, the {year} formulas: {formulas}.\n\n{table}"
