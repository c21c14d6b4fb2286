"""The arguments of each `emodistill` sub-command, one function each."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (`--epochs 0` is refused, not read
    as "the default")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def not_negative(text: str) -> float:
    """An argparse type: a number of 0 or more."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def add_common(parser: argparse.ArgumentParser, device: bool = False) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if device:
        parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")


def add_front_end(parser: argparse.ArgumentParser) -> None:
    from emodistill.data.frontend import DEFAULT_DETECTOR, DETECT_EVERY, DETECTORS

    about = "; ".join(f"{name}: {kind.about}" for name, kind in DETECTORS.items())
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help=f"face detector (default {DEFAULT_DETECTOR}). {about}")
    parser.add_argument("--detect-every", type=whole(1), default=DETECT_EVERY,
                        help=f"detect faces every k-th frame, following them in between (default {DETECT_EVERY})")
    parser.add_argument("--max-faces", type=whole(1), default=None,
                        help="follow at most N faces of a frame, the largest (default: all)")
    parser.add_argument("--landmarks", type=Path, default=None,
                        help="CSV of the faces' five landmarks per frame (frame, face_id, eye_left_x, ...), "
                             "used instead of the detector")


def add_release(parser: argparse.ArgumentParser, what: str) -> None:
    from emodistill.tasks import RELEASES

    parser.add_argument("--release", type=str.upper, choices=list(RELEASES), default=None, metavar="ABAWn",
                        help=f"{what} ({', '.join(RELEASES)}; case does not matter)")


def synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    add_release(p, "the Aff-wild2 release whose layout and classes to write (default ABAW2, the paper's 2021 "
                    "layout with 7 expressions; ABAW6: the 2024 layout with 8)")
    p.add_argument("--videos", type=whole(1), default=None, help="number of videos (default: the demo's)")
    p.add_argument("--frames", type=whole(2), default=None, help="frames per video (default: the demo's)")
    p.add_argument("--size", type=whole(16), default=112, help="crop size in pixels (Aff-wild2: 112)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", action="store_true", help="also write preview.png, a contact sheet")
    add_common(p)


def show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path)
    add_release(p, "read the folder as this release (default: as its layout tells)")
    p.add_argument("--output", "-o", type=Path, default=None, help="PNG path (default: DATA/preview.png)")
    p.add_argument("-n", type=whole(1), default=24, help="number of frames")
    p.add_argument("--seed", type=int, default=0)


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="videos, images, folders of them, or glob patterns ('faces/*.jpg')")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=whole(16), default=112)
    add_front_end(p)
    add_common(p)


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
                   help="an Aff-wild2 copy of any release (2021-2025), simulator output, or prepare output "
                        "with a labels.csv")
    p.add_argument("--out", type=Path, required=True, help="run folder; rerun the same command to resume")
    add_release(p, "read the data as this release (default: as its layout tells, e.g. 6th_ABAW_Annotations -> "
                    "ABAW6; a labels.csv: ABAW2's 7 expressions)")
    p.add_argument("--preset", default="emenet-v", help="model preset (see `emodistill models`)")
    p.add_argument("--modality", choices=["v", "va"], default=None, help="v: faces; va: faces + audio")
    p.add_argument("--members", type=whole(1), default=5, help="T, models per ensemble")
    p.add_argument("--generations", type=whole(0), default=3, help="K, student generations")
    p.add_argument("--epochs", type=whole(1), default=None, help="epochs per member (paper: 10 v, 15 va)")
    p.add_argument("--lr", type=positive, default=1e-3)
    p.add_argument("--lr-step", type=whole(1), default=None, help="divide lr by 10 every N epochs (paper: 3 v, 4 va)")
    p.add_argument("--batches-per-epoch", type=whole(1), default=None, help="default: one pass over labelled frames")
    p.add_argument("--clip-length", type=whole(1), default=16)
    p.add_argument("--clips-per-task", type=whole(1), default=5)
    p.add_argument("--no-reweight", action="store_true", help="plain BCE/CE (paper Table 1 ablation)")
    p.add_argument("--no-balance", action="store_true", help="fixed equal task weights (paper Table 5 ablation)")
    p.add_argument("--va-bins", type=not_negative, default=0.0,
                   help="weight of a cross entropy on the 20 valence/arousal bins (a KL divergence from the "
                        "teachers' bins for students) added to 1 - CCC; 0: the paper's loss (not its shape)")
    p.add_argument("--backbone-weights", type=Path, default=None,
               help="MobileFaceNet checkpoint (safetensors, or a pytorch_face_landmark state_dict)")
    p.add_argument("--freeze-backbone", action="store_true",
               help="keep the (pretrained) backbone fixed: features once per split, heads trained on them")
    p.add_argument("--tail-blocks", type=whole(0), default=0,
               help="with --freeze-backbone: each member learns the backbone's last N blocks itself, from its "
                    "own random start, on cached maps of the layers below (more diverse members)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray)")
    p.add_argument("--gpus-per-member", type=not_negative, default=None, help="Ray: GPUs per member task")
    p.add_argument("--cpus-per-member", type=positive, default=None, help="Ray: CPUs per member task")
    p.add_argument("--max-retries", type=whole(0), default=2, help="Ray: retries of a member whose worker died")
    add_common(p, device=True)


def pretrain_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True,
               help="simulator output (landmarks in truth/) or a folder with landmarks.csv (68 iBUG points)")
    p.add_argument("--out", type=Path, required=True, help="backbone .safetensors (a .json record goes beside it)")
    p.add_argument("--preset", default="emenet-v", help="the preset whose backbone is trained")
    p.add_argument("--steps", type=whole(1), default=None, help="optimiser steps (default 1200)")
    p.add_argument("--batch-size", type=whole(1), default=None, help="crops per step (default 64)")
    p.add_argument("--lr", type=positive, default=None, help="Adam's initial learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    add_common(p, device=True)


def finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="Aff-wild2-layout folder with AU/EXPR/VA labels")
    p.add_argument("--backbone-weights", type=Path, required=True,
                   help="the starting backbone, e.g. from `emodistill pretrain` (safetensors)")
    p.add_argument("--out", type=Path, required=True, help="backbone .safetensors (a .json record goes beside it)")
    p.add_argument("--preset", default="emenet-v", help="the preset whose backbone is fine-tuned")
    p.add_argument("--epochs", type=whole(1), default=4, help="epochs; the learning rate drops 10x for the last")
    p.add_argument("--batches-per-epoch", type=whole(1), default=None, help="default: one pass over labelled frames")
    p.add_argument("--frames", type=whole(1), default=40, help="distinct frames of each task in a batch")
    p.add_argument("--no-reweight", action="store_true", help="plain BCE/CE instead of the paper's reweighting")
    p.add_argument("--seed", type=int, default=0, help="draws the heads, batches and dropout masks")
    add_common(p, device=True)


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from emodistill.data.ood import OOD_LIMIT

    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, default=None,
                   help="score on this copy of the data (moved, or another of the same release); default: the run's")
    p.add_argument("--ood-dir", type=Path, default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--ood-limit", type=whole(1), default=OOD_LIMIT, help="OOD images (and as many validation frames)")
    p.add_argument("--mc-passes", type=whole(1), default=10)
    p.add_argument("--seed", type=int, default=0)
    add_common(p, device=True)


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+")


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="video, image, folder of images, or a cropped_aligned folder")
    p.add_argument("--model", type=Path, required=True, help="RUN or RUN/GENERATION (default: the last)")
    p.add_argument("--members", default="all", help="all, or the first N members of the ensemble")
    p.add_argument("--out", type=Path, default=None, help="FILE.csv or FILE.parquet")
    p.add_argument("--plot", type=Path, default=None, help="folder for Figure-1 panels and timelines")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="run the members in PyTorch or ONNX Runtime (exported once, beside the members)")
    # The flag's old name: `--backend` now means only where training runs (local or ray).
    p.add_argument("--backend", choices=["torch", "onnx"], default=None, dest="old_runtime", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true",
                   help="no speed levers: members one by one in fp32, decoding in this thread")
    p.add_argument("--fp32", action="store_true",
                   help="every speed lever but bf16 (on by default where the CPU multiplies bf16 natively)")
    add_front_end(p)
    add_common(p, device=True)


def submit_arguments(p: argparse.ArgumentParser) -> None:
    from emodistill.predict.submit import FORMATS

    p.add_argument("run", type=Path, help="the trained run (its final ensemble unless --model names a generation)")
    p.add_argument("--data", type=Path, default=None,
                   help="the Aff-wild2 copy whose crops to predict (default: the run's data)")
    p.add_argument("--out", type=Path, required=True, help="folder for the submission files")
    p.add_argument("--example", type=Path, action="append",
                   help="an organisers' test-set file to fill, every row in its order (repeatable): an "
                        "image_location example file, a multi-task list, or a 2021-2022 list of video names")
    p.add_argument("--split", choices=["val"], default=None,
                   help="val: every validation frame of each track, in the submission format, scored on the labels")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="for --split val: single (one file per track, 2023+), per-video (2021-2022) or mtl "
                        "(the multi-task file); default: the run's release's")
    p.add_argument("--model", default=None, help="teacher or studentK (default: the last finished generation)")
    p.add_argument("--members", type=whole(1), default=None, help="the first N members (default: all)")
    add_common(p, device=True)


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path)
    p.add_argument("--generation", default=None, help="teacher, studentK (default: the last finished)")


def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-run"))
    p.add_argument("--quick", action="store_true", help="a tiny version in under 2 minutes")
    p.add_argument("--seed", type=int, default=0, help="the seed of the data, backbone and members (the first one)")
    p.add_argument("--seeds", type=whole(1), default=None,
                   help="N complete demos, seeds SEED..SEED+N-1, in OUT/seed-k, then OUT/summary.json and "
                        "summary.md with 95%% intervals")
    add_release(p, "simulate this release's layout and classes (default ABAW2, the paper's, so the tables stay "
                   "comparable with its)")
    add_common(p, device=True)
