"""Tiny random decoders and encoders for the pruning tests (seeded, float64 where gradients are
compared with finite differences)."""

from __future__ import annotations

import pytest
import torch

from headcount.models import Decoder, DecoderConfig, Encoder, EncoderConfig


def tiny_decoder(dtype: torch.dtype = torch.float32, **overrides: object) -> Decoder:
    kw: dict = dict(
        vocab_size=40,
        d_model=24,
        n_layers=3,
        n_heads=(6, 4, 3),
        n_kv_heads=(2, 4, 1),  # GQA, MHA, MQA
        head_dim=8,
        d_ff=32,
        max_len=64,
        rope_base=500.0,
        qkv_bias=True,
    )
    kw.update(overrides)
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(**kw)).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_encoder(dtype: torch.dtype = torch.float32) -> Encoder:
    torch.manual_seed(0)
    cfg = EncoderConfig(
        vocab_size=40, d_model=24, n_layers=2, n_heads=(4, 3), head_dim=8, d_ff=32, max_len=32
    )
    model = Encoder(cfg).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 40, (96,), generator=g)


def word_tokenizer() -> object:
    """A word-level tokenizer over 40 ids: [PAD], [UNK] and 38 lowercase words w0..w37."""
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from headcount.loaders.tokenizer import Tokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(38)}}
    backend = Backend(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return Tokenizer(backend, pad_token_id=0)


def sentences(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        out.append(" ".join(f"w{int(i)}" for i in torch.randint(0, 38, (k,), generator=g)))
    return out
