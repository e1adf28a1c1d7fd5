"""Conversion, pruning and save/load on the Gemma 3 architecture (MQA, sliding-window layers),
on a tiny random Gemma 3 so that it runs in seconds; the real checkpoint's parity is in
test_gemma3.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import headcount
from headcount.convert import convert
from headcount.models.gemma3 import Gemma3Decoder
from headcount.prune import LanguageModeling, apply_mask, remove_heads, schedule
from tests.models.tiny import tiny_gemma3


@pytest.fixture(scope="module")
def gemma() -> Gemma3Decoder:
    return tiny_gemma3(8, ("sliding", "sliding", "full"))


def test_mqa_conversion_to_its_own_count_is_exact(gemma: Gemma3Decoder) -> None:
    ids = torch.randint(0, 50, (2, 20))  # longer than the window
    out = convert(gemma, 1, "mean")
    assert type(out) is Gemma3Decoder
    assert torch.equal(out(ids).logits, gemma(ids).logits)
    with pytest.raises(ValueError, match="divide"):
        convert(gemma, 3, "mean")  # 3 does not divide 4 query heads


def test_pruning_removes_query_heads_and_keeps_windows_and_the_kv_head(
    gemma: Gemma3Decoder, tmp_path: Path
) -> None:
    ids = torch.randint(0, 50, (2, 20))
    data = LanguageModeling(torch.randint(0, 50, (200,)), window=16, batch_size=2)
    keep = schedule(gemma, data, [0.5], method="importance").masks[0.5]
    pruned = remove_heads(gemma, keep)
    layers = pruned.attention_layers()
    assert sum(a.n_heads for a in layers) == 6  # 12 query heads, half removed
    assert [a.n_kv_heads for a in layers] == [1, 1, 1]  # MQA keeps its one KV head
    assert [a.window for a in layers] == [a.window for a in gemma.attention_layers()]
    masked = copy.deepcopy(gemma)
    apply_mask(masked, keep)
    torch.testing.assert_close(pruned(ids).logits, masked(ids).logits, rtol=1e-5, atol=1e-5)
    pruned.save(tmp_path / "g")
    back = headcount.load(tmp_path / "g")
    assert type(back) is Gemma3Decoder
    torch.testing.assert_close(back(ids).logits, pruned(ids).logits, rtol=0, atol=0)
