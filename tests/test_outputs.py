"""`headcount.outputs`: refusals, usual permissions, and a swap that Ctrl-C cannot break."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from headcount import outputs
from headcount.errors import HeadcountError, OutputError


class OtherError(HeadcountError, OSError):
    pass


def fill_with(text: str) -> Callable[[Path], None]:
    def fill(folder: Path) -> None:
        (folder / "marker").write_text("")
        (folder / "data.txt").write_text(text)

    return fill


def test_refusals_use_the_callers_error_class(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(src)
    for target, where in [(tmp_path / "link", "is"), (src / "sub", "lies inside")]:
        with pytest.raises(OtherError, match=f"{where} the model's source"):
            outputs.check_apart(target, src, error=OtherError)
    with pytest.raises(OutputError, match="contains the model's source"):
        outputs.check_apart(tmp_path, tmp_path / "link" / "sub")
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    for target, match in [
        ("file", "exists and is not a folder"),
        ("mine", "not empty and holds no headcount thing"),
        ("src", "not empty and holds no headcount thing"),
    ]:
        with pytest.raises(OtherError, match=match):
            outputs.prepare_target(
                tmp_path / target, marker="marker", what="thing", force=True, error=OtherError
            )
    (tmp_path / "mine" / "marker").write_text("")
    with pytest.raises(OutputError, match="already holds a thing; pass force=True"):
        outputs.prepare_target(tmp_path / "mine", marker="marker", what="thing")
    out = outputs.prepare_target(tmp_path / "new" / "deep", marker="marker", what="thing")
    assert out == tmp_path / "new" / "deep" and not out.parent.exists()  # creates nothing
    with pytest.raises(OutputError, match="cannot"):
        outputs.prepare_target("/proc/headcount-test/x", marker="marker", what="thing")


def test_usual_permissions_under_the_umask(tmp_path: Path) -> None:
    def fill(folder: Path) -> None:
        (folder / "sub").mkdir(mode=0o700)
        fd, _ = tempfile.mkstemp(dir=folder / "sub")  # private: 0600
        os.close(fd)
        (folder / "run.sh").write_text("")
        (folder / "run.sh").chmod(0o700)

    old = os.umask(0o027)
    try:
        out = outputs.write_atomically(tmp_path / "out", fill)
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert out.stat().st_mode & 0o777 == 0o750
    assert modes.pop("sub") == 0o750 and modes.pop("run.sh") == 0o750
    assert list(modes.values()) == [0o640]


def test_failure_leaves_no_folder_it_created(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomically(tmp_path / "a" / "b" / "out", broken)
    with pytest.raises(OtherError, match="cannot write"):
        outputs.write_atomically(
            tmp_path / "out", lambda f: os.mkdir(f / "x" / "y"), error=OtherError
        )
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_between_the_renames_keeps_the_earlier_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = outputs.write_atomically(tmp_path / "out", fill_with("old"))
    rename, calls = os.rename, []

    def interrupted(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the new folder's rename, after the old one moved aside
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(outputs.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_atomically(target, fill_with("new"))
    assert (target / "data.txt").read_text() == "old" and calls[1:] == [target, target]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_signal_during_the_swap_waits_until_it_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python's own Ctrl-C handler, also where the runner started with SIGINT ignored (a
    # background job of a non-interactive shell): the deferred signal must reach it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        target = outputs.write_atomically(tmp_path / "out", fill_with("old"))
        rename = os.rename

        def signalled(src: Path, dst: Path) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the old folder moves aside
            rename(src, dst)

        monkeypatch.setattr(outputs.os, "rename", signalled)
        with pytest.raises(KeyboardInterrupt):
            outputs.write_atomically(target, fill_with("new"))
        assert (target / "data.txt").read_text() == "new"
        assert [p.name for p in tmp_path.iterdir()] == ["out"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
