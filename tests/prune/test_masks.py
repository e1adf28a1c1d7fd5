"""Masking and physical removal: the pruned model equals the masked one, and is smaller by
exactly the removed heads' weights."""

from __future__ import annotations

import pytest
import torch

from headcount.errors import ConfigError
from headcount.prune import apply_mask, check_fraction, full_mask, remove_heads, select
from headcount.prune.masks import kept_groups
from tests.prune.conftest import tiny_decoder, tiny_encoder


def _keep(model, removed: dict[int, list[int]]) -> list[torch.Tensor]:
    keep = full_mask(model)
    for layer, heads in removed.items():
        keep[layer][heads] = False
    return keep


# layer 0: GQA 6 heads / 2 groups of 3 -> remove head 1 (groups become 2, 3) and the whole
# group 1 (heads 3, 4, 5) in another variant; layer 1: MHA 4 -> remove 2 heads (and their KV);
# layer 2: MQA 3 -> remove one query head (the KV head stays).
CASES = {
    "uneven": {0: [1], 1: [0, 3], 2: [2]},
    "group": {0: [3, 4, 5], 1: [1], 2: [0, 1]},
    "none": {},
}


@pytest.mark.parametrize("case", list(CASES))
def test_removed_equals_masked_prefill_and_decode(case: str, ids: torch.Tensor) -> None:
    model = tiny_decoder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = _keep(model, CASES[case])
    pruned = remove_heads(model, keep)
    for k, v in model.state_dict().items():  # the source is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    x = ids[:40][None]
    apply_mask(model, keep)
    masked = model(x).logits
    torch.testing.assert_close(pruned(x).logits, masked, rtol=1e-5, atol=1e-5)
    cache = pruned.new_cache(1, 40)
    steps = [pruned(x[:, :30], cache=cache).logits]
    for t in range(30, 40):
        steps.append(pruned(x[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), masked, rtol=1e-5, atol=1e-5)
    apply_mask(model, None)
    # greedy generation (fast path or not) agrees between the two
    g_pruned = pruned.generate(ids[:8].tolist(), max_new_tokens=6).ids
    apply_mask(model, keep)
    g_masked = model.generate(ids[:8].tolist(), max_new_tokens=6, use_cache=False).ids
    apply_mask(model, None)
    assert g_pruned == g_masked


def test_parameter_count_drops_by_the_removed_heads_weights() -> None:
    model = tiny_decoder()
    C, D = 24, 8
    keep = _keep(model, CASES["uneven"])
    pruned = remove_heads(model, keep)
    # hand count: layer 0 loses 1 query head (no group: groups 0 and 1 keep 2 and 3 heads);
    # layer 1 (MHA) loses 2 query heads and their 2 KV heads; layer 2 (MQA) loses 1 query head.
    # A query head: Q rows D*C + q bias D + o_proj columns C*D; a KV head: K, V rows 2*D*C + 2*D bias.
    q_head = D * C + D + C * D
    kv_head = 2 * D * C + 2 * D
    removed = 4 * q_head + 2 * kv_head
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in pruned.parameters())
    assert n_before - n_after == removed == 4 * 392 + 2 * 400
    assert pruned.config.n_heads == (5, 2, 2)
    assert pruned.config.n_kv_heads == (2, 2, 1)
    assert pruned.config.group_sizes == ((2, 3), (1, 1), (2,))


def test_group_removal_shrinks_the_kv_cache() -> None:
    model = tiny_decoder()
    keep = _keep(model, CASES["group"])
    assert [
        int(kept_groups(a, m).sum()) for a, m in zip(model.attention_layers(), keep, strict=False)
    ] == [
        1,
        3,
        1,
    ]
    pruned = remove_heads(model, keep)
    full, small = model.new_cache(1, 64), pruned.new_cache(1, 64)
    per_group = 2 * 64 * 8 * 4  # K and V, 64 positions, D = 8, float32
    assert full.nbytes - small.nbytes == 2 * per_group  # layer 0 and layer 1 each lose one group
    assert pruned.config.group_sizes is None  # every layer's groups are even again


def test_encoder_removed_equals_masked(ids: torch.Tensor) -> None:
    model = tiny_encoder()
    keep = _keep(model, {0: [0, 2], 1: [1]})
    pruned = remove_heads(model, keep)
    x = ids[:20].view(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    apply_mask(model, keep)
    torch.testing.assert_close(
        pruned(x, attention_mask=mask).hidden_states,
        model(x, attention_mask=mask).hidden_states,
        rtol=1e-5,
        atol=1e-5,
    )
    assert pruned.config.n_heads == (2, 2)


def test_select_never_empties_a_layer_and_fraction_errors() -> None:
    model = tiny_decoder()  # 13 heads in 3 layers: at most 10 can go
    scores = [torch.zeros(6), torch.zeros(4), torch.zeros(3)]
    keep = select(scores, 10, full_mask(model))
    assert [int(m.sum()) for m in keep] == [1, 1, 1]
    with pytest.raises(ConfigError, match="only 10 can go"):
        select(scores, 11, full_mask(model))
    assert check_fraction(model, 0.3) == 4  # round(0.3 * 13)
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            check_fraction(model, bad)
    with pytest.raises(ConfigError, match="would empty a layer"):
        check_fraction(model, 0.9)
    groups = [torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(4), torch.zeros(3, dtype=torch.long)]
    keep = select(
        [torch.tensor([0.5, 0.1]), torch.arange(4.0), torch.zeros(1)],
        2,
        full_mask(model),
        unit="group",
        groups=groups,
    )
    assert keep[0].tolist() == [True] * 3 + [False] * 3  # group 1 (score 0.1) went whole
    assert keep[1].tolist() == [False, True, True, True]
    assert keep[2].all()  # a layer's only group never goes


def test_mask_errors() -> None:
    model = tiny_decoder()
    keep = full_mask(model)
    keep[1][:] = False
    with pytest.raises(ConfigError, match="layer 1: every head"):
        apply_mask(model, keep)
    with pytest.raises(ConfigError, match="the model has 3"):
        remove_heads(model, keep[:2])
