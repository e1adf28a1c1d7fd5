"""`analyze` end to end on a tiny model: chunking, errors, chance-level induction at random init."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch

from headcount import Attention, RoPE
from headcount.heads import AnalysisConfig, TextError, analyze, read_conllu
from headcount.heads.stream import capture_weights

from .conftest import TinyDecoder

TEXT = "To be, or not to be, that is the question. Whether 'tis nobler in the mind to suffer. " * 4
SAMPLE = str(files("headcount") / "data" / "sample.conllu")


def test_analysis_chunks_long_text_and_scores_every_head(tiny: TinyDecoder) -> None:
    cfg = AnalysisConfig(chunk_len=200, max_tokens=None, induction_len=10)
    res = analyze(tiny, TEXT, config=cfg, sentences=read_conllu(SAMPLE)[:6])
    assert res.meta["chunk_len"] == 64  # capped at the model's context
    assert res.meta["chunks"] == -(-len(TEXT) // 63)
    L, H = 2, 4
    for name in ("previous_token", "first_token", "entropy", "induction", "copying", "rare_token"):
        t = res.scores[name]
        assert t.shape == (L, H) and not torch.isnan(t).any(), name
    assert res.kv_groups == [[0, 0, 1, 1]] * 2
    rows = res.rows()
    assert len(rows) == L * H and {"layer", "head", "kv_group", "role", "induction"} <= set(rows[0])
    assert res.patterns and res.patterns[0].weights.ndim == 2
    # the hooks are gone afterwards
    assert all(a.weights_hook is None for a in tiny.attention_layers())


def test_random_init_shows_induction_at_chance(tiny: TinyDecoder) -> None:
    res = analyze(
        tiny, TEXT, config=AnalysisConfig(chunk_len=64, induction_len=10, induction_repeats=3)
    )
    chance = res.chance["induction"]
    ind = res.scores["induction"]
    assert float(ind.max()) < 3 * chance  # no head attends to the induction target
    assert abs(float(ind.mean()) - chance) < chance  # near what uniform attention gives
    assert "induction" not in {r for row in res.roles for r in row}


def test_uneven_kv_groups_are_reported_and_scored(tiny: TinyDecoder) -> None:
    torch.manual_seed(1)
    tiny.attn[1] = Attention(32, 4, 2, rope=RoPE(8), group_sizes=(3, 1))  # a pruned GQA layer
    res = analyze(tiny, TEXT, config=AnalysisConfig(chunk_len=64, induction_len=10))
    assert res.kv_groups == [[0, 0, 1, 1], [0, 0, 0, 1]]
    for name in ("previous_token", "induction", "copying"):
        assert res.scores[name].shape == (2, 4) and not torch.isnan(res.scores[name]).any()


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_raises(tiny: TinyDecoder, text: str) -> None:
    with pytest.raises(TextError, match="empty"):
        analyze(tiny, text)


def test_hooks_restored_after_error(tiny: TinyDecoder) -> None:
    layers = tiny.attention_layers()

    def boom(layer: int, w: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), capture_weights(layers, boom):
        tiny(torch.zeros(1, 4, dtype=torch.long))
    assert all(a.weights_hook is None for a in layers)
