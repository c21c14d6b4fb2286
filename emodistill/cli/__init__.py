"""The `emodistill` command: one sub-command per job (`COMMANDS`), each a thin layer over the library.

User mistakes (bad files, lines, flags) end as one sentence on stderr and exit status 2;
Ctrl-C ends with status 130 and keeps every finished file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from emodistill import __version__
from emodistill.cli import arguments, commands
from emodistill.core.errors import InputError

Handler = Callable[[argparse.Namespace], int]

# name, handler, one-line help, the arguments it takes (None: none)
COMMANDS: tuple[tuple[str, Handler, str, Callable[[argparse.ArgumentParser], None] | None], ...] = (
    ("models", commands.cmd_models, "list model presets: parameters, multiply-adds per frame, input size",
     None),
    ("synth", commands.cmd_synth, "simulate face videos with known label distributions, in the Aff-wild2 layout",
     arguments.synth_arguments),
    ("show", commands.cmd_show, "contact sheet PNG of crops and their labels from an Aff-wild2-layout folder",
     arguments.show_arguments),
    ("prepare", commands.cmd_prepare, "detect and crop the faces of videos and images into the Aff-wild2 layout",
     arguments.prepare_arguments),
    ("train", commands.cmd_train, "train a teacher ensemble and K generations of students",
     arguments.train_arguments),
    ("pretrain", commands.cmd_pretrain, "pretrain the MobileFaceNet backbone on face landmarks (paper Sec. 3.2)",
     arguments.pretrain_arguments),
    ("finetune", commands.cmd_finetune, "fine-tune one EMENet end to end from a backbone and keep its backbone, for "
     "--freeze-backbone (the demo's step 3)", arguments.finetune_arguments),
    ("evaluate", commands.cmd_evaluate, "score every generation and write RUN/report/",
     arguments.evaluate_arguments),
    ("compare", commands.cmd_compare, "put several runs' reports side by side",
     arguments.compare_arguments),
    ("predict", commands.cmd_predict, "per-frame emotions with uncertainty from a video, image or folder",
     arguments.predict_arguments),
    ("submit", commands.cmd_submit, "write the challenge submission files of a run for an Aff-wild2 release",
     arguments.submit_arguments),
    ("export", commands.cmd_export, "export each member of a run to ONNX",
     arguments.export_arguments),
    ("bench", commands.cmd_bench, "measure speed and memory on this machine; writes benchmarks/results.json",
     arguments.bench_arguments),
    ("demo", commands.cmd_demo, "simulate data, distil, evaluate and report (the main job)",
     arguments.demo_arguments),
)


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes read like every other user mistake: one sentence, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="emodistill",
        description="Multitask facial emotion recognition with honest uncertainty "
                    "(deep ensembles + iterative self-distillation).",
    )
    parser.add_argument("--version", action="version", version=f"emodistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, handler, help_text, add_arguments in COMMANDS:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        if add_arguments is not None:
            add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a mistake in the arguments (said already) or --help: a status, not an exit
        return int(stop.code or 0)
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
