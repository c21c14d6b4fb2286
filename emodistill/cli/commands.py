"""The handler of each `emodistill` sub-command: a thin layer over the library that imports what it
needs when it runs, so `emodistill --help` stays fast."""

from __future__ import annotations

import argparse
import sys


def cmd_models(args: argparse.Namespace) -> int:
    from emodistill.models import presets_table

    print(presets_table())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from emodistill.data.synth import generate

    sizes = {k: v for k, v in (("videos", args.videos), ("frames", args.frames)) if v is not None}
    summary = generate(args.out, size=args.size, seed=args.seed, preview=args.preview,
                       progress=not args.quiet, release=args.release or "ABAW2", **sizes)
    print(summary)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from emodistill.data.preview import contact_sheet

    out = args.output or args.data / "preview.png"
    print(f"contact sheet: {contact_sheet(args.data, out, n=args.n, seed=args.seed, release=args.release)}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from emodistill.data.prepare import prepare

    summary = prepare(args.inputs, args.out, size=args.size, progress=not args.quiet,
                      detect_every=args.detect_every, detector=args.detector, landmarks=args.landmarks,
                      max_faces=args.max_faces)
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
                     backbone_weights=str(args.backbone_weights) if args.backbone_weights else None, train=train,
                     release=args.release)


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
    from emodistill.methods.finetuning import finetune_backbone, finetune_config

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
                          mc_passes=args.mc_passes, seed=args.seed, progress=not args.quiet, data=args.data)
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
    from emodistill.demo import run_demo, run_seeds

    with run_lock(args.out):  # the demo folder holds its data, backbone and run: one writer
        if args.seeds is None:
            run_demo(args.out, quick=args.quick, device=resolve_device(args.device), seed=args.seed,
                     progress=not args.quiet, release=args.release or "ABAW2")
        else:
            run_seeds(args.out, args.seeds, quick=args.quick, device=resolve_device(args.device),
                      first_seed=args.seed, progress=not args.quiet, release=args.release or "ABAW2")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from emodistill.predict.command import predict_command

    runtime = args.runtime
    if args.old_runtime is not None:
        print(f"note: predict's --backend is now --runtime (--backend names where training runs); "
              f"using --runtime {args.old_runtime}", file=sys.stderr)
        runtime = args.old_runtime
    predict_command(args.input, args.model, members=args.members, out=args.out, plot=args.plot,
                    runtime=runtime, device=args.device, progress=not args.quiet,
                    detector=args.detector, plain=args.plain, fp32=args.fp32, landmarks=args.landmarks,
                    max_faces=args.max_faces, detect_every=args.detect_every)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from emodistill.predict.submit import submit

    written, scores = submit(args.run, args.data, args.out, args.example or [], args.split, args.format,
                             args.model, args.members, args.device, progress=not args.quiet)
    if scores is not None:
        parts = ", ".join(f"{name} {value:.4f}" for name, value in scores["scores"].items())
        print(f"challenge scores of these files on the validation labels: {parts}")
    print(f"wrote {len(written)} submission file(s) in {args.out}")
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
