"""The `emodistill` command: one sub-command per job, each a thin layer over the library.

User mistakes (bad files, lines, flags) end as one sentence on stderr and exit status 2;
Ctrl-C ends with status 130 and keeps every finished file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from emodistill import __version__
from emodistill.core.errors import InputError

Handler = Callable[[argparse.Namespace], int]


def cmd_models(args: argparse.Namespace) -> int:
    from emodistill.models import presets_table

    print(presets_table())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from emodistill.data.synth import generate

    sizes = {k: v for k, v in (("videos", args.videos), ("frames", args.frames)) if v is not None}
    summary = generate(args.out, size=args.size, seed=args.seed, preview=args.preview,
                       progress=not args.quiet, **sizes)
    print(summary)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from emodistill.data.preview import contact_sheet

    out = args.output or args.data / "preview.png"
    print(f"contact sheet: {contact_sheet(args.data, out, n=args.n, seed=args.seed)}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from emodistill.data.prepare import prepare

    summary = prepare(args.inputs, args.out, size=args.size, progress=not args.quiet,
                      detect_every=args.detect_every, detector=args.detector)
    print(summary)
    return 0


def _run_config(args: argparse.Namespace):
    from emodistill.models import PRESETS
    from emodistill.run import RunConfig, TrainConfig

    modality = args.modality or ("va" if PRESETS.get(args.preset) and PRESETS[args.preset].audio else "v")
    train = TrainConfig.for_modality(
        modality, args.epochs, args.lr_step, lr=args.lr, batches_per_epoch=args.batches_per_epoch,
        clip_length=args.clip_length, clips_per_task=args.clips_per_task, reweight=not args.no_reweight,
        balance=not args.no_balance, freeze_backbone=args.freeze_backbone,
        tail_blocks=args.tail_blocks, va_bins=args.va_bins)
    return RunConfig(data=str(args.data), preset=args.preset, modality=modality, members=args.members,
                     generations=args.generations, seed=args.seed,
                     backbone_weights=str(args.backbone_weights) if args.backbone_weights else None, train=train)


def cmd_train(args: argparse.Namespace) -> int:
    from emodistill.core.runlock import run_lock
    from emodistill.core.runtime import resolve_device
    from emodistill.methods.backends.local import train_run

    config = _run_config(args)
    with run_lock(args.out):  # one writer per run folder; Ray members write under this lock
        if args.backend == "ray":
            from emodistill.methods.backends.ray import train_run_ray

            # The driver may have no GPU while the workers do: each worker resolves the device.
            train_run_ray(args.out, config, address=args.address, gpus_per_member=args.gpus_per_member,
                          cpus_per_member=args.cpus_per_member, max_retries=args.max_retries,
                          device=args.device, progress=not args.quiet)
        else:
            train_run(args.out, config, resolve_device(args.device), progress=not args.quiet)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from emodistill.core.runtime import resolve_device
    from emodistill.methods.pretraining import PretrainConfig, pretrain_backbone

    given = {k: getattr(args, k) for k in ("steps", "batch_size", "lr") if getattr(args, k) is not None}
    config = PretrainConfig(preset=args.preset, seed=args.seed, **given)
    pretrain_backbone(args.data, args.out, config, resolve_device(args.device), progress=not args.quiet)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from emodistill.core.runtime import resolve_device
    from emodistill.methods.pretraining import finetune_backbone, finetune_config

    config = finetune_config(args.epochs, args.batches_per_epoch, args.frames, reweight=not args.no_reweight)
    finetune_backbone(args.data, args.backbone_weights, args.out, config, args.preset, resolve_device(args.device),
                      seed=args.seed, progress=not args.quiet)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from emodistill.core.runtime import resolve_device
    from emodistill.evaluation.evaluate import evaluate_run
    from emodistill.report.tables import summary_table
    from emodistill.report.writer import write_report
    from emodistill.run import Run

    report = evaluate_run(args.run, resolve_device(args.device), ood_dir=args.ood_dir, ood_limit=args.ood_limit,
                          mc_passes=args.mc_passes, seed=args.seed, progress=not args.quiet)
    paths = write_report(report, Run(args.run).report_dir)
    print(summary_table(report))
    print(f"report: {paths[1]} ({len(paths)} files in {paths[0].parent})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from emodistill.report.compare import compare_runs

    print(compare_runs(args.runs))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from emodistill.core.runlock import run_lock
    from emodistill.core.runtime import resolve_device
    from emodistill.demo import run_demo

    with run_lock(args.out):  # the demo folder holds its data, backbone and run: one writer
        run_demo(args.out, quick=args.quick, device=resolve_device(args.device), seed=args.seed,
                 progress=not args.quiet)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from emodistill.predict.command import predict_command

    predict_command(args.input, args.model, members=args.members, out=args.out, plot=args.plot,
                    backend=args.backend, device=args.device, progress=not args.quiet,
                    detector=args.detector, plain=args.plain, fp32=args.fp32)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from emodistill.run import export_run

    paths = export_run(args.run, args.generation)
    for path in paths:
        print(path)
    print(f"exported {len(paths)} members to ONNX in {paths[0].parent}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from emodistill.bench import bench_command

    bench_command(quick=args.quick)
    return 0


def _add_common(parser: argparse.ArgumentParser, device: bool = False) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if device:
        parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")


def _add_detector(parser: argparse.ArgumentParser) -> None:
    from emodistill.data.faces import DEFAULT_DETECTOR, DETECTORS

    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help=f"face detector (default {DEFAULT_DETECTOR}; Haar when dlib is not installed)")


def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--videos", type=int, default=None, help="number of videos (default: the demo's)")
    p.add_argument("--frames", type=int, default=None, help="frames per video (default: the demo's)")
    p.add_argument("--size", type=int, default=112, help="crop size in pixels (Aff-wild2: 112)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", action="store_true", help="also write preview.png, a contact sheet")
    _add_common(p)


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path)
    p.add_argument("--output", "-o", type=Path, default=None, help="PNG path (default: DATA/preview.png)")
    p.add_argument("-n", type=int, default=24, help="number of frames")
    p.add_argument("--seed", type=int, default=0)


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="videos, images, folders of them, or glob patterns ('faces/*.jpg')")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--detect-every", type=int, default=1, help="run the face detector every k-th frame")
    _add_detector(p)
    _add_common(p)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="Aff-wild2-layout folder (or prepare output)")
    p.add_argument("--out", type=Path, required=True, help="run folder; rerun the same command to resume")
    p.add_argument("--preset", default="emenet-v", help="model preset (see `emodistill models`)")
    p.add_argument("--modality", choices=["v", "va"], default=None, help="v: faces; va: faces + audio")
    p.add_argument("--members", type=int, default=5, help="T, models per ensemble")
    p.add_argument("--generations", type=int, default=3, help="K, student generations")
    p.add_argument("--epochs", type=int, default=None, help="epochs per member (paper: 10 v, 15 va)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-step", type=int, default=None, help="divide lr by 10 every N epochs (paper: 3 v, 4 va)")
    p.add_argument("--batches-per-epoch", type=int, default=None, help="default: one pass over labelled frames")
    p.add_argument("--clip-length", type=int, default=16)
    p.add_argument("--clips-per-task", type=int, default=5)
    p.add_argument("--no-reweight", action="store_true", help="plain BCE/CE (paper Table 1 ablation)")
    p.add_argument("--no-balance", action="store_true", help="fixed equal task weights (paper Table 5 ablation)")
    p.add_argument("--va-bins", type=float, default=0.0,
                   help="weight of a cross entropy on the 20 valence/arousal bins (a KL divergence from the "
                        "teachers' bins for students) added to 1 - CCC; 0: the paper's loss (not its shape)")
    p.add_argument("--backbone-weights", type=Path, default=None,
               help="MobileFaceNet checkpoint (safetensors, or a pytorch_face_landmark state_dict)")
    p.add_argument("--freeze-backbone", action="store_true",
               help="keep the (pretrained) backbone fixed: features once per split, heads trained on them")
    p.add_argument("--tail-blocks", type=int, default=0,
               help="with --freeze-backbone: each member learns the backbone's last N blocks itself, from its "
                    "own random start, on cached maps of the layers below (more diverse members)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
    p.add_argument("--gpus-per-member", type=float, default=None, help="Ray: GPUs per member task")
    p.add_argument("--cpus-per-member", type=float, default=None, help="Ray: CPUs per member task")
    p.add_argument("--max-retries", type=int, default=2, help="Ray: retries of a member whose worker died")
    _add_common(p, device=True)


def _pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
               help="simulator output (landmarks in truth/) or a folder with landmarks.csv (68 iBUG points)")
    p.add_argument("--out", type=Path, required=True, help="backbone .safetensors (a .json record goes beside it)")
    p.add_argument("--preset", default="emenet-v", help="the preset whose backbone is trained")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1200)")
    p.add_argument("--batch-size", type=int, default=None, help="crops per step (default 64)")
    p.add_argument("--lr", type=float, default=None, help="Adam's initial learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p, device=True)


def _finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="Aff-wild2-layout folder with AU/EXPR/VA labels")
    p.add_argument("--backbone-weights", type=Path, required=True,
                   help="the starting backbone, e.g. from `emodistill pretrain` (safetensors)")
    p.add_argument("--out", type=Path, required=True, help="backbone .safetensors (a .json record goes beside it)")
    p.add_argument("--preset", default="emenet-v", help="the preset whose backbone is fine-tuned")
    p.add_argument("--epochs", type=int, default=4, help="epochs; the learning rate drops 10x for the last")
    p.add_argument("--batches-per-epoch", type=int, default=None, help="default: one pass over labelled frames")
    p.add_argument("--frames", type=int, default=40, help="distinct frames of each task in a batch")
    p.add_argument("--no-reweight", action="store_true", help="plain BCE/CE instead of the paper's reweighting")
    p.add_argument("--seed", type=int, default=0, help="draws the heads, batches and dropout masks")
    _add_common(p, device=True)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from emodistill.data.ood import OOD_LIMIT

    p.add_argument("run", type=Path)
    p.add_argument("--ood-dir", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--ood-limit", type=int, default=OOD_LIMIT, help="OOD images (and as many validation frames)")
    p.add_argument("--mc-passes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    _add_common(p, device=True)


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="video, image, folder of images, or a cropped_aligned folder")
    p.add_argument("--model", type=Path, required=True, help="RUN or RUN/GENERATION (default: the last)")
    p.add_argument("--members", default="all", help="all, or the first N members of the ensemble")
    p.add_argument("--out", type=Path, default=None, help="FILE.csv or FILE.parquet")
    p.add_argument("--plot", type=Path, default=None, help="folder for Figure-1 panels and timelines")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--plain", action="store_true",
                   help="no speed levers: members one by one in fp32, decoding in this thread")
    p.add_argument("--fp32", action="store_true",
                   help="every speed lever but bf16 (on by default where the CPU multiplies bf16 natively)")
    _add_detector(p)
    _add_common(p, device=True)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path)
    p.add_argument("--generation", default=None, help="teacher, studentK (default: the last finished)")


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-run"))
    p.add_argument("--quick", action="store_true", help="a tiny version in under 2 minutes")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p, device=True)

# name, handler, one-line help, the arguments it takes (None: none)
COMMANDS: tuple[tuple[str, Handler, str, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    ("models", cmd_models, "list model presets: parameters, multiply-adds per frame, input size",
     None),
    ("synth", cmd_synth, "simulate face videos with known label distributions, in the Aff-wild2 layout",
     _synth_arguments),
    ("show", cmd_show, "contact sheet PNG of crops and their labels from an Aff-wild2-layout folder",
     _show_arguments),
    ("prepare", cmd_prepare, "detect and crop the faces of videos and images into the Aff-wild2 layout",
     _prepare_arguments),
    ("train", cmd_train, "train a teacher ensemble and K generations of students",
     _train_arguments),
    ("pretrain", cmd_pretrain, "pretrain the MobileFaceNet backbone on face landmarks (paper Sec. 3.2)",
     _pretrain_arguments),
    ("finetune", cmd_finetune, "fine-tune one EMENet end to end from a backbone and keep its backbone, for "
     "--freeze-backbone (the demo's step 3)", _finetune_arguments),
    ("evaluate", cmd_evaluate, "score every generation and write RUN/report/",
     _evaluate_arguments),
    ("compare", cmd_compare, "put several runs' reports side by side",
     _compare_arguments),
    ("predict", cmd_predict, "per-frame emotions with uncertainty from a video, image or folder",
     _predict_arguments),
    ("export", cmd_export, "export each member of a run to ONNX",
     _export_arguments),
    ("bench", cmd_bench, "measure speed and memory on this machine; writes benchmarks/results.json",
     _bench_arguments),
    ("demo", cmd_demo, "simulate data, distil, evaluate and report (the main job)",
     _demo_arguments),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emodistill",
        description="Multitask facial emotion recognition with honest uncertainty "
                    "(deep ensembles + iterative self-distillation).",
    )
    parser.add_argument("--version", action="version", version=f"emodistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, help_text, arguments in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        if arguments is not None:
            arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from emodistill.core.runtime import tune_allocator

    tune_allocator()
    try:
        return args.handler(args)
    except InputError as error:
        print(f"emodistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        from emodistill.core.atomic import disk_full_sentence

        # A writer without its own guard (the crops of `prepare` or `synth`) ran out of space.
        sentence = disk_full_sentence(error)
        if sentence is None:
            raise
        print(f"emodistill {args.command}: error: {sentence}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nemodistill {args.command}: interrupted; finished files are kept, "
              "rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
