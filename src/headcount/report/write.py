"""Write a whole output folder atomically: build it in a temporary folder next to the target,
then move it into place. A failure leaves nothing half-written, and existing files are never
overwritten silently. Report folders carry a marker file; a saved model is recognised by its
``headcount.json``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from headcount.errors import HeadcountError
from headcount.heads.analysis import HeadAnalysis
from headcount.loaders.saved import META
from headcount.models.base import TextModel
from headcount.report.figures import all_figures
from headcount.report.html import render_index
from headcount.report.tables import write_csv, write_json

MARKER = ".headcount-report"


class ReportError(HeadcountError, OSError):
    """The report cannot be written where asked (not writable, or it would replace user files)."""


def prepare_target(
    out_dir: str | Path, *, force: bool = False, marker: str = MARKER, what: str = "report"
) -> Path:
    """Check that ``out_dir`` may receive a report (or, with ``marker=META``, a saved model);
    returns its absolute path.

    Allowed: a new folder, an empty folder, or (with ``force``) a folder that holds an earlier
    one, recognised by the file ``marker``. Anything else raises `ReportError` before any work.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise ReportError(f"{out} exists and is not a folder")
        if any(out.iterdir()):
            if not (out / marker).exists():
                raise ReportError(
                    f"{out} is not empty and holds no headcount {what}; choose another folder"
                )
            if not force:
                raise ReportError(f"{out} already holds a {what}; pass --force to replace it")
    parent = out.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise ReportError(f"cannot create {parent}: {exc.strerror or exc}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write into {parent}: permission denied")
    return out


def check_apart(out_dir: str | Path, source: str | Path, what: str = "the model's source") -> None:
    """`ReportError` when ``out_dir`` is, lies inside, or contains ``source`` (symlinks resolved)."""
    out = Path(out_dir).expanduser().resolve()
    src = Path(source).expanduser().resolve()
    where = (
        "is"
        if out == src
        else "lies inside"
        if src in out.parents
        else "contains"
        if out in src.parents
        else None
    )
    if where is not None:
        raise ReportError(
            f"{Path(out_dir)} {where} {what} {src}, which is never modified; choose another folder"
        )


def write_folder(out: Path, fill: Callable[[Path], None], command: str) -> None:
    """Run ``fill(folder)`` on a fresh temporary sibling of ``out`` (with the report marker),
    then move it into place. ``out`` comes from `prepare_target`."""
    tmp = _temp_sibling(out)
    try:
        (tmp / MARKER).write_text(f"written by headcount {command}\n", encoding="utf-8")
        fill(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_report(analysis: HeadAnalysis, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write ``scores.csv``, ``scores.json``, ``figures/*.png`` and ``index.html`` into
    ``out_dir``; returns the path of ``index.html``."""
    out = prepare_target(out_dir, force=force)

    def fill(tmp: Path) -> None:
        write_csv(analysis, tmp / "scores.csv")
        write_json(analysis, tmp / "scores.json")
        figs = tmp / "figures"
        figs.mkdir()
        figures = all_figures(analysis, figs)
        (tmp / "index.html").write_text(render_index(analysis, figures, figs), encoding="utf-8")

    write_folder(out, fill, "analyze")
    return out / "index.html"


def write_checkpoint(
    model: TextModel,
    out_dir: str | Path,
    *,
    force: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """``model.save`` into a temporary sibling of ``out_dir``, ``extra(folder)`` adds files (a
    report) to it, then the whole folder moves into place; returns the folder.

    ``out_dir`` may be new, empty, or (with ``force``) an earlier saved model.
    """
    out = prepare_target(out_dir, force=force, marker=META, what="saved model")
    tmp = _temp_sibling(out)
    try:
        folder = model.save(tmp / out.name)
        if extra is not None:
            extra(folder)
        _swap_into_place(folder, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _temp_sibling(out: Path) -> Path:
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise ReportError(f"cannot write into {out.parent}: {exc.strerror or exc}") from exc


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
