"""`headcount` entry point.

Each subcommand lives in its own module under ``headcount.cli`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``func(args) -> int``.
Errors the user can fix (bad input) are reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

from headcount.errors import HeadcountError

# Subcommand modules, in the order `headcount --help` lists them.
COMMANDS: tuple[str, ...] = (
    "demo",
    "kv",
    "run",
    "analyze",
    "view",
    "importance",
    "prune",
    "convert",
)
# Subcommands that run data-parallel under torchrun (WORLD_SIZE > 1): each rank scores (or trains
# on) its share, rank 0 writes. See headcount.distributed.
DISTRIBUTED: tuple[str, ...] = ("analyze", "importance", "prune", "convert")


class UsageError(Exception):
    """A problem with what the user asked for; printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headcount",
        description="Multi-head attention and its heads: MHA/GQA/MQA, real checkpoints, "
        "analysis, pruning, conversion.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"headcount.cli.{name}").register(sub)
    return parser


def _world(args: argparse.Namespace) -> AbstractContextManager:
    """The process group under torchrun (arguments checked equal on every rank), else one process."""
    from headcount.distributed import World, env_world_size, launched

    if env_world_size() <= 1:
        return nullcontext(World())
    if args.command not in DISTRIBUTED:
        raise UsageError(
            f"{args.command} runs in one process; under torchrun (WORLD_SIZE={env_world_size()}) "
            f"only {', '.join(DISTRIBUTED)} do"
        )
    return launched(config={k: v for k, v in vars(args).items() if k != "func"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _world(args) as args.world:
            return int(args.func(args))
    except (UsageError, HeadcountError, FileNotFoundError, PermissionError) as exc:
        # Errors caused by the input carry a message naming the problem; show just that.
        # HEADCOUNT_DEBUG=1 shows the traceback instead.
        if os.environ.get("HEADCOUNT_DEBUG"):
            raise
        print(f"headcount {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`headcount kv ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
