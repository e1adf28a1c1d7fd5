"""Issue 13, item 1: `headcount view -o PATH --force` writes only regular files. A device node,
a symlink, a FIFO, a socket or a folder is refused (exit 2, one line naming what it is) and left
as it was; a regular file is replaced."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from headcount.cli.main import main
from tests.cli.conftest import decoder_dir  # noqa: F401  (fixture)

MISSING_MODEL = "no-such-model-headcount-test"  # the output is refused before the model loads


def view(capsys: pytest.CaptureFixture[str], model: str, out: Path) -> tuple[int, str, str]:
    code = main(["view", model, "to be or not to be", "-o", str(out), "--force"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dev_null_is_refused_and_kept(capsys: pytest.CaptureFixture[str]) -> None:
    before = os.lstat("/dev/null")
    code, _, err = view(capsys, MISSING_MODEL, Path("/dev/null"))
    assert code == 2
    assert "/dev/null is a character device" in err and "Traceback" not in err
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "socket", "folder"])
def test_special_files_are_refused_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / "page.html"
    real = tmp_path / "real.html"
    real.write_text("mine")
    sock = None
    if kind == "symlink":
        target.symlink_to(real)
    elif kind == "dangling symlink":
        target.symlink_to(tmp_path / "nowhere.html")
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
    else:
        target.mkdir()
    before = os.lstat(target)
    try:
        code, _, err = view(capsys, MISSING_MODEL, target)
    finally:
        if sock is not None:
            sock.close()
    expected = {
        "symlink": "a symbolic link",
        "dangling symlink": "a symbolic link",
        "fifo": "a FIFO",
        "socket": "a socket",
        "folder": "a folder",
    }[kind]
    assert code == 2 and f"{target} is {expected}" in err and "regular files" in err
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert real.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html", "real.html"]  # no temp


def test_a_regular_file_is_replaced_only_with_force(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
) -> None:
    target = tmp_path / "page.html"
    target.write_text("old")
    code = main(["view", str(decoder_dir), "to be or not", "-o", str(target)])
    assert code == 2 and "exists; pass --force" in capsys.readouterr().err
    assert target.read_text() == "old"
    code, out, _ = view(capsys, str(decoder_dir), target)
    assert code == 0 and f"head view: {target}" in out
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") or page.lstrip().lower().startswith("<!doctype")
    assert stat.S_ISREG(os.lstat(target).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_analyze_output_must_be_a_real_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The report folder too: a symlink (even to an earlier report) or a device is refused
    before the model loads, and left as it was."""
    from headcount.report.write import MARKER

    report = tmp_path / "report"
    report.mkdir()
    (report / MARKER).write_text("")
    link = tmp_path / "link"
    link.symlink_to(report)
    for out, expected in [
        (link, "is a symbolic link"),
        (Path("/dev/null"), "exists and is not a folder"),
    ]:
        code = main(["analyze", MISSING_MODEL, "--no-syntax", "-o", str(out), "--force"])
        err = capsys.readouterr().err
        assert code == 2 and f"{out} {expected}" in err
    assert link.is_symlink() and os.readlink(link) == str(report)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
    assert [p.name for p in report.iterdir()] == [MARKER]
