"""The main job on the embedded default data: simulate, distil for K generations, evaluate, report.

`make demo` runs the full version (400 simulated identities; a backbone pretrained on their
landmarks, fine-tuned once on their labels and frozen below its last 2 blocks, which every
member learns itself; 5 members x teacher + 3 student generations); `--quick` is a tiny
version for the tests; `--seeds N` runs N complete demos and summarises them with intervals.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from emodistill.core.atomic import atomic_write
from emodistill.core.checkpoints import write_json
from emodistill.core.errors import InputError
from emodistill.data.synth import generate
from emodistill.evaluation.evaluate import evaluate_run
from emodistill.methods.backends.local import train_run
from emodistill.methods.finetuning import finetune_backbone, finetune_config
from emodistill.methods.pretraining import PretrainConfig, backbone_record_path, pretrain_backbone
from emodistill.report.seeds import render_summary, summarise_seeds
from emodistill.report.tables import summary_table
from emodistill.report.writer import write_report
from emodistill.run import RunConfig, TrainConfig
from emodistill.tasks import PAPER_RELEASE

SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"  # of a demo over several seeds


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo: data, model and training budget."""

    videos: int  # simulated videos (about 3/4 train, 1/4 validation)
    frames: int  # frames per video
    crop_size: int  # crop size written to disk (Aff-wild2: 112)
    preset: str  # model preset
    members: int  # T
    generations: int  # K
    epochs: int
    lr_step: int
    batches_per_epoch: int
    clip_length: int  # the members' clips (L)
    clips_per_task: int  # ... and of each task in a batch
    ood_limit: int  # OOD images (and as many validation frames)
    mc_passes: int
    pretrain_steps: int  # landmark pretraining of the backbone (0: random backbone)
    finetune_epochs: int  # one shared EMENet fine-tuned end to end after pretraining (0: none)
    finetune_batches: int  # its batches per epoch
    finetune_frames: int  # distinct frames of each task in one of its batches (clips of 1 frame)
    finetune_reweight: bool  # the shared fine-tuning's losses class-reweighted (the paper's Eq. 2-5)
    finetune_landmarks: float  # weight of the landmark loss kept on during that fine-tuning (0: labels only)
    freeze_backbone: bool  # members train on cached outputs of that backbone
    tail_blocks: int  # ... and learn its last blocks themselves, each from its own random start
    reweight: bool  # the members' losses class-reweighted (the paper's default); see docs/CHOICES.md
    va_bins: float  # the members' weight of a loss on the VA bins beside 1 - CCC (0: the paper's); see docs/CHOICES.md


FULL = DemoPlan(videos=400, frames=32, crop_size=112, preset="demo", members=5, generations=3,
                epochs=4, lr_step=3, batches_per_epoch=64, clip_length=4, clips_per_task=20,
                ood_limit=1500, mc_passes=10, pretrain_steps=2400, finetune_epochs=4, finetune_batches=140,
                finetune_frames=40, finetune_reweight=True, finetune_landmarks=0.0,
                freeze_backbone=True, tail_blocks=2, reweight=False, va_bins=1.0)
QUICK = DemoPlan(videos=10, frames=40, crop_size=48, preset="tiny", members=2, generations=1,
                 epochs=2, lr_step=1, batches_per_epoch=3, clip_length=16, clips_per_task=5,
                 ood_limit=64, mc_passes=3,
                 pretrain_steps=20, finetune_epochs=1, finetune_batches=2, finetune_frames=8, finetune_reweight=True,
                 finetune_landmarks=10.0, freeze_backbone=True, tail_blocks=2, reweight=False, va_bins=1.0)


def demo_backbone(
    out: Path, data: Path, plan: DemoPlan, device: torch.device, seed: int, progress: bool,
    log: Callable[[str], None],
) -> Path | None:
    """The demo's backbone, made once and kept in the demo folder: pretrained on the training
    identities' landmarks (face alignment), then fine-tuned end to end once on their labels
    (on distinct frames: `finetune_backbone`; with `finetune_landmarks`, the landmark loss kept on)."""
    if not plan.pretrain_steps:
        return None
    landmarks = out / "backbone-landmarks.safetensors"
    if not backbone_record_path(landmarks).exists():
        # Held-out checks a quarter of the way apart (each re-estimates BatchNorm on 2,048 crops,
        # about 1.5 s on 2 cores); they only log, so the backbone is the same with any number.
        config = PretrainConfig(preset=plan.preset, steps=plan.pretrain_steps, seed=seed,
                                report_every=max(plan.pretrain_steps // 4, 1))
        pretrain_backbone(data, landmarks, config, device, progress=progress, log=log)
    if not plan.finetune_epochs:
        return landmarks
    shared = out / "backbone.safetensors"
    if not backbone_record_path(shared).exists():
        config = finetune_config(plan.finetune_epochs, plan.finetune_batches, plan.finetune_frames,
                                 plan.finetune_reweight)
        finetune_backbone(data, landmarks, shared, config, plan.preset, device, seed=seed, progress=progress,
                          log=log, landmark_weight=plan.finetune_landmarks)
    return shared


def run_seeds(
    out: Path,
    seeds: int,
    quick: bool = False,
    device: torch.device | None = None,
    first_seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    release: str = PAPER_RELEASE,
) -> dict[str, dict]:
    """`seeds` complete demos, seed k (from `first_seed`) in OUT/seed-k (each resumes like one demo),
    then OUT/summary.json and summary.md: every headline figure and every claimed difference over
    the seeds (`report.seeds`). Returns the summary."""
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    reports = []
    for seed in range(first_seed, first_seed + seeds):
        log(f"\n=== seed {seed} ({seed - first_seed + 1} of {seeds}) -> {out / f'seed-{seed}'}")
        reports.append(run_demo(out / f"seed-{seed}", quick, device, seed, progress, log, release))
    summary = summarise_seeds(reports)
    write_json(out / SUMMARY_JSON, summary)
    markdown = render_summary(summary, seeds)
    atomic_write(out / SUMMARY_MD, lambda tmp: tmp.write_text(markdown))
    log(f"\nsummary over {seeds} seeds: {out / SUMMARY_MD} ({out / SUMMARY_JSON})")
    return summary


def run_demo(
    out: Path,
    quick: bool = False,
    device: torch.device | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    release: str = PAPER_RELEASE,
) -> dict:
    """Generate data (once; in the layout of `release`, the paper's 2021 one by default), train or
    resume the run, evaluate it and write the report."""
    plan = QUICK if quick else FULL
    device = device or torch.device("cpu")
    started = time.perf_counter()
    data = out / "data"
    if not (data / "synth.json").exists():
        shutil.rmtree(data, ignore_errors=True)  # synth.json is written last: a cut-short generation
        summary = generate(data, videos=plan.videos, frames=plan.frames, size=plan.crop_size, seed=seed,
                           preview=True, progress=progress, release=release)
        log(f"simulated data: {summary}")
    backbone = demo_backbone(out, data, plan, device, seed, progress, log)
    config = RunConfig(
        data=str(data), preset=plan.preset, modality="v", members=plan.members,
        generations=plan.generations, seed=seed,
        backbone_weights=None if backbone is None else str(backbone),
        train=TrainConfig(epochs=plan.epochs, lr_step=plan.lr_step, batches_per_epoch=plan.batches_per_epoch,
                          clip_length=plan.clip_length, clips_per_task=plan.clips_per_task,
                          freeze_backbone=plan.freeze_backbone, tail_blocks=plan.tail_blocks,
                          reweight=plan.reweight, va_bins=plan.va_bins),
    )
    run = train_run(out / "run", config, device, progress=progress, log=log)
    report = evaluate_run(run.root, device, ood_limit=plan.ood_limit, mc_passes=plan.mc_passes,
                          seed=seed, progress=progress, log=log)
    report_dir = run.report_dir
    write_report(report, report_dir)
    log("")
    log(summary_table(report))
    log(f"\nreport: {report_dir / 'report.md'} (figures beside it); data preview: {data / 'preview.png'}")
    log(f"demo finished in {time.perf_counter() - started:.0f} s")
    return report
