"""A lean batch-1 decode step for `Decoder`: the same weights, cache and arithmetic, fewer ops.

`Decoder.forward` is general (masks, batches, positions, hooks, weights on request) and costs
about 80 tensor operations per layer for one new token; at batch 1 that Python and dispatch
overhead is a large part of a step once the weights stream quickly (int8). `FastDecode` runs
one token through the model with about 20 operations per layer:

* RoPE cos/sin for every position computed once (`RoPE.cos_sin`, the same values the model
  computes step by step), applied to the query and key heads together;
* the new key/value written straight into the model's `ModelCache` (the same buffers a normal
  forward fills, so prefill can run through `Decoder.forward` and decode continue here);
* the query heads of a KV group folded into rows against the cached ``(G, S, D)`` keys, as
  `headcount.nn.functional.sdpa_attention` does at ``T == 1`` (SDPA; an eager matmul + softmax
  path exists for up to `EAGER_MAX_KEYS` keys, off by default: it measured slower here);
  a layer whose groups differ in size (pruned) attends once per run of equal-sized groups.

In float32 its logits equal `Decoder.forward`'s (the tests check it to float rounding). Models it
cannot run (weights hooks, the eager backend, partial rotary) are reported by `fast_path_issue`.

Legend: C model dim, H query heads, G KV heads, R = H // G (or per run of equal-sized groups),
D head dim, S cached positions, F MLP width, V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from headcount.errors import ConfigError, ShapeError
from headcount.models import kernels
from headcount.models.cache import ModelCache
from headcount.models.decoder import Decoder, DecoderLayer
from headcount.models.generation import sample_next
from headcount.models.quant import Int8Weight
from headcount.nn import Attention
from headcount.nn.functional import GroupRun, group_runs

__all__ = [
    "EAGER_MAX_KEYS",
    "FastDecode",
    "fast_generate",
    "fast_path_issue",
    "fast_stream",
    "half_gemm_as_float",
]

EAGER_MAX_KEYS = 0  # decode attention over more cached keys goes through SDPA (0: always)


def fast_path_issue(model: Decoder) -> str | None:
    """Why `FastDecode` cannot run ``model`` (None when it can)."""
    if not isinstance(model, Decoder):
        return f"the fast decode path runs a Decoder, got {type(model).__name__}"
    for i, layer in enumerate(model.layers):
        if type(layer) is not DecoderLayer:
            return f"layer {i} is a {type(layer).__name__}; the fast path runs Llama layers only"
    for i, attn in enumerate(model.attention_layers()):
        if attn.window is not None:
            return f"layer {i} has a sliding window"
        if attn.weights_hook is not None:
            return f"layer {i} has a weights_hook (the fast path computes no weights)"
        if attn.backend == "eager":
            return f"layer {i} asks for the eager attention backend"
        if attn.rope is None or attn.rope.rotary_dim != attn.head_dim:
            return f"layer {i} has no RoPE or a partial rotary dimension"
        if attn.dropout and model.training:
            return "the model is in training mode with attention dropout"
    return None


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
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if (
                isinstance(w, Tensor)
                and not isinstance(w, Int8Weight)
                and w.dtype in (torch.bfloat16, torch.float16)
                and x.dtype == w.dtype
                and x.numel() > kernels.MAX_ROWS * w.shape[1]
            ):
                bias = None if b is None else b.float()
                return F.linear(x.float(), w.float(), bias).to(x.dtype)
        return func(*args, **kwargs)


def half_gemm_as_float(dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Inside: ``F.linear`` on bfloat16/float16 inputs of more than `kernels.MAX_ROWS` rows
    widens weight and input to float32 and rounds the result back, when the CPU has no native
    bfloat16 (AVX-512 BF16/AMX): there oneDNN's bfloat16 GEMM is ~10x slower than float32's.
    Both accumulate in float32, so results agree to rounding. A no-op for float32 models."""
    if dtype not in (torch.bfloat16, torch.float16) or _native_half():
        return contextlib.nullcontext()
    return _FloatGemm()


@dataclass
class _Layer:
    attn_norm: nn.RMSNorm
    mlp_norm: nn.RMSNorm
    attn: Attention
    qkv: nn.Module
    o: nn.Module
    gate_up: nn.Module
    down: nn.Module
    d_ff: int
    runs: tuple[GroupRun, ...]  # one run when the groups are uniform
    slots: Tensor | None = None  # uneven groups: each query head's row among G x max(R) rows


def _slots(group_sizes: Sequence[int], device: torch.device) -> Tensor | None:
    """Uneven groups: the row of each query head when every group gets ``max(group_sizes)``
    query rows of its KV head (None for uniform groups)."""
    if len(set(group_sizes)) == 1:
        return None
    Rm = max(group_sizes)
    return torch.cat([g * Rm + torch.arange(r) for g, r in enumerate(group_sizes)]).to(device)


class FastDecode:
    """Batch-1 decoding of ``model`` with its own `ModelCache` of ``max_len`` positions.

    ``prefill(ids)`` runs the prompt through `Decoder.forward` (filling the cache) and returns
    the last logits ``(1, V)``; ``step(token)`` appends one token and returns its logits. Call
    both under ``torch.inference_mode()`` (`fast_stream` does).
    """

    def __init__(
        self, model: Decoder, max_len: int | None = None, use_kernels: bool = True
    ) -> None:
        issue = fast_path_issue(model)
        if issue is not None:
            raise ConfigError(f"the fast decode path cannot run this model: {issue}")
        self.model = model
        self.cache: ModelCache = model.new_cache(1, max_len)
        self.max_len = self.cache.max_len
        w = model.embed.weight
        self.dtype, self.device = w.dtype, w.device
        # bfloat16 weights go through the compiled AVX2 kernel (float32 accumulation, like
        # F.linear's); float32 ones keep F.linear, so float32 logits equal Decoder.forward's
        self._gemv = use_kernels and w.dtype == torch.bfloat16 and kernels.available()
        with torch.inference_mode():
            positions = torch.arange(self.max_len, device=self.device)
            cos, sin = model.rope.cos_sin(positions, self.dtype)  # (S_max, D) each
            half = cos.shape[-1] // 2
            # rotate_half(x) * sin == swap_halves(x) * [-sin_1 | sin_2]
            self._cos = cos
            self._sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        self._layers = [
            _Layer(
                layer.attn_norm,
                layer.mlp_norm,
                layer.attn,
                layer.attn.qkv_proj,
                layer.attn.o_proj,
                layer.mlp.gate_up,
                layer.mlp.down,
                model.config.d_ff,
                group_runs(layer.attn.group_sizes),
                _slots(layer.attn.group_sizes, self.device),
            )
            for layer in cast(list[Any], list(model.layers))
        ]

    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()

    def prefill(self, ids: Sequence[int] | Tensor) -> Tensor:
        """Run the prompt ids ``(T,)`` or ``(1, T)`` after what is cached; last logits ``(1, V)``.

        On a CPU without bfloat16 arithmetic, bfloat16 matrix products of the prompt run as
        float32 GEMMs on the widened weights (`half_gemm_as_float`).
        """
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device).reshape(1, -1)
        with half_gemm_as_float(self.dtype):
            return self.model(t, cache=self.cache, last_only=True).logits[:, -1]

    def step(self, token: int | Tensor) -> Tensor:
        """Append one token; its logits ``(1, V)``."""
        pos = self.cache.length
        if pos >= self.max_len:
            raise ShapeError(
                f"the fast decode cache is full ({self.max_len} positions); make it larger"
            )
        ids = torch.as_tensor(token, device=self.device).view(1)
        x = F.embedding(ids, self.model.embed.weight)  # (1, C)
        cos, sin = self._cos[pos], self._sin[pos]  # (D,)
        S = pos + 1
        for layer, kv in zip(self._layers, self.cache, strict=True):
            attn = layer.attn
            H, G, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
            h = F.rms_norm(
                x, layer.attn_norm.normalized_shape, layer.attn_norm.weight, layer.attn_norm.eps
            )
            qkv = self._linear(layer.qkv, h)  # (1, (H + 2G) D)
            qk = qkv[:, : (H + G) * D].view(H + G, 2, D // 2)
            swapped = qk.flip(1).view(H + G, D)
            qk = qk.view(H + G, D) * cos + swapped * sin  # RoPE on every query and key head
            kv.k[0, :, pos] = qk[H:]  # (G, D)
            kv.v[0, :, pos] = qkv[:, (H + G) * D :].view(G, D)
            kv.length = S
            if len(layer.runs) == 1:
                q = qk[:H].view(1, G, H // G, D)  # the R query heads of a group as rows
                y = self._attend(q, kv.k[:, :, :S], kv.v[:, :, :S], attn.scale)  # (1, G, R, D)
            else:  # uneven groups: one call, each group's heads in max(R) rows, spare rows zero
                assert layer.slots is not None
                Rm = max(attn.group_sizes)
                qp = qk.new_zeros(G * Rm, D).index_copy_(0, layer.slots, qk[:H])  # (G*Rm, D)
                y = self._attend(qp.view(1, G, Rm, D), kv.k[:, :, :S], kv.v[:, :, :S], attn.scale)
                y = y.view(G * Rm, D).index_select(0, layer.slots)  # (H, D)
            y = y.view(1, H, D)
            if attn.head_gate is not None:
                y = y * attn.head_gate.view(1, H, 1).to(y.dtype)
            x = x + self._linear(layer.o, y.view(1, H * D))
            h = F.rms_norm(
                x, layer.mlp_norm.normalized_shape, layer.mlp_norm.weight, layer.mlp_norm.eps
            )
            gu = self._linear(layer.gate_up, h)  # (1, 2F)
            x = x + self._linear(layer.down, F.silu(gu[:, : layer.d_ff]) * gu[:, layer.d_ff :])
        norm = self.model.norm
        h = F.rms_norm(x, norm.normalized_shape, norm.weight, norm.eps)
        out = self.model.output_weight
        if self._gemv and out.dtype == torch.bfloat16 and not isinstance(out, Int8Weight):
            return kernels.gemv(h, out)
        return F.linear(h, out)  # (1, V)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """``softmax(q k^T * scale) v`` for ``q (1, G, R, D)`` against ``k, v (1, G, S, D)``.

        Up to `EAGER_MAX_KEYS` keys: matmul, softmax (float32), matmul, which costs a few
        microseconds. SDPA's flash kernel costs milliseconds per call at this size on the
        project's 2-core machine (see ``benchmarks/models.md``), so it serves long caches only.
        """
        if k.shape[2] > EAGER_MAX_KEYS:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (1, G, R, S)
        return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)

    def _linear(self, mod: nn.Module, x: Tensor) -> Tensor:
        if self._gemv and type(mod) is nn.Linear:
            w = mod.weight
            if w.dtype == torch.bfloat16:
                y = kernels.gemv(x, w)
                return y if mod.bias is None else y + mod.bias
        return mod(x)


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
    """Yield up to ``max_new_tokens`` new ids (greedy at ``temperature=0``), stopping after an id
    in ``stop`` (default: the checkpoint's end-of-sequence ids; ``[]`` for none)."""
    prompt = [int(i) for i in torch.as_tensor(prompt_ids).flatten().tolist()]
    if not prompt:
        raise ShapeError("the prompt is empty; give at least one token")
    model._check_ids(torch.tensor([prompt]))
    n_new = min(max_new_tokens, model.max_len - len(prompt))
    if n_new <= 0:
        return
    stop_ids = set(model.config.eos_token_ids if stop is None else stop)
    gen = None
    if seed is not None:
        gen = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    with torch.inference_mode():
        run = FastDecode(model, len(prompt) + n_new)
        logits = run.prefill(prompt)
        for i in range(n_new):
            token = int(sample_next(logits, temperature, top_k, top_p, gen))
            yield token
            if token in stop_ids or i == n_new - 1:
                return
            logits = run.step(token)


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
