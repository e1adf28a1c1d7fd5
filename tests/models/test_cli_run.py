"""`headcount run`: chat template, streamed text on stdout, statistics on stderr, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import headcount
from headcount.cli.main import main
from tests.loaders import tiny


@pytest.mark.model
def test_run_streams_a_chat_answer(
    smollm2: headcount.Decoder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # reuse the session's model
    monkeypatch.setattr(headcount, "load", lambda name, dtype=None: smollm2)
    assert main(["run", "smollm2", "What is the capital of France?", "-n", "12"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out and "<|im_end|>" not in out
    assert "prompt tokens" in err and "tokens/s" in err
    ref = smollm2.generate(
        smollm2.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}]
        ),
        max_new_tokens=12,
    )
    assert out == ref.text + "\n"


@pytest.mark.model
def test_run_raw_continues_the_text(
    smollm2: headcount.Decoder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(headcount, "load", lambda name, dtype=None: smollm2)
    assert main(["run", "smollm2", "One, two, three,", "--raw", "-n", "6", "--stop", "six"]) == 0
    out, _ = capsys.readouterr()
    assert out == smollm2.generate("One, two, three,", 6, stop=[2, "six"]).text + "\n"


@pytest.mark.model
def test_run_gives_gemma3_its_chat_turns(
    gemma3: headcount.Decoder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gemma's template comes from the model (its GGUF carries none): one BOS, the system
    message folded into the user turn, generation stopped at ``<end_of_turn>``."""
    monkeypatch.setattr(headcount, "load", lambda name, dtype=None: gemma3)
    assert main(["run", "gemma3", "What is 2 + 2?", "--system", "Be brief.", "-n", "8"]) == 0
    out, err = capsys.readouterr()
    tok = gemma3.tokenizer
    ids = tok.encode_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    )
    assert tok.decode(ids) == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"
    )
    ref = gemma3.generate(ids, max_new_tokens=8, stop=[1, 106])
    assert out == ref.text + "\n" and "<end_of_turn>" not in out
    assert f"[{len(ids)} prompt tokens" in err


def test_run_rejects_an_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny.hf_bert(tmp_path)
    assert main(["run", str(tmp_path), "hello"]) == 2
    assert "is an encoder (bert); run needs a decoder" in capsys.readouterr().err


def test_run_reports_a_missing_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(tmp_path / "nope.gguf"), "hello"]) == 2
    assert "nope.gguf: no such file or folder" in capsys.readouterr().err


@pytest.mark.model
def test_run_loads_the_asked_dtype(
    smollm2: headcount.Decoder, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--dtype`` reaches `headcount.load` (default: the file's own packed format); an unknown
    one is a usage error naming the choices."""
    asked: list[object] = []

    def load(name: str, dtype: object = "unset") -> headcount.Decoder:
        asked.append(dtype)
        return smollm2

    monkeypatch.setattr(headcount, "load", load)
    for option, want in (
        ([], None),
        (["--dtype", "float32"], torch.float32),
        (["--dtype", "bfloat16"], torch.bfloat16),
    ):
        assert main(["run", "smollm2", "Hi", "--raw", "-n", "1", *option]) == 0
        assert asked[-1] is want
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["run", "smollm2", "Hi", "--dtype", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err
