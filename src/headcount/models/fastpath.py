"""Compatibility names for the former lean decode step, which is now the model's own path.

`FastDecode` was a second copy of the decoder's math (RMSNorm, RoPE, cache write, attention,
MLP) for batch-1 decoding. That math lives once now, in the modules: `headcount.nn.Attention`
takes a lean branch for one new position without masks, and `headcount.models.generation`
drives the model. These names remain for scripts that import them; they hold no math.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor

from headcount.models.decoder import Decoder
from headcount.models.generation import Decoding, half_gemm_as_float, stream

__all__ = ["FastDecode", "fast_generate", "fast_stream", "half_gemm_as_float"]

FastDecode = Decoding  # prefill(ids) / step(token) -> logits (1, V) through Decoder.forward


def fast_stream(
    model: Decoder,
    prompt_ids: Sequence[int] | Tensor,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[int] | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """`headcount.models.generation.stream` on token ids (``stop=[]``: no stop ids)."""
    return stream(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, stop, seed)


def fast_generate(
    model: Decoder,
    prompt_ids: Sequence[int] | Tensor,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[int] | None = None,
    seed: int | None = None,
) -> list[int]:
    """The new ids of `fast_stream` as a list."""
    return list(
        fast_stream(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, stop, seed)
    )
