"""`headcount` entry point.

Each subcommand lives in its own module under ``headcount.cli`` and exposes
``register(subparsers) -> None``; the parser it adds sets ``func(args) -> int``.
Errors the user can fix (bad input) are reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path

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


# The largest integer an option takes: 2**31 - 1 bounds every count headcount loops over or gives
# to torch (a 400-digit --tokens would overflow there, not here).
MAX_INT = 2**31 - 1
# errno values of an output that cannot take more (a full disk or /dev/full, a quota, a file
# size limit, an I/O error, a read-only file system)
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def int_in(lo: int, hi: int = MAX_INT) -> Callable[[str], int]:
    """An argparse ``type``: a whole number within ``[lo, hi]``, else a one-line usage error."""

    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        if not digits.isdigit() or len(digits) > 30:  # int() would take 4,300 digits
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {lo} to {hi:,}, got {_short(text)}"
            )
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {lo} to {hi:,}, got {_short(text)}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    bounds = [] if math.isinf(lo) else [f"{'>' if lo_open else '>='} {lo:g}"]
    bounds += [] if math.isinf(hi) else [f"<= {hi:g}"]
    where = "".join(f" {b}" if i == 0 else f" and {b}" for i, b in enumerate(bounds))

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"expected a finite number{where}, got {_short(text)}")
        return value

    parse.__name__ = "number"
    return parse


finite = float_in(-math.inf)  # any finite number; the command checks its own range


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


MAX_TEXT_BYTES = 256 * 2**20  # a text file read whole; /dev/zero would never end


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of the file ``path`` (newlines as `Path.read_text` gives them); `UsageError`
    naming ``what`` (e.g. "--text") when it is missing, a folder, unreadable, not UTF-8 or
    larger than `MAX_TEXT_BYTES` (a device that never ends, such as /dev/zero)."""
    p = Path(path).expanduser()
    check_file(p, what)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise UsageError(
                f"{what} {p} is larger than {MAX_TEXT_BYTES:,} bytes (a device that never "
                "ends?); give a shorter text file"
            )
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{what} {p} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})"
        ) from exc
    except OSError as exc:
        raise UsageError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines


def check_file(path: str | Path, what: str) -> Path:
    """``path`` if it is an existing file (not a folder); `UsageError` naming ``what`` if not."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give a file")
    if not p.exists():
        raise UsageError(f"{what} {p} does not exist")
    return p


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
            code = int(args.func(args))
        sys.stdout.flush()  # here, not at exit, so a full disk is reported like any error
        return code
    except (UsageError, HeadcountError, FileNotFoundError, PermissionError) as exc:
        # Errors caused by the input carry a message naming the problem; show just that.
        # HEADCOUNT_DEBUG=1 shows the traceback instead.
        if os.environ.get("HEADCOUNT_DEBUG"):
            raise
        print(f"headcount {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`headcount kv ... | head`): stop quietly with the status of a
        # tool SIGPIPE ends, as `yes | head` does
        _drop_stdout()
        return 128 + signal.SIGPIPE
    except OSError as exc:
        if exc.errno not in _FULL or os.environ.get("HEADCOUNT_DEBUG"):
            raise
        _drop_stdout()
        where = f" {exc.filename}" if exc.filename else " (standard output)"
        print(
            f"headcount {args.command}: error: cannot write{where}: {exc.strerror}", file=sys.stderr
        )
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C; SIGTERM/SIGHUP while writing (outputs.Terminated)
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"headcount {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 128 + int(signum)


def _drop_stdout() -> None:
    """Send what is still buffered for stdout to /dev/null, so the exit does not fail again."""
    with suppress(OSError, ValueError, AttributeError):  # not a real file (captured in tests)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
