"""The report's figures as PNG files: the emotion metric per generation (paper Figure 4), OOD
ROC curves (Figure 5), reliability diagrams and per-AU NLL bars, drawn from report.json alone.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from emodistill.report.tables import report_tasks, short_name, uncertainty_rows


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
    """ROC curves, one per generation: of the feature-density score, and of the paper's averaged
    epistemic uncertainty (Figure 5; a report from before the density has that one only)."""
    gens = report["generations"]
    panels = [("roc", "ood_auc", "feature density")] if "roc_epistemic" in gens[0] else []
    panels.append(("roc_epistemic" if "roc_epistemic" in gens[0] else "roc",
                   "ood_auc_epistemic" if "roc_epistemic" in gens[0] else "ood_auc", "epistemic (paper Fig. 5)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for ax, (curve, auc, title) in zip(axes[0], panels, strict=True):
        for g in gens:
            ax.plot(g[curve]["fpr"], g[curve]["tpr"], label=f"{short_name(g['name'])} (AUC {g[auc]:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"{title}: validation vs {report['ood_set']}", fontsize="medium")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

def figure_reliability(report: dict, path: Path) -> None:
    """Reliability diagrams of the single members for AU and EXPR, one line per generation."""
    tasks = [t.name for t in report_tasks(report) if t.name in report["generations"][0].get("reliability", {})]
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
    if not rows or "AU" not in report_tasks(report):
        return
    names = report_tasks(report)["AU"].names
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(rows)
    for i, (label, values) in enumerate(rows):
        ax.bar([x + i * width for x in range(len(names))], values, width=width, label=label)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
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
