"""Turning a report dict into files a person reads: report.json, report.md and PNG figures.

Tables are shaped like the paper's (Tables 1, 3, 4; Figures 4, 5); everything here is drawn
from report.json alone, so a report can be re-rendered or compared without the models.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from emodistill.core.atomic import atomic_write, disk_full_guard
from emodistill.core.checkpoints import read_json, write_json
from emodistill.core.errors import InputError
from emodistill.evaluation.evaluate import SKILL_SCORES
from emodistill.run import Run
from emodistill.tasks import AU, METRIC_NAMES, TASKS

SHORT = {"teacher": "Tea"}
# Task -> the key of its summary NLL in a score dict's "nll": {"AU": "AU_mean", "EXPR": "EXPR"}.
NLL_KEYS = {name: key for name, (group, key) in SKILL_SCORES.items() if group == "nll"}


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
    keys = [k for k in (*METRIC_NAMES, "total") if k in report["generations"][0]["ensemble"]]
    rows = []
    for g in report["generations"]:
        single = f"{fmt(g['single_mean'].get('total'))} ± {fmt(g['single_std'].get('total'))}"
        nll = g.get("ensemble_uncertainty", {}).get("nll", {})
        rows.append([short_name(g["name"]), *(fmt(g["ensemble"].get(k)) for k in keys), single,
                     *(fmt(nll.get(key)) for key in NLL_KEYS.values())])
    for label, scores in reference_rows(report):
        rows.append([label, *(fmt(scores["emotion"].get(k)) for k in keys), "",
                     *(fmt(scores["nll"].get(key)) for key in NLL_KEYS.values())])
    return markdown_table(["Generation", *(f"{k} (ens.)" for k in keys), "total (single, mean ± std)",
                           *(f"{name} NLL (ens.)" for name in NLL_KEYS)], rows)


def baseline_rows(report: dict) -> list[tuple[str, dict]]:
    """(label, scores) of every baseline evaluate scored, in its order."""
    return [(entry.get("label", key), entry) for key, entry in report.get("baselines", {}).items()]


def skill_table(report: dict) -> str:
    """Per generation and baseline: the share of the prior-to-oracle gap closed, per task."""
    names = list(SKILL_SCORES)
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
    rows = []
    for label, scores in uncertainty_rows(report):
        per_au = scores.get("nll", {}).get("AU")
        if per_au:
            rows.append([label, *(fmt(v) for v in per_au), fmt(scores["nll"][NLL_KEYS[AU.name]])])
    return markdown_table(["Method", *AU.names, "Avg."], rows) if rows else ""


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
    """Per generation: the ROC AUC of the OOD score (epistemic uncertainty averaged over the tasks,
    as the paper), its 5%-false-alarm threshold, and, as a diagnostic, each task's epistemic AUC."""
    tasks = list(report["generations"][0].get("ood_auc_by_task", {}))
    rows = [[short_name(g["name"]), fmt(g["ood_auc"]), fmt(g["ood_threshold"]),
             *(fmt(g["ood_auc_by_task"].get(t)) for t in tasks)] for g in report["generations"]]
    note = ("ROC AUC of the paper's OOD score, the epistemic uncertainty averaged over the tasks (0.5 is "
            "chance); the last columns rank by one task's epistemic uncertainty alone (a diagnostic).")
    return note + "\n\n" + markdown_table(
        ["Generation", "ROC AUC", "threshold (5% false alarms)", *(f"{t} alone" for t in tasks)], rows)


def verdicts(report: dict) -> list[str]:
    """Plain sentences on whether distillation helped on this data, good or bad."""
    gens = report["generations"]
    lines = []
    teacher = gens[0]
    if len(gens) > 1:
        best = max(gens[1:], key=lambda g: g["ensemble"].get("total", float("-inf")))
        delta = best["ensemble"]["total"] - teacher["ensemble"]["total"]
        verb = "beats" if delta > 0 else "does not beat"
        lines.append(f"Best student ensemble ({short_name(best['name'])}) {verb} the teacher ensemble "
                     f"on the total emotion metric ({fmt(best['ensemble']['total'])} vs "
                     f"{fmt(teacher['ensemble']['total'])}, {delta:+.3f}).")
        best_ood = max(gens, key=lambda g: g["ood_auc"])
        lines.append(f"Best OOD AUC: {fmt(best_ood['ood_auc'])} ({short_name(best_ood['name'])}); "
                     f"teacher {fmt(teacher['ood_auc'])}.")
    for label, key in ((f"{name} NLL", key) for name, key in NLL_KEYS.items()):
        ours = {short_name(g["name"]): g["nll"].get(key) for g in gens if g["nll"].get(key) is not None}
        if not ours:
            continue
        best_label, best_value = min(ours.items(), key=lambda kv: kv[1])
        for baseline_label, baseline in baseline_rows(report):
            value = baseline.get("nll", {}).get(key)
            if value is not None:
                verb = "lower (better) than" if best_value < value else "not lower than"
                lines.append(f"{label}: best single member ({best_label}, {fmt(best_value)}) is {verb} "
                             f"{baseline_label} ({fmt(value)}).")
    for g in gens:
        if g["ensemble"].get("total", 0.0) < g["single_mean"].get("total", 0.0):
            lines.append(f"{short_name(g['name'])}: the ensemble scores below its single members' mean.")
    lines += prior_verdicts(report)
    return lines


def prior_verdicts(report: dict) -> list[str]:
    """Plain words wherever a model is no better than predicting the training frequencies."""
    lines = []
    reference = "the oracle's" if "oracle" in report else "a perfect"
    for label, scores in [(short_name(g["name"]) + " single members", g["skill"]["single"])
                          for g in report["generations"] if "skill" in g]:
        worse = [f"{name} ({fmt(value, 2)})" for name, value in scores.items() if value <= 0]
        if worse:
            lines.append(f"{label} are no better than the class prior on {', '.join(worse)}: "
                         "they have learned nothing usable there (skill <= 0).")
    if "oracle" in report and report["generations"]:
        teacher = report["generations"][0]
        if "total_vs_oracle" in teacher:
            lines.append(f"The teacher ensemble's total emotion metric is {fmt(teacher['total_vs_oracle'], 2)} "
                         f"of {reference} predictor's ({fmt(teacher['ensemble'].get('total'))} vs "
                         f"{fmt(report['oracle']['emotion'].get('total'))}).")
    return lines


def figure_emotion(report: dict, path: Path) -> None:
    """Total emotion metric per generation: ensemble and single members with std (Figure 4)."""
    gens = report["generations"]
    names = [short_name(g["name"]) for g in gens]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(names, [g["ensemble"].get("total") for g in gens], "o-", label="ensemble")
    ax.errorbar(names, [g["single_mean"].get("total") for g in gens],
                yerr=[g["single_std"].get("total") for g in gens], fmt="s--", capsize=4, label="single (mean ± std)")
    if "prior" in report:
        ax.axhline(report["prior"]["emotion"]["total"], color="grey", ls=":", label="class prior")
    ax.set_ylabel("total emotion metric (validation)")
    oracle = f"; oracle {report['oracle']['emotion']['total']:.3f}" if "oracle" in report else ""
    ax.set_title(f"{report['preset']} ({report['modality']}), T={report['members']}{oracle}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_roc(report: dict, path: Path) -> None:
    """ROC curves of the averaged epistemic uncertainty, one per generation (Figure 5)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for g in report["generations"]:
        ax.plot(g["roc"]["fpr"], g["roc"]["tpr"], label=f"{short_name(g['name'])} (AUC {g['ood_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"OOD detection: validation vs {report['ood_set']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_reliability(report: dict, path: Path) -> None:
    """Reliability diagrams of the single members for AU and EXPR, one line per generation."""
    tasks = [t.name for t in TASKS if t.name in report["generations"][0].get("reliability", {})]
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5 * max(len(tasks), 1), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        for g in report["generations"]:
            bins = g["reliability"][task]
            ax.plot(bins["confidence"], bins["accuracy"], "o-", label=short_name(g["name"]))
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{task} reliability (single members)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_au_nll(report: dict, path: Path) -> None:
    """NLL of each AU for each generation and baseline (Table 3 as bars)."""
    rows = [(label, s["nll"]["AU"]) for label, s in uncertainty_rows(report) if s.get("nll", {}).get("AU")]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(rows)
    for i, (label, values) in enumerate(rows):
        ax.bar([x + i * width for x in range(len(AU.names))], values, width=width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(AU.names))], AU.names)
    ax.set_ylabel("NLL (lower is better)")
    ax.legend(ncol=min(len(rows), 6), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FIGURES = {
    "emotion_per_generation.png": figure_emotion,
    "roc.png": figure_roc,
    "reliability.png": figure_reliability,
    "au_nll.png": figure_au_nll,
}


def _landmark_error(record: dict) -> str:
    """The held-out landmark error of a pretraining record, beside the mean shape's."""
    error = f"held-out landmark error {record.get('held_out_error_after')} crop widths"
    if "held_out_error_mean_shape" in record:  # records written before it held the random start's
        error += f", the mean shape's {record['held_out_error_mean_shape']}"
    return error


def backbone_line(backbone: dict | None) -> str:
    """One sentence tracing the run to its backbone: random or pretrained, on what, frozen or not."""
    if not backbone:
        return ""
    tail = backbone.get("tail_blocks") or 0
    frozen = "fine-tuned"
    if backbone.get("frozen"):
        frozen = (f"frozen below its last {tail} blocks, which every member learns from its own random start"
                  if tail else "frozen (heads trained on its cached features)")
    if backbone.get("init") != "pretrained":
        return f"Backbone: randomly initialised, {frozen}."
    pretraining = backbone.get("pretraining")
    if isinstance(pretraining, dict) and isinstance(pretraining.get("started_from"), dict):
        landmarks = pretraining["started_from"]
        kept = pretraining.get("held_out_landmark_error_after")  # records before it lack it
        kept = "" if kept is None else f", held-out landmark error after it {kept} crop widths"
        source = (f"pretrained on landmarks from {landmarks.get('landmarks')} ({_landmark_error(landmarks)}), "
                  f"then {pretraining.get('task')} (validation total "
                  f"{fmt(pretraining.get('validation_scores', {}).get('total'))}{kept})")
    elif isinstance(pretraining, dict):
        source = (f"pretrained on {pretraining.get('task', 'landmarks')} from {pretraining.get('landmarks')}, "
                  f"{_landmark_error(pretraining)}")
    else:
        source = f"pretraining {pretraining}"
    return f"Backbone: `{backbone.get('weights')}` (sha256 {str(backbone.get('sha256'))[:12]}), {source}; {frozen}."


def losses_line(losses: dict | None) -> str:
    """How the members were trained, in words; '' for a report from before it was recorded."""
    if not losses:
        return ""
    au_expr = ("class-reweighted BCE/CE (Eq. 2-5)" if losses["reweight"]
               else "BCE/CE without class reweighting (`--no-reweight`)")
    va = "1 - CCC (Eq. 7, 11)"
    if losses.get("va_bins"):
        va += (f" plus {losses['va_bins']:g} x a cross entropy on the bins (KL divergence from the teachers' "
               "bins for students; `--va-bins`, not the paper's loss)")
    balance = "Algorithm 1 task balancing" if losses["balance"] else "equal task weights (`--no-balance`)"
    return f"Losses: AU/EXPR {au_expr}; VA {va}; {balance}."


def render_markdown(report: dict) -> str:
    parts = [
        f"# emodistill report: {report['run']}",
        f"Preset `{report['preset']}`, modality `{report['modality']}`, T = {report['members']} members, "
        f"tasks {', '.join(report['tasks'])}; out-of-domain set: {report['ood_set']}.",
        backbone_line(report.get("backbone")),
        losses_line(report.get("losses")),
        "## Emotion metrics on the validation split (paper Table 1, Figure 4)",
        emotion_table(report),
        "## In-domain uncertainty of single members (paper Tables 3-4; lower is better)",
        "TS and MC are applied to the teacher members; Prior predicts the training labels' "
        "frequencies for every frame (what a model that learned nothing scores); Oracle is the true "
        "label distribution (simulator data only, the best any model can score).",
        au_nll_table(report),
        other_uncertainty_table(report),
        "## Skill: share of the gap from the prior to the oracle that a model closes",
        "(prior - model) / (prior - oracle) of AU-mean NLL, EXPR NLL and valence/arousal RMSE; on "
        "real data (prior - model) / prior. 1 is the oracle, 0 the prior, below 0 worse than the prior.",
        skill_table(report),
        "## Out-of-domain detection (paper Figure 5)",
        ood_table(report),
    ]
    if any("aleatoric_gap" in g for g in report["generations"]):
        tasks = list(report["generations"][0]["aleatoric_gap"])
        parts += ["## Aleatoric uncertainty against the truth (simulator data)",
                  "Mean absolute gap between the ensemble's aleatoric entropy and the true label "
                  "entropy, both normalised to 0..1 (lower is better).",
                  markdown_table(["Generation", *tasks],
                                 [[short_name(g["name"]), *(fmt(g["aleatoric_gap"][t]) for t in tasks)]
                                  for g in report["generations"]])]
    parts += ["## What this run shows", "\n".join(f"- {line}" for line in verdicts(report))]
    parts += ["## Figures", *(f"![{name}]({name})" for name in FIGURES)]
    return "\n\n".join(p for p in parts if p) + "\n"


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write report.json, report.md and the figures into `out_dir`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "report.json", report)
    markdown = render_markdown(report)
    atomic_write(out_dir / "report.md", lambda tmp: tmp.write_text(markdown))
    written = [out_dir / "report.json", out_dir / "report.md"]
    for name, draw in FIGURES.items():
        with disk_full_guard(out_dir / name, "a figure"):  # removes a cut-off PNG
            draw(report, out_dir / name)
        if (out_dir / name).exists():
            written.append(out_dir / name)
    return written


def _nll_cells(nll: dict) -> str:
    """The summary NLL of each task, right-aligned under its header in `summary_table`."""
    return "".join(f"{fmt(nll.get(key)):>{_nll_width(name)}}" for name, key in NLL_KEYS.items())


def _nll_width(name: str) -> int:
    """A column as wide as its header "<task> NLL" and a space, and at least 8."""
    return max(8, len(f"{name} NLL") + 1)


def summary_table(report: dict) -> str:
    """A short plain-text table for the terminal."""
    nll_header = "".join(f"{name + ' NLL':>{_nll_width(name)}}" for name in NLL_KEYS)
    lines = [f"{'generation':<11}{'ensemble':>9}{'single':>15}{nll_header}{'OOD AUC':>8}"]
    for g in report["generations"]:
        single = f"{g['single_mean'].get('total', 0):.3f}±{g['single_std'].get('total', 0):.3f}"
        lines.append(f"{short_name(g['name']):<11}{g['ensemble'].get('total', 0):>9.3f}{single:>15}"
                     f"{_nll_cells(g['nll'])}{g['ood_auc']:>8.3f}")
    for label, scores in uncertainty_rows(report)[len(report["generations"]):]:
        total = fmt(scores["emotion"].get("total")) if "emotion" in scores else ""
        lines.append(f"{label:<11}{total:>9}{'':>15}{_nll_cells(scores['nll'])}{'':>8}")
    return "\n".join(lines)


def compare_runs(runs: list[Path]) -> str:
    """Several runs' reports side by side (e.g. the paper's ablations, Tables 1 and 5)."""
    rows = []
    for root in runs:
        run = Run(root)
        if not run.report_path.exists():
            raise InputError(f"{run.report_path} does not exist; run `emodistill evaluate {root}` first")
        report = read_json(run.report_path)
        config = run.config()
        teacher = report["generations"][0]
        best = max(report["generations"], key=lambda g: g["ensemble"].get("total", float("-inf")))
        rows.append([
            str(root), config.preset, str(config.members),
            "yes" if config.train.reweight else "no", "yes" if config.train.balance else "no",
            *(fmt(teacher["ensemble"].get(k)) for k in (*METRIC_NAMES, "total")),
            fmt(teacher["single_mean"].get("total")),
            f"{short_name(best['name'])} {fmt(best['ensemble'].get('total'))}",
            fmt(max(g["ood_auc"] for g in report["generations"])),
        ])
    header = ["run", "preset", "T", "reweight", "balance", *(f"Tea {k}" for k in METRIC_NAMES),
              "Tea total", "Tea single", "best generation", "best OOD AUC"]
    return markdown_table(header, rows)
