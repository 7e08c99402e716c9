"""The `inception-fast` command: one argparse parser, a subcommand per job, each with its own --help.

    inception-fast bench [--models ...]               how fast the six models run here (the default)
    inception-fast report RESULTS.json                Markdown table and PNG chart from benchmark JSON
    inception-fast train [--model ...] [--data DIR]   a training run
    inception-fast eval --checkpoint CKPT --data DIR  a training checkpoint's accuracy on an image folder
    inception-fast fid PATH1 PATH2                    FID of two image folders (or statistics files)

With no subcommand, or options first, the command is bench: `inception-fast --models inception_v3`
is `inception-fast bench --models inception_v3`. Each subcommand's options are defined once, by an
`add_<name>_arguments(parser)` function in the module that runs it; a new subcommand is one more
entry in COMMANDS.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str                # one line, in `inception-fast --help` and atop the subcommand's own
    module: str              # where the options and the run live (imported when the parser is built)
    add_arguments: str       # module.add_arguments(parser) adds the options
    run: str                 # module.run(args) -> exit status
    examples: tuple[str, ...] = ()


COMMANDS = (
    Command("bench", "time the models: eager vs inception_fast, inference and a training step",
            "inception_fast.bench", "add_bench_arguments", "bench_main",
            ("inception-fast bench",
             "inception-fast bench --models inception_v3 --batch 32 --rounds 10 --json out.json",
             "inception-fast bench --compile          # and torch.compile of the reference path")),
    Command("report", "Markdown table and PNG chart from benchmark JSON (ours or pytest-benchmark's)",
            "inception_fast.bench", "add_report_arguments", "report_main",
            ("inception-fast report out.json --out results/",)),
    Command("train", "a training run on an image folder (or the built-in demo data)",
            "inception_fast.train", "add_train_arguments", "train_command",
            ("inception-fast train --model inception_v3 --data DIR --img-size 75 --epochs 20 --pretrained w.pth",
             "inception-fast train --model inception_v3 --data imagenet/ --recipe paper --img-size 299 --amp bf16",
             "torchrun --nproc_per_node 2 -m inception_fast.train --model googlenet --data DIR",
             "inception-fast train                    # no --data: the built-in demo data set")),
    Command("eval", "a training checkpoint's loss and top-1 / top-5 accuracy on an image folder",
            "inception_fast.train", "add_eval_arguments", "eval_command",
            ("inception-fast eval --checkpoint runs/train/best.pt --data DIR/val",)),
    Command("fid", "FID (and KID, Inception Score) of two image folders or statistics files, as pytorch-fid",
            "inception_fast.metrics.cli", "add_fid_arguments", "fid_command",
            ("inception-fast fid real/ fake/",
             "inception-fast fid real/ --save-stats real.npz --weights pt_inception-2015-12-05-6726825d.pth",
             "inception-fast fid real.npz fake/ --dims 768 --kid --isc --device cuda --batch-size 256")),
)
DEFAULT = "bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inception-fast", description="Inception CNNs on fused C++/CUDA/Triton kernels.",
        epilog=f"`inception-fast COMMAND --help` lists a command's options. With no command, or options "
               f"first, the command is {DEFAULT}.")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        module = importlib.import_module(cmd.module)
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in cmd.examples) if cmd.examples else None
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help[0].upper() + cmd.help[1:] + ".",
                           epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        getattr(module, cmd.add_arguments)(p)
        p.set_defaults(run=getattr(module, cmd.run))
    return parser


def run(argv: list[str]) -> int:
    """Parse `argv` (its first word a subcommand) and run the subcommand; its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


def main(argv: list[str] | None = None) -> int:
    """The console script: `inception-fast [COMMAND] [OPTIONS]`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT, *argv]
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
