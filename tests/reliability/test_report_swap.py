"""Issue 13, items 2 and 7: replacing a report never deletes what the report did not write, and
no signal (or kill) between the steps of the replacement loses the earlier report or leaves
temporary folders behind.

Item 2: the report's marker lists every file it wrote; ``analyze --force`` and ``demo --force``
replace a folder only while it holds nothing else, and name the files that are not theirs.
``demo`` without ``--force`` never deletes anything.

Item 7: a real ``headcount analyze`` subprocess is stopped at a chosen step (the test hook
HEADCOUNT_TEST_PAUSE makes it wait on stdin there) and then signalled or killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from headcount import outputs
from headcount.cli.main import main
from headcount.report.write import MARKER, ReportError, prepare_target, write_folder
from tests.cli.conftest import decoder_dir  # noqa: F401  (fixture)

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 4


def analyze_args(model: Path, text: Path, out: Path, *extra: str) -> list[str]:
    return [
        "analyze",
        str(model),
        "--text",
        str(text),
        "--no-syntax",
        "--tokens",
        "64",
        "--chunk",
        "32",
        "-o",
        str(out),
        *extra,
    ]


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "hamlet.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def first_report(
    tmp_path_factory: pytest.TempPathFactory,
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
) -> Path:
    """One report written by ``headcount analyze``; tests copy it."""
    out = tmp_path_factory.mktemp("first") / "report"
    assert main(analyze_args(decoder_dir, text_file, out)) == 0
    return out


def copy_report(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------ item 2
def test_the_marker_lists_every_file_the_report_wrote(first_report: Path) -> None:
    lines = (first_report / MARKER).read_text(encoding="utf-8").splitlines()
    assert lines[0] == outputs.LISTING_HEADER
    listed = {line for line in lines[1:] if not line.startswith("#")}
    on_disk = {p.relative_to(first_report).as_posix() for p in first_report.rglob("*")}
    assert listed == on_disk - {MARKER}
    assert {"index.html", "scores.csv", "scores.json", "figures"} <= listed
    assert "# written by headcount analyze" in lines


def test_force_replaces_a_report_that_holds_only_its_own_files(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
    first_report: Path,
) -> None:
    out = copy_report(first_report, tmp_path / "report")
    (out / "index.html").write_text("edited by the user, still the report's file")
    (out / "scores.csv").write_text("stale")
    assert main(analyze_args(decoder_dir, text_file, out, "--force")) == 0
    capsys.readouterr()
    new = tree(out)
    assert new["scores.csv"] == tree(first_report)["scores.csv"]  # replaced
    assert new["index.html"].startswith(b"<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # nothing left aside


@pytest.mark.parametrize("where", ["notes.txt", "figures/my-plot.png", "drafts/"])
def test_force_refuses_a_report_holding_the_users_files(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
    first_report: Path,
    where: str,
) -> None:
    out = copy_report(first_report, tmp_path / "report")
    if where.endswith("/"):
        (out / where).mkdir()
    else:
        (out / where).write_text("the user's own")
    before = tree(out)
    code = main(analyze_args(decoder_dir, text_file, out, "--force"))
    err = capsys.readouterr().err
    assert code == 2 and "holds files headcount did not write" in err
    assert f"({where.rstrip('/')})" in err and "Traceback" not in err
    assert tree(out) == before and (out / where.rstrip("/")).exists()


def test_a_report_from_before_listings_is_not_replaced(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
    first_report: Path,
) -> None:
    out = copy_report(first_report, tmp_path / "report")
    (out / MARKER).write_text("written by headcount analyze\n")  # the old marker: no list
    before = tree(out)
    code = main(analyze_args(decoder_dir, text_file, out, "--force"))
    assert code == 2 and "did not list its files" in capsys.readouterr().err
    assert tree(out) == before


def test_demo_never_deletes_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first_report: Path
) -> None:
    # refused before the model loads: these runs never reach SmolLM2
    out = copy_report(first_report, tmp_path / "demo-report")
    before = tree(out)
    assert main(["demo", "-o", str(out)]) == 2
    assert "already holds a report; pass --force" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "-o", str(out), "--force"]) == 2
    assert "did not write (notes.txt)" in capsys.readouterr().err
    assert tree(out) == {**before, "notes.txt": b"mine"}


def test_files_added_while_the_report_is_written_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_folder(prepare_target(out), lambda f: (f / "a.txt").write_text("old"), "test")
    target = prepare_target(out, force=True)  # allowed now ...

    def fill(folder: Path) -> None:
        (folder / "a.txt").write_text("new")
        (out / "notes.txt").write_text("added meanwhile")  # ... but not after this

    with pytest.raises(ReportError, match=r"now holds files headcount did not write \(notes"):
        write_folder(target, fill, "test")
    assert (out / "a.txt").read_text() == "old" and (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# ------------------------------------------------------------------------------------ item 7
def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def start(argv: list[str], pause: str, cwd: Path) -> subprocess.Popen[bytes]:
    """``headcount ARGV`` in a subprocess that stops at ``pause`` until a line on stdin."""
    env = {**os.environ, outputs.PAUSE_ENV: pause}
    env.pop("HEADCOUNT_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "headcount", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        # Ctrl-C and hang-ups as in a terminal, also where this test runs with SIGINT ignored (a
        # background job of a non-interactive shell) or SIGHUP ignored (under nohup): ignored
        # signals pass on to the child, and headcount rightly leaves an ignored signal ignored
        preexec_fn=_default_signals,
    )
    assert proc.stderr is not None
    seen = []
    for line in iter(proc.stderr.readline, b""):  # tqdm bars and logs come first
        seen.append(line)
        if line.strip().endswith(f"headcount-test-paused {pause}".encode()):
            return proc
    proc.wait()
    raise AssertionError(f"never paused at {pause}: {b''.join(seen).decode()[-2000:]}")


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    _, err = proc.communicate(b"\n")
    return proc.returncode, err.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_writing_leaves_nothing(
    tmp_path: Path,
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
    sig: signal.Signals,
) -> None:
    out = tmp_path / "new" / "deeper" / "report"  # parents made for it go too
    proc = start(analyze_args(decoder_dir, text_file, out), "fill", tmp_path)
    assert any(p.name.startswith(".report.tmp-") for p in out.parent.iterdir())
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == 128 + sig and f"terminated by {sig.name}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_between_the_renames_waits_until_the_new_report_is_in_place(
    tmp_path: Path,
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
    first_report: Path,
    sig: signal.Signals,
) -> None:
    out = copy_report(first_report, tmp_path / "report")
    (out / "scores.csv").write_text("stale")
    proc = start(analyze_args(decoder_dir, text_file, out, "--force"), "swap", tmp_path)
    assert not out.exists()  # the earlier report is aside, the new one not yet in place
    proc.send_signal(sig)
    code, err = finish(proc)
    assert code == 128 + sig and "Traceback" not in err
    assert tree(out)["scores.csv"] == tree(first_report)["scores.csv"]  # the new report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_kill_between_the_renames_is_repaired_by_the_next_run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
    text_file: Path,
    first_report: Path,
) -> None:
    out = copy_report(first_report, tmp_path / "report")
    (out / "scores.csv").write_text("the earlier report")
    before = tree(out)
    proc = start(analyze_args(decoder_dir, text_file, out, "--force"), "swap", tmp_path)
    proc.kill()
    finish(proc)
    aside = [p.name for p in tmp_path.iterdir()]
    assert "report" not in aside and any(n.startswith(f".report.old-{proc.pid}-") for n in aside)
    # the next run puts the earlier report back before it looks at the folder
    code = main(analyze_args(decoder_dir, text_file, out))
    assert code == 2 and "already holds a report; pass --force" in capsys.readouterr().err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_leftovers_of_dead_runs_are_tidied_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])  # a process id that no longer runs, once reaped
    dead.wait()
    alive = os.getppid()
    out = tmp_path / "report"
    half = tmp_path / f".report.tmp-{dead.pid}-abc"
    (half / "figures").mkdir(parents=True)
    earlier = tmp_path / f".report.old-{dead.pid}-def" / "report"
    earlier.mkdir(parents=True)
    (earlier / MARKER).write_text("listing")
    busy = tmp_path / f".report.tmp-{alive}-ghi"  # a run still going: not ours to touch
    busy.mkdir()
    other = tmp_path / f".reports.tmp-{dead.pid}-jkl"  # another target's
    other.mkdir()
    outputs.recover(out)
    assert (out / MARKER).read_text() == "listing"  # the earlier folder is back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report", busy.name, other.name])


# ------------------------------------------------------ item 2, checkpoints (prune, convert)
def test_prune_force_never_deletes_the_users_files(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
) -> None:
    """A saved model a command wrote lists its files too; one without the list (model.save, an
    earlier headcount) may hold only what a save and its report write."""
    from headcount.report.write import LISTING

    out = tmp_path / "pruned"
    argv = ["prune", str(decoder_dir), "--fraction", "0.2", "--by", "random"]
    argv += ["--tokens", "64", "--window", "32", "--eval-tokens", "64", "-o", str(out)]
    assert main(argv) == 0
    capsys.readouterr()
    lines = (out / LISTING).read_text().splitlines()
    assert lines[0] == outputs.LISTING_HEADER
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert set(lines[1:]) == on_disk - {LISTING}
    assert {"headcount.json", "model.safetensors", "report/prune.json"} <= set(lines[1:])
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    assert main([*argv, "--force"]) == 2  # refused before the model loads
    assert "holds files headcount did not write (notes.txt)" in capsys.readouterr().err
    (out / LISTING).unlink()  # as model.save or an earlier headcount left it
    assert main([*argv, "--force"]) == 2
    assert "(notes.txt)" in capsys.readouterr().err
    assert tree(out) == {k: v for k, v in before.items() if k != LISTING}
    (out / "notes.txt").unlink()
    assert main([*argv, "--force"]) == 0  # only a save's own files: replaced
    assert (out / LISTING).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
