"""Perplexity of a decoder on a long text, window by window."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from headcount.errors import ConfigError, ShapeError
from headcount.models.base import is_id_dtype
from headcount.models.decoder import Decoder
from headcount.models.generation import token_ids

DEFAULT_WINDOW = 512


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # mean negative log-likelihood per predicted token, in nats
    perplexity: float  # exp(nll)
    n_tokens: int  # tokens predicted (scored)
    n_windows: int


def perplexity(
    model: Decoder,
    text_or_ids: str | Sequence[int] | Tensor,
    window: int | None = None,
    stride: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Mean NLL and perplexity of ``text_or_ids`` under ``model``.

    Windows of ``window`` tokens start every ``stride`` tokens (HF's sliding-window recipe):
    each window scores only the tokens the previous one did not, and the rest is context. With
    ``stride == window`` no context is carried and every window scores all but its first token.
    ``progress(done, total)`` is called after each window (the library never prints). Defaults:
    ``window = min(512, model.max_len)``, ``stride = window``.
    """
    if not isinstance(model, Decoder):
        raise ConfigError(f"perplexity needs a causal Decoder, got {type(model).__name__}")
    window = min(DEFAULT_WINDOW, model.max_len) if window is None else window
    stride = window if stride is None else stride
    if isinstance(text_or_ids, str):
        ids = torch.tensor(model.tokenizer.encode(text_or_ids), dtype=torch.long)
    elif isinstance(text_or_ids, Tensor):
        if not is_id_dtype(text_or_ids.dtype):
            raise ShapeError(f"token ids must be an integer tensor, got {text_or_ids.dtype}")
        ids = text_or_ids.long().flatten()
    else:
        ids = torch.tensor(token_ids(text_or_ids, "token"), dtype=torch.long)
    if not 1 < window <= model.max_len:
        raise ConfigError(f"window={window} must be in 2..{model.max_len} (the model's context)")
    if not 0 < stride <= window:
        raise ConfigError(f"stride={stride} must be in 1..window={window}")
    N = ids.numel()
    if N < 2:
        raise ShapeError(f"perplexity needs at least 2 tokens, got {N}")
    starts = []
    for begin in range(0, N, stride):
        starts.append(begin)
        if begin + window >= N:
            break
    device = model.embed.weight.device
    total_nll, count, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for w, begin in enumerate(starts):
            end = min(begin + window, N)
            chunk = ids[begin:end].to(device)[None]  # (1, T)
            logits = model(chunk).logits[0, :-1]  # (T-1, V): predictions of tokens 1..T-1
            targets = chunk[0, 1:].clone()  # (T-1,)
            n_context = max(prev_end - begin - 1, 0)  # targets already scored by earlier windows
            targets[:n_context] = -100
            nll = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
            total_nll += float(nll)
            count += int((targets != -100).sum())
            prev_end = end
            if progress is not None:
                progress(w + 1, len(starts))
    mean = total_nll / count
    return PerplexityResult(mean, math.exp(mean), count, len(starts))
