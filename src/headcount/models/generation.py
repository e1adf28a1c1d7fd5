"""Autoregressive decoding with the per-layer KV cache: greedy, temperature, top-k, top-p.

The loop is kept lean for benchmarking: one forward of one token per step, logits of the last
position only, no per-step allocation beyond the model's own.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from headcount.errors import ConfigError, ShapeError
from headcount.models.base import is_id_dtype

if TYPE_CHECKING:
    from headcount.models.decoder import Decoder


@dataclass
class Generation:
    """The result of `Decoder.generate`."""

    prompt_ids: list[int]
    ids: list[int]  # new tokens, including a stop token if one ended generation (as HF does)
    text: str | None  # decoded new text without the stop token/string; None without a tokenizer
    finish_reason: str  # "stop" or "length"
    timings: dict[str, float] = field(default_factory=dict)


def token_ids(ids: Sequence[Any], what: str) -> list[int]:
    """``ids`` as ints; a float (1.7, even 2.0), a bool or a string is refused, never truncated."""
    out = []
    for k, i in enumerate(ids):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise ShapeError(f"{what} ids must be integers, got {i!r} at index {k}")
        out.append(int(i))
    return out


def _prompt_ids(model: Decoder, prompt: str | Sequence[int] | Tensor) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt)
    if isinstance(prompt, Tensor):
        if prompt.ndim == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.ndim != 1:
            raise ShapeError(
                f"generate takes one prompt: ids of shape (T,) or (1, T), got {tuple(prompt.shape)}"
            )
        if not is_id_dtype(prompt.dtype):
            raise ShapeError(f"prompt ids must be an integer tensor, got {prompt.dtype}")
        return [int(i) for i in prompt.tolist()]
    return token_ids(prompt, "prompt")


def _stops(model: Decoder, stop: Sequence[int | str] | None) -> tuple[set[int], list[str]]:
    if stop is None:
        ids = set(model.config.eos_token_ids)
        if model.has_tokenizer and model.tokenizer.eos_token_id is not None:
            ids.add(model.tokenizer.eos_token_id)
        return ids, []
    if isinstance(stop, (str, int)):
        stop = [stop]
    if any(s == "" for s in stop):  # "" is in every text: it would stop after one token
        raise ConfigError("a stop string must not be empty")
    return {s for s in stop if isinstance(s, int)}, [s for s in stop if isinstance(s, str)]


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token from ``logits (B, V)``: argmax when ``temperature == 0``. Returns ``(B,)``."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # keep the smallest prefix whose probability reaches top_p (always the first token)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ConfigError(f"top_k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")


def stream(
    model: Decoder,
    prompt_or_ids: str | Sequence[int] | Tensor,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[int | str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids; stops after a stop id (yielded) or when the context is full.

    Stop strings are matched by `generate`, which sees the decoded text.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    prompt = _prompt_ids(model, prompt_or_ids)
    if not prompt:
        raise ShapeError("the prompt is empty; give at least one token")
    model._check_ids(torch.tensor([prompt]))  # context length and vocabulary
    stop_ids, _ = _stops(model, stop)
    n_new = min(max_new_tokens, model.max_len - len(prompt))
    gen = None
    if seed is not None:
        gen = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    device = model.embed.weight.device
    return _decode(
        model, prompt, n_new, temperature, top_k, top_p, stop_ids, gen, use_cache, device
    )


def _decode(
    model: Decoder,
    prompt: list[int],
    n_new: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_ids: set[int],
    gen: torch.Generator | None,
    use_cache: bool,
    device: torch.device,
) -> Iterator[int]:
    if n_new <= 0:
        return
    from headcount.models.fastpath import FastDecode, fast_path_issue

    # The lean batch-1 step (same logits as Decoder.forward) unless something needs the full
    # forward: a weights hook, the eager backend, a model without full RoPE.
    fast = use_cache and fast_path_issue(model) is None
    with torch.inference_mode():
        ids = torch.tensor([prompt], device=device)  # (1, T)
        runner = FastDecode(model, max_len=len(prompt) + n_new) if fast else None
        cache = model.new_cache(1, len(prompt) + n_new) if use_cache and not fast else None
        if runner is not None:
            logits = runner.prefill(ids)  # (1, V)
        else:
            logits = model(ids, cache=cache, last_only=True).logits[:, -1]  # (1, V)
        for step in range(n_new):
            nxt = sample_next(logits, temperature, top_k, top_p, gen)  # (1,)
            token = int(nxt)
            yield token
            if token in stop_ids or step == n_new - 1:
                return
            if runner is not None:
                logits = runner.step(nxt)
            elif cache is not None:
                logits = model(nxt.view(1, 1), cache=cache, last_only=True).logits[:, -1]
            else:
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)  # (1, T + step + 1)
                logits = model(ids, last_only=True).logits[:, -1]


def generate(
    model: Decoder,
    prompt_or_ids: str | Sequence[int] | Tensor,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[int | str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Run `stream` to the end; see `Decoder.generate`."""
    import time

    prompt = _prompt_ids(model, prompt_or_ids)
    stop_ids, stop_strings = _stops(model, stop)
    text_stops = stop_strings and model.has_tokenizer
    new: list[int] = []
    finish = "length"
    t0 = time.perf_counter()
    t_first = None
    for token in stream(
        model, prompt, max_new_tokens, temperature, top_k, top_p, stop, seed, use_cache
    ):
        if t_first is None:
            t_first = time.perf_counter()
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop_ids:
            finish = "stop"
            break
        if text_stops and any(s in model.tokenizer.decode(new) for s in stop_strings):
            finish = "stop"
            break
    t_end = time.perf_counter()
    text = None
    if model.has_tokenizer:
        body = new[:-1] if new and new[-1] in stop_ids else new
        text = model.tokenizer.decode(body)
        for s in stop_strings:
            if s in text:
                text = text[: text.index(s)]
    timings = {"total_s": t_end - t0}
    if t_first is not None:
        timings["prefill_s"] = t_first - t0
        if len(new) > 1:
            timings["decode_tokens_per_s"] = (len(new) - 1) / max(t_end - t_first, 1e-9)
    return Generation(prompt, new, text, finish, timings)
