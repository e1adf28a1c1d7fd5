"""Tiny seeded models the tests of tests/models build (no checkpoint needed)."""

from __future__ import annotations

import torch

from headcount.models import DecoderConfig
from headcount.models.gemma3 import Gemma3Decoder


def tiny_gemma3(sliding_window: int, layer_types: tuple[str, ...]) -> Gemma3Decoder:
    """A seeded Gemma 3 (MQA, sliding and global layers, tied embeddings) whose norm weights are
    moved off their zero init, so the (1 + w) RMSNorm is exercised."""
    torch.manual_seed(0)
    cfg = DecoderConfig(
        vocab_size=50,
        d_model=32,
        n_layers=len(layer_types),
        n_heads=4,
        n_kv_heads=1,  # MQA, as Gemma 3 270M
        head_dim=16,
        d_ff=48,
        max_len=64,
        architecture="gemma3",
        sliding_window=sliding_window,
        layer_types=layer_types,
        rope_local_base=10000.0,
        rope_base=1e6,
        query_pre_attn_scalar=16.0,
        tie_embeddings=True,
    )
    model = Gemma3Decoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model
