"""`headcount view`: the interactive head view of a model on a text, as one HTML file."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from pathlib import Path

from headcount.cli.main import int_in


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help="interactive head view (HTML) of a model's attention on a text",
        description="Run the model once on TEXT and write a self-contained page: choose a layer and "
        "heads, hover a token to see where it attends.",
    )
    p.add_argument("model", help="model name or path, e.g. smollm2")
    p.add_argument("text", help="the text, or @FILE to read it from a UTF-8 file")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("view.html"), help="HTML file to write"
    )
    p.add_argument(
        "--max-tokens", type=int_in(0), default=1024, help="positions to show (default 1024)"
    )
    p.add_argument(
        "--top-k", type=int_in(0), default=12, help="weights kept per query row (default 12)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=run)


def check_output(path: Path, force: bool) -> Path:
    """The absolute path of ``path`` if ``view`` may write it: new, or (with ``force``) an
    existing regular file. Refuses (`ReportError`) folders, symlinks, device nodes, FIFOs and
    sockets even with ``force``: replacing them would replace the link or the device itself."""
    from headcount.report import ReportError

    path = path.expanduser().absolute()
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ReportError(
            f"{path} is {kind}; headcount view writes only regular files, choose another path"
        )
    if not force:
        raise ReportError(f"{path} exists; pass --force to overwrite it")
    return path


_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def write_atomic(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename.
    ``path`` is checked again just before the rename (`check_output`)."""
    from headcount.report import ReportError

    path = check_output(path, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ReportError(f"cannot write into {path.parent}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        check_output(path, force)  # nothing replaced it with a link or a device meanwhile
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, ReportError):  # a full disk
            raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def run(args: argparse.Namespace) -> int:
    from headcount import load
    from headcount.cli.main import UsageError
    from headcount.report.view import model_view

    if args.max_tokens < 2 or args.top_k < 1:
        raise UsageError("--max-tokens must be >= 2 and --top-k >= 1")
    text = args.text
    if text.startswith("@"):
        from headcount.cli.main import read_text_file

        text = read_text_file(text[1:], "@FILE")
    out = check_output(args.output, args.force)  # before the slow part
    print(f"loading {args.model} ...", file=sys.stderr)
    model = load(args.model)
    page = model_view(
        model, text, max_tokens=args.max_tokens, top_k=args.top_k, title=f"{args.model} head view"
    )
    write_atomic(out, page, args.force)
    print(f"head view: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
