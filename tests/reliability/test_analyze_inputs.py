"""Issue 13, item 4: `analyze` on a text too short to score is refused, and a score the text
cannot support is undefined (NaN, named in meta["undefined"] and in the summary), never the
source of a role. The thresholds are checked against counts made here by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from headcount.cli.main import main
from headcount.heads import AnalysisConfig, TextError, analyze
from headcount.heads.analysis import MIN_QUERIES
from headcount.report import summary_lines
from tests.cli.conftest import decoder_dir  # noqa: F401  (fixture)
from tests.heads.conftest import TinyDecoder

CFG = AnalysisConfig(chunk_len=64, induction_len=10)
ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def tiny() -> TinyDecoder:
    torch.manual_seed(0)
    return TinyDecoder().eval()


def duplicate_queries(ids: list[int]) -> int:
    """Positions whose token occurred earlier in the text (one chunk, the start token apart)."""
    return sum(1 for i, t in enumerate(ids) if t in ids[:i])


@pytest.mark.parametrize("text", ["h", "hi", ALPHABET[:15]])
def test_a_text_too_short_for_any_score_is_refused(tiny: TinyDecoder, text: str) -> None:
    # the character tokenizer: one token per character, after the start token, so the text's
    # length is the number of positions the position scores see
    assert len(text) < MIN_QUERIES["previous_token"] == 16
    with pytest.raises(TextError, match=f"the text has {len(text)} token"):
        analyze(tiny, text, config=CFG)


def test_sixteen_positions_are_enough(tiny: TinyDecoder) -> None:
    res = analyze(tiny, ALPHABET[:16], config=CFG)
    assert res.meta["text_tokens"] == 16
    for name in ("previous_token", "current_token", "first_token", "distance", "entropy"):
        assert not torch.isnan(res.scores[name]).any(), name


@pytest.mark.parametrize("repeats", [7, 8])
def test_duplicate_token_needs_eight_repeated_tokens(tiny: TinyDecoder, repeats: int) -> None:
    text = ALPHABET[:16] + ALPHABET[:repeats]
    ids = tiny.tokenizer.encode(text)
    assert duplicate_queries(ids) == repeats  # the count the threshold is about
    res = analyze(tiny, text, config=CFG)
    defined = repeats >= MIN_QUERIES["duplicate_token"]
    assert bool(torch.isnan(res.scores["duplicate_token"]).all()) is not defined
    assert ("duplicate_token" in res.meta["undefined"]) is not defined
    if not defined:
        assert res.meta["undefined"]["duplicate_token"] == (
            f"undefined: {repeats} scored queries in the text, at least 8 needed"
        )
        assert "duplicate-token" not in {r for row in res.roles for r in row}
        line = next(x for x in summary_lines(res) if x.startswith("duplicate-token"))
        assert line.startswith("duplicate-token heads: not scored, the text is too short")
    # the other scores are there either way
    assert not torch.isnan(res.scores["previous_token"]).any()
    assert not torch.isnan(res.scores["induction"]).any()


def test_undefined_scores_name_no_role(tiny: TinyDecoder) -> None:
    """Every head of a layer attending only to the previous token would be "previous-token";
    with the score undefined, no head takes that role, whatever its NaN."""
    from headcount.heads.roles import assign_roles

    res = analyze(tiny, ALPHABET[:20], config=CFG)
    assert "duplicate_token" in res.meta["undefined"]
    scores = {k: v.clone() for k, v in res.scores.items()}
    scores["duplicate_token"][:] = math.nan
    roles = assign_roles(scores, res.heads_per_layer)
    assert roles == res.roles


def test_cli_refuses_hi_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
) -> None:
    text = tmp_path / "hi.txt"
    text.write_text("hi")
    out = tmp_path / "rep"
    code = main(["analyze", str(decoder_dir), "--text", str(text), "--no-syntax", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "too short to score heads" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_report_marks_undefined_scores(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    decoder_dir: Path,  # noqa: F811
) -> None:
    text = tmp_path / "short.txt"
    text.write_text(ALPHABET + "0123456789ABCDEFGHIJ")  # 46 characters, none twice
    out = tmp_path / "rep"
    argv = ["analyze", str(decoder_dir), "--text", str(text), "--no-syntax", "-o", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    import headcount

    ids = headcount.load(decoder_dir).tokenizer.encode(text.read_text(), add_special_tokens=False)
    assert len(ids) >= 16 and duplicate_queries(ids) < 8  # the counts the thresholds are about
    data = json.loads((out / "scores.json").read_text())
    undefined = data["meta"]["undefined"]
    assert "duplicate_token" in undefined and "previous_token" not in undefined
    assert all(h["duplicate_token"] is None for h in data["heads"])
    assert all(h["role"] != "duplicate-token" for h in data["heads"])
    assert "duplicate-token heads: not scored" in stdout
