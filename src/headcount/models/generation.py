"""Autoregressive decoding with the per-layer KV cache: greedy, temperature, top-k, top-p.

Generation drives the model and holds no model math: the prompt is one forward through the
cache, each new token one forward of ``(B, 1)`` ids with ``last_only=True``, whose layers take
their lean single-position branch (`headcount.nn.Attention` without masks). Several prompts of
different lengths decode together left-padded: a key padding mask over the cache and per-row
positions that start at each row's first real token (`generate` with a list of prompts).

The model does not import this module (``Decoder.generate`` / ``stream`` import it lazily).
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from headcount.errors import ConfigError, ShapeError
from headcount.models.base import is_id_dtype
from headcount.nn import linear

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
    gen = _generator(model, seed)
    return _decode(model, prompt, n_new, temperature, top_k, top_p, stop_ids, gen, use_cache)


def _generator(model: Decoder, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=model.embed.weight.device).manual_seed(seed)


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
) -> Iterator[int]:
    if n_new <= 0:
        return
    device = model.embed.weight.device
    with torch.inference_mode(), half_gemm_as_float(model.embed.weight.dtype):
        ids = torch.tensor([prompt], device=device)  # (1, T)
        cache = model.new_cache(1, len(prompt) + n_new) if use_cache else None
        logits = model(ids, cache=cache, last_only=True).logits[:, -1]  # (1, V)
        for step in range(n_new):
            nxt = sample_next(logits, temperature, top_k, top_p, gen)  # (1,)
            token = int(nxt)
            yield token
            if token in stop_ids or step == n_new - 1:
                return
            if cache is not None:
                logits = model(nxt.view(1, 1), cache=cache, last_only=True).logits[:, -1]
            else:
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)  # (1, T + step + 1)
                logits = model(ids, last_only=True).logits[:, -1]


def stream_batch(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[Tensor]:
    """Decode several prompts (token ids, different lengths) together; yield the new ids of
    every row ``(B,)`` per step, ``min(max_new_tokens, max_len - longest prompt)`` steps
    (the caller stops early when every row is done).

    Rows are left-padded to the longest prompt; ``attention_mask`` hides the padded cache slots
    and each row's positions count from its first real token, so a row's greedy tokens are
    those of its prompt decoded alone (to float rounding of the batched matrix products).
    Sampled rows share one generator, so they differ from single-prompt runs with the seed.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    rows = [token_ids(p, "prompt") for p in prompts]
    if not rows:
        raise ShapeError("no prompts given")
    for i, r in enumerate(rows):
        if not r:
            raise ShapeError(f"prompt {i} is empty; give at least one token")
        model._check_ids(torch.tensor([r]))
    n_new = min(max_new_tokens, model.max_len - max(len(r) for r in rows))
    return _decode_batch(model, rows, n_new, temperature, top_k, top_p, _generator(model, seed))


def _decode_batch(
    model: Decoder,
    rows: list[list[int]],
    n_new: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    gen: torch.Generator | None,
) -> Iterator[Tensor]:
    if n_new <= 0:
        return
    device = model.embed.weight.device
    B, T = len(rows), max(len(r) for r in rows)
    lengths = torch.tensor([len(r) for r in rows], device=device)  # (B,)
    ids = torch.zeros(B, T, dtype=torch.long, device=device)  # pad id 0: never attended
    mask = torch.ones(B, T + n_new, dtype=torch.bool, device=device)  # (B, S_max)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.tensor(r, device=device)
        mask[i, : T - len(r)] = False
    padded = bool((lengths != T).any())
    with torch.inference_mode(), half_gemm_as_float(model.embed.weight.dtype):
        cache = model.new_cache(B, T + n_new)
        am = mask[:, :T] if padded else None  # positions follow from the mask
        logits = model(ids, attention_mask=am, cache=cache, last_only=True).logits[:, -1]
        for step in range(n_new):
            nxt = sample_next(logits, temperature, top_k, top_p, gen)  # (B,)
            yield nxt
            if step == n_new - 1:
                return
            if padded:  # the new token of row i sits at position len_i + step
                S = T + step + 1
                out = model(
                    nxt.view(B, 1),
                    attention_mask=mask[:, :S],
                    cache=cache,
                    positions=(lengths + step).view(B, 1),
                    last_only=True,
                )
            else:
                out = model(nxt.view(B, 1), cache=cache, last_only=True)
            logits = out.logits[:, -1]


def _is_batch(prompt: Any) -> bool:
    """Several prompts: a list/tuple of strings or id sequences, or a ``(B, T)`` tensor, B > 1."""
    if isinstance(prompt, Tensor):
        return prompt.ndim == 2 and prompt.shape[0] > 1
    if isinstance(prompt, (list, tuple)) and prompt:
        return all(isinstance(p, (str, list, tuple, Tensor)) for p in prompt)
    return False


def generate(
    model: Decoder,
    prompt_or_ids: str | Sequence[int] | Tensor | Sequence[str | Sequence[int]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop: Sequence[int | str] | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    on_token: Callable[[int], None] | None = None,
) -> Generation | list[Generation]:
    """Run `stream` to the end; see `Decoder.generate`. Several prompts (a list of texts or of
    id sequences, or a ``(B, T)`` tensor) decode together as one batch: a list of
    `Generation`, one per prompt (``on_token`` is then not called)."""
    if _is_batch(prompt_or_ids):
        if not use_cache:
            raise ConfigError("several prompts decode with the cache; use_cache=False is for one")
        return _generate_batch(
            model,
            prompt_or_ids,  # type: ignore[arg-type]
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            stop,
            seed,
        )
    prompt = _prompt_ids(model, prompt_or_ids)  # type: ignore[arg-type]
    stop_ids, stop_strings = _stops(model, stop)
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
        if _hit_stop_string(model, new, stop_strings):
            finish = "stop"
            break
    return _result(model, prompt, new, finish, stop_ids, stop_strings, t0, t_first)


def _hit_stop_string(model: Decoder, new: list[int], stop_strings: list[str]) -> bool:
    if not stop_strings or not model.has_tokenizer:
        return False
    text = model.tokenizer.decode(new)
    return any(s in text for s in stop_strings)


def _result(
    model: Decoder,
    prompt: list[int],
    new: list[int],
    finish: str,
    stop_ids: set[int],
    stop_strings: list[str],
    t0: float,
    t_first: float | None,
) -> Generation:
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


def _generate_batch(
    model: Decoder,
    prompts: Sequence[str | Sequence[int]] | Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop: Sequence[int | str] | None,
    seed: int | None,
) -> list[Generation]:
    """`stream_batch` until every row has stopped; one `Generation` per prompt."""
    items = list(prompts.unbind(0)) if isinstance(prompts, Tensor) else list(prompts)
    rows = [_prompt_ids(model, p) for p in items]
    stop_ids, stop_strings = _stops(model, stop)
    new: list[list[int]] = [[] for _ in rows]
    finish = ["length"] * len(rows)
    done = [False] * len(rows)
    t0 = time.perf_counter()
    t_first = None
    for tokens in stream_batch(model, rows, max_new_tokens, temperature, top_k, top_p, seed):
        if t_first is None:
            t_first = time.perf_counter()
        for i, token in enumerate(tokens.tolist()):
            if done[i]:
                continue
            new[i].append(token)
            if token in stop_ids or _hit_stop_string(model, new[i], stop_strings):
                done[i], finish[i] = True, "stop"
        if all(done):
            break
    return [
        _result(model, rows[i], new[i], finish[i], stop_ids, stop_strings, t0, t_first)
        for i in range(len(rows))
    ]


class Decoding:
    """Step-by-step batch-1 decoding of ``model`` with its own `ModelCache` of ``max_len``
    positions, for callers that drive the loop themselves (benchmarks). A driver: the math is
    the model's own forward.

    ``prefill(ids)`` runs prompt ids after what is cached and returns the last logits
    ``(1, V)``; ``step(token)`` appends one token and returns its logits. Both run under
    ``torch.inference_mode()`` (with autograd on, packed weights would take the differentiable
    path, which dequantises every matrix at every step: ~50x slower).
    """

    def __init__(self, model: Decoder, max_len: int | None = None) -> None:
        self.model = model
        self.cache = model.new_cache(1, max_len)
        self.max_len = self.cache.max_len
        w = model.embed.weight
        self.dtype, self.device = w.dtype, w.device

    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()

    def prefill(self, ids: Sequence[int] | Tensor) -> Tensor:
        """Run the ids ``(T,)`` or ``(1, T)`` after what is cached; last logits ``(1, V)``."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)
        return self._run(t)

    def step(self, token: int | Tensor) -> Tensor:
        """Append one token; its logits ``(1, V)``."""
        if self.cache.length >= self.max_len:
            raise ShapeError(f"the decode cache is full ({self.max_len} positions); make it larger")
        return self._run(torch.as_tensor(token, device=self.device).view(1, 1))

    def _run(self, ids: Tensor) -> Tensor:
        with torch.inference_mode(), half_gemm_as_float(self.dtype):
            return self.model(ids, cache=self.cache, last_only=True).logits[:, -1]


# ------------------------------------------------------------ bfloat16 without bf16 units
def _native_half() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class _FloatGemm(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            from headcount.models import kernels
            from headcount.models.quant import Int8Weight

            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if (
                isinstance(w, Tensor)
                and not isinstance(w, Int8Weight)
                and w.dtype in (torch.bfloat16, torch.float16)
                and x.dtype == w.dtype
                and x.numel() > kernels.MAX_ROWS * w.shape[1]
            ):  # prefill: a float32 GEMM
                bias = None if b is None else b.float()
                return F.linear(x.float(), w.float(), bias).to(x.dtype)
            # decode rows: `headcount.nn.linear` (the model's own Linear path) picks the kernel
            return linear(x, w, b)
        return func(*args, **kwargs)


def half_gemm_as_float(dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Inside: on a CPU without native bfloat16 (AVX-512 BF16/AMX), where oneDNN's bfloat16
    matrix products are ~10x slower than float32's, ``F.linear`` on bfloat16/float16 inputs of
    more than `kernels.MAX_ROWS` rows widens weight and input to float32 and rounds the result
    back; fewer rows (decoding) take `headcount.nn.linear`, which sends bfloat16 ones to the
    compiled GEMV kernel on every CPU. All accumulate in float32, so results agree to rounding. A no-op for
    float32 models and on CPUs with bfloat16 units. `generate` decodes inside it."""
    if dtype not in (torch.bfloat16, torch.float16) or _native_half():
        return contextlib.nullcontext()
    return _FloatGemm()
