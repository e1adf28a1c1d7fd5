"""One-off check: rank SmolLM2's KV groups by the *sum* of their heads' (normalised) importance,
instead of the score of one gate shared by the group, and measure held-out perplexity.

Needs experiments/results/pruning_smollm2_head.json (the head importance of the full model).

    python experiments/group_score_check.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import headcount
from headcount.prune import apply_mask, full_mask, select
from headcount.prune.masks import group_index

model = headcount.load("smollm2")
results = Path(__file__).parent / "results" / "pruning_smollm2_head.json"
heads = [torch.tensor(h) for h in json.loads(results.read_text())["importance/importance"]]
groups = [group_index(a) for a in model.attention_layers()]
scores = [
    torch.zeros(a.n_kv_heads, dtype=torch.float64).index_add_(0, g, h.double())
    for a, g, h in zip(model.attention_layers(), groups, heads, strict=True)
]
macbeth = model.tokenizer.encode(headcount.corpus(play="macbeth"))[:2048]
for f in (0.1, 0.3, 0.5):
    keep = select(scores, round(f * 90), full_mask(model), unit="group", groups=groups)
    apply_mask(model, keep)
    print(
        f"{f:.0%} of the groups: perplexity {headcount.perplexity(model, macbeth).perplexity:.1f}"
    )
    apply_mask(model, None)
