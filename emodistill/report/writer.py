"""Turning a report dict into files a person reads: report.json, report.md (its tables from
tables.py, its sentences here) and the figures of figures.py.

Everything here is drawn from report.json alone, so a report can be re-rendered or compared
without the models.
"""

from __future__ import annotations

from pathlib import Path

from emodistill.core.atomic import atomic_write, disk_full_guard
from emodistill.core.checkpoints import write_json
from emodistill.report.figures import FIGURES
from emodistill.report.tables import (
    au_nll_table,
    baseline_rows,
    calibration_table,
    challenge_table,
    emotion_table,
    fmt,
    markdown_table,
    nll_keys,
    ood_table,
    other_uncertainty_table,
    short_name,
    skill_table,
)


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
        if "ood_auc_epistemic" in teacher:
            best_epistemic = max(gens, key=lambda g: g["ood_auc_epistemic"])
            lines.append(f"Best OOD AUC of the paper's epistemic score: {fmt(best_epistemic['ood_auc_epistemic'])} "
                         f"({short_name(best_epistemic['name'])}); teacher {fmt(teacher['ood_auc_epistemic'])}.")
    for label, key in ((f"{name} NLL", key) for name, key in nll_keys(report).items()):
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
    for g in report["generations"]:
        worse = [f"{name} ({fmt(g['calibrated']['nll'].get(key))} > {fmt(report['prior']['nll'].get(key))})"
                 for name, key in nll_keys(report).items()
                 if "calibrated" in g and "prior" in report and key in g["calibrated"]["nll"]
                 and g["calibrated"]["nll"][key] > report["prior"]["nll"].get(key, float("inf"))]
        if worse:
            lines.append(f"{short_name(g['name'])}: even calibrated, the single members' NLL is above the class "
                         f"prior's on {', '.join(worse)}.")
    if "oracle" in report and report["generations"]:
        teacher = report["generations"][0]
        if "total_vs_oracle" in teacher:
            lines.append(f"The teacher ensemble's total emotion metric is {fmt(teacher['total_vs_oracle'], 2)} "
                         f"of {reference} predictor's ({fmt(teacher['ensemble'].get('total'))} vs "
                         f"{fmt(report['oracle']['emotion'].get('total'))}).")
    return lines

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
        "## Calibrated probabilities (never worse than the prior?)",
        calibration_table(report),
        "## Out-of-domain detection (paper Figure 5)",
        ood_table(report),
        "## The challenge's own scores (ensembles, validation split)",
        challenge_table(report),
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
