"""Report folders and saved checkpoints with reports inside, written atomically through
`headcount.outputs` (built in a temporary sibling, then renamed into place), with `ReportError`
for what cannot be written. Report folders carry a marker file that lists every file the report
wrote, so ``--force`` replaces an earlier report only while it holds nothing else (a user's own
files in it are never deleted); a saved model is recognised by its ``headcount.json``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headcount import outputs
from headcount.errors import HeadcountError
from headcount.heads.analysis import HeadAnalysis
from headcount.loaders.saved import HF_CONFIG, META, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS
from headcount.models.base import TextModel
from headcount.models.save import model_sources, write_contents
from headcount.report.figures import all_figures
from headcount.report.html import render_index
from headcount.report.tables import write_csv, write_json

MARKER = ".headcount-report"
REPORT = "report"  # the report folder inside a checkpoint a command saves
# A checkpoint a command writes lists its files here (a report lists them in its marker), so
# --force replaces it only while it holds nothing else; one without the list (model.save, or an
# earlier headcount) only while it holds nothing but what a save and its report write.
LISTING = ".headcount-files"
SAVED = (META, WEIGHTS, TOKENIZER, TOKENIZER_CONFIG, HF_CONFIG, REPORT)


class ReportError(HeadcountError, OSError):
    """The report cannot be written where asked (not writable, or it would replace user files)."""


def prepare_target(
    out_dir: str | Path, *, force: bool = False, marker: str = MARKER, what: str = "report"
) -> Path:
    """Check that ``out_dir`` may receive a report (or, with ``marker=META``, a saved model);
    returns its absolute path and creates nothing.

    Allowed: a new folder, an empty folder, or (with ``force``) a folder that holds an earlier
    one, recognised by the file ``marker``; an earlier report (``marker=MARKER``) must hold
    nothing but the files its marker lists, an earlier saved model (``marker=META``) nothing
    but what its `LISTING` names or, without one, what a save writes (`SAVED`). Anything else
    raises `ReportError` before any work.
    """
    return outputs.prepare_target(
        out_dir,
        marker=marker,
        what=what,
        force=force,
        force_flag="--force",
        error=ReportError,
        **_listing(marker),
    )


def _listing(marker: str) -> dict[str, Any]:
    if marker == MARKER:
        return {"listing": MARKER}
    if marker == META:
        return {"listing": LISTING, "known": SAVED}
    return {}


def check_apart(out_dir: str | Path, source: str | Path, what: str = "the model's source") -> None:
    """`ReportError` when ``out_dir`` is, lies inside, or contains ``source`` (symlinks resolved)."""
    outputs.check_apart(out_dir, source, what, error=ReportError)


def write_folder(out: Path, fill: Callable[[Path], None], command: str) -> None:
    """Run ``fill(folder)`` on a fresh temporary sibling of ``out`` (with the report marker),
    then move it into place; the marker lists every file written. ``out`` comes from
    `prepare_target`."""

    def marked(tmp: Path) -> None:
        (tmp / MARKER).write_text(f"written by headcount {command}\n", encoding="utf-8")
        fill(tmp)

    outputs.write_atomically(out, marked, error=ReportError, listing=MARKER)


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
    """The files of ``model.save`` in a temporary sibling of ``out_dir``, ``extra(folder)`` adds
    files (a report) to it, then the whole folder moves into place; returns the folder.

    ``out_dir`` may be new, empty, or (with ``force``) an earlier saved model holding nothing
    else (see `prepare_target`); never the model's source, a folder inside it or one around it.
    The folder lists its files in `LISTING`.
    """
    out = Path(out_dir).expanduser().absolute()
    for source in model_sources(model):
        check_apart(out, source)
    prepare_target(out, force=force, marker=META, what="saved model")

    def fill(folder: Path) -> None:
        write_contents(model, folder)
        if extra is not None:
            extra(folder)

    return outputs.write_atomically(out, fill, error=ReportError, **_listing(META))


def write_checkpoint_report(
    model: TextModel,
    out_dir: str | Path,
    *,
    name: str,
    data: dict[str, Any],
    figures: Callable[[Path], list[tuple[str, str]]],
    render: Callable[[list[tuple[str, str]], Path], str],
    force: bool = False,
) -> Path:
    """`write_checkpoint` with ``REPORT/`` inside: ``{name}.json`` holding ``data``, the figures
    ``figures(folder)`` draws into ``REPORT/figures/`` (returning ``(file name, caption)``) and
    the ``index.html`` that ``render(figures, folder)`` returns; returns the folder."""

    def add_report(folder: Path) -> None:
        rep = folder / REPORT
        figs = rep / "figures"
        figs.mkdir(parents=True)
        (rep / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        (rep / "index.html").write_text(render(figures(figs), figs), encoding="utf-8")

    return write_checkpoint(model, out_dir, force=force, extra=add_report)
