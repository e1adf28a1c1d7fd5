"""One attention module for MHA, GQA and MQA.

Legend: B batch, T query positions, S key positions, C model dim, H query heads, G KV heads,
R = H // G query heads per KV head (or ``group_sizes[g]`` when groups differ), D head dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headcount import kernels
from headcount.errors import ConfigError, DTypeError, ShapeError
from headcount.nn.calls import bare
from headcount.nn.functional import causal_mask, eager_attention, sdpa_attention
from headcount.nn.kv_cache import KVCache
from headcount.nn.linear import Linear
from headcount.nn.rope import RoPE

Backend = Literal["auto", "sdpa", "eager"]
WeightsHook = Callable[[Tensor], None]


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def _group_sizes(H: int, G: int, group_sizes: Sequence[int] | None) -> tuple[int, ...]:
    """Query heads per KV head: ``(H // G,) * G`` by default, else ``group_sizes`` checked."""
    if group_sizes is None:
        if H % G:
            raise ConfigError(f"n_heads={H} is not a multiple of n_kv_heads={G}")
        return (H // G,) * G
    sizes = tuple(group_sizes)
    if (
        len(sizes) != G
        or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in sizes)
        or sum(sizes) != H
    ):
        raise ConfigError(
            f"group_sizes={sizes} must be n_kv_heads={G} positive integers summing to n_heads={H}"
        )
    return sizes


def key_padding_mask(attention_mask: Tensor) -> Tensor:
    """``attention_mask (B, S)`` of 1/True (real key) and 0/False (padding) as bool.

    Any other value (an additive mask of 0 / -inf, say, which would read inverted) raises
    `ShapeError`: pass additive masks as ``attn_mask``.
    """
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.is_complex() or not bool(
        ((attention_mask == 0) | (attention_mask == 1)).all()
    ):
        raise ShapeError(
            "attention_mask must hold 1/True for real tokens and 0/False for padding "
            f"({attention_mask.dtype} with other values given); pass an additive mask as "
            "attn_mask (0 / -inf, to Attention)"
        )
    return attention_mask != 0


class Attention(nn.Module):
    """Multi-head attention with ``n_kv_heads`` KV heads: MHA (= n_heads), GQA, or MQA (= 1).

    Query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``; ``group_sizes`` (G entries
    summing to H, as head pruning leaves them) gives groups of different sizes instead, the query
    heads of a group still contiguous: ``(2, 3, 1)`` maps heads 0-1, 2-4, 5 to KV heads 0, 1, 2.
    ``qkv_proj`` is one fused
    ``Linear(C, (H + 2G) * D)`` whose output features are ordered [Q heads | K heads | V heads],
    each block head by head; ``o_proj`` is ``Linear(H * D, C)``.

    Optional parts: ``rope`` (a `RoPE`, applied to Q and K at absolute positions), ``head_gate``
    (a ``(H,)`` tensor multiplying each head's output before ``o_proj``; None means all ones),
    ``weights_hook`` (called with the weights ``(B, H, T, S)`` on every forward, for analysis),
    ``window`` (sliding-window attention: the query at position p sees keys p-W+1 .. p only, as in
    Mistral and Gemma's local layers; None attends to every key). A `KVCache` built with the same
    ``window`` holds only the last W positions. ``q_norm`` / ``k_norm``: modules applied to each
    query / key head ``(..., D)`` before RoPE (Gemma 3's per-head RMSNorm).
    """

    head_gate: Tensor | None

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        rope: RoPE | None = None,
        scale: float | None = None,
        *,
        o_bias: bool | None = None,
        group_sizes: Sequence[int] | None = None,
        window: int | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.window = None if window is None else _positive("window", window)
        _positive("d_model", d_model)
        _positive("n_heads", n_heads)
        n_kv_heads = n_heads if n_kv_heads is None else _positive("n_kv_heads", n_kv_heads)
        self.group_sizes = _group_sizes(n_heads, n_kv_heads, group_sizes)
        if head_dim is None:
            if d_model % n_heads:
                raise ConfigError(
                    f"d_model={d_model} is not divisible by n_heads={n_heads}; pass head_dim explicitly"
                )
            head_dim = d_model // n_heads
        _positive("head_dim", head_dim)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if rope is not None and rope.head_dim != head_dim:
            raise ConfigError(
                f"rope was built for head_dim={rope.head_dim}, attention has head_dim={head_dim}"
            )
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = (
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
        )
        self.dropout = dropout
        self.scale = head_dim**-0.5 if scale is None else float(scale)
        H, G, D = n_heads, n_kv_heads, head_dim
        kw = {"device": device, "dtype": dtype}
        self.qkv_proj = Linear(d_model, (H + 2 * G) * D, bias=bias, **kw)
        self.o_proj = Linear(H * D, d_model, bias=bias if o_bias is None else o_bias, **kw)
        self.rope = rope
        self.q_norm, self.k_norm = q_norm, k_norm
        self.register_buffer("head_gate", None, persistent=False)
        self.weights_hook: WeightsHook | None = None
        self.backend: Backend = "auto"

    # ----------------------------------------------------------------- per-head weight views
    @property
    def uniform_groups(self) -> bool:
        """Whether every KV head is read by the same number of query heads."""
        return len(set(self.group_sizes)) == 1

    @property
    def group_size(self) -> int:
        """Query heads per KV head, R = H // G; a `ConfigError` when groups differ in size."""
        if not self.uniform_groups:
            raise ConfigError(
                f"groups differ in size (group_sizes={self.group_sizes}); use group_sizes or kv_head_of"
            )
        return self.group_sizes[0]

    def kv_head_of(self, h: int) -> int:
        """The KV head that query head ``h`` reads."""
        if not 0 <= h < self.n_heads:
            raise ShapeError(f"query head {h} is outside 0..{self.n_heads - 1}")
        for g, r in enumerate(self.group_sizes):
            if h < r:
                return g
            h -= r
        raise AssertionError("group_sizes do not sum to n_heads")  # checked in __init__

    def _block(self, start: int, n: int) -> Tensor:
        D, C = self.head_dim, self.d_model
        w = self.qkv_proj.weight[start * D : (start + n) * D]  # (n*D, C)
        return w.view(n, D, C).transpose(1, 2)  # (n, C, D)

    @property
    def W_Q(self) -> Tensor:
        """Query weights per head, ``(H, C, D)``: ``q_h = x @ W_Q[h]`` (a view, no copy)."""
        return self._block(0, self.n_heads)

    @property
    def W_K(self) -> Tensor:
        """Key weights per KV head, ``(G, C, D)``."""
        return self._block(self.n_heads, self.n_kv_heads)

    @property
    def W_V(self) -> Tensor:
        """Value weights per KV head, ``(G, C, D)``."""
        return self._block(self.n_heads + self.n_kv_heads, self.n_kv_heads)

    @property
    def W_O(self) -> Tensor:
        """Output weights per head, ``(H, D, C)``: ``out = sum_h z_h @ W_O[h]``."""
        return self.o_proj.weight.view(self.d_model, self.n_heads, self.head_dim).permute(1, 2, 0)

    @torch.no_grad()
    def load_projections(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        o: Tensor,
        q_bias: Tensor | None = None,
        k_bias: Tensor | None = None,
        v_bias: Tensor | None = None,
        o_bias: Tensor | None = None,
    ) -> None:
        """Copy separate ``nn.Linear``-layout weights (``(out, in)``) into the fused projection."""
        H, G, D, C = self.n_heads, self.n_kv_heads, self.head_dim, self.d_model
        for name, t, shape in (
            ("q", q, (H * D, C)),
            ("k", k, (G * D, C)),
            ("v", v, (G * D, C)),
            ("o", o, (C, H * D)),
        ):
            if tuple(t.shape) != shape:
                raise ShapeError(f"{name} weight must be {shape}, got {tuple(t.shape)}")
        self.qkv_proj.weight.copy_(torch.cat([q, k, v], dim=0))
        self.o_proj.weight.copy_(o)
        biases = (q_bias, k_bias, v_bias)
        if self.qkv_proj.bias is not None:
            if any(b is None for b in biases):
                raise ShapeError("this attention has a qkv bias: pass q_bias, k_bias and v_bias")
            self.qkv_proj.bias.copy_(torch.cat(biases, dim=0))  # type: ignore[arg-type]
        elif any(b is not None for b in biases):
            raise ShapeError("this attention was built with bias=False but biases were given")
        if self.o_proj.bias is not None:
            if o_bias is None:
                raise ShapeError("this attention has an output bias: pass o_bias")
            self.o_proj.bias.copy_(o_bias)
        elif o_bias is not None:
            raise ShapeError("this attention has no output bias but o_bias was given")

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        causal: bool = False,
        attention_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x (B, T, C)`` to itself, or to ``context (B, S, C)`` (cross-attention).

        ``attention_mask (B, S)``: True/1 for real keys (HuggingFace convention), over every key
        including cached ones. ``attn_mask``: broadcasts to ``(B, H, T, S)``, bool (True = may
        attend) or additive float. ``cache``: new K/V are appended and the queries read every
        cached position; with ``context`` the cache is filled once and reused. ``positions``:
        absolute positions ``(T,)`` or ``(B, T)`` for RoPE (default: after the cached ones).
        A query whose keys are all masked outputs zeros. Returns ``y (B, T, C)``, or
        ``(y, weights (B, H, T, S))`` with ``return_weights=True``.
        """
        B, T = self._check_input("x", x)
        if (
            T == 1
            and context is None
            and attention_mask is None
            and attn_mask is None
            and positions is None
            and not return_weights
            and self.weights_hook is None
            and self.backend != "eager"
            and not (self.training and self.dropout)
            and (cache is None or cache.window == self.window)
        ):
            rope = self._modules.get("rope")  # a plain dict: cheaper than nn.Module's lookup
            if rope is None or rope.rotary_dim == self.head_dim:
                return self._step(x, cache)
        H, D = self.n_heads, self.head_dim
        if self.window is not None and context is not None:
            raise ConfigError("a sliding window applies to self-attention, not to a context")
        if cache is not None and cache.window is not None and self.window is not None:
            past = cache.length
            S_keys, S_attn = past + T, min(past, self.window - 1) + T  # the ring's keys
        elif context is None:
            S_keys = S_attn = (cache.length if cache is not None else 0) + T
        else:
            S_keys = S_attn = (
                cache.length if cache is not None and cache.length else context.shape[1]
            )
        attention_mask = self._check_masks(B, T, S_keys, S_attn, causal, attention_mask, attn_mask)
        q, k, v = self._project(x, context, cache)  # (B, H, T, D), (B, G, S_new, D) x2
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        past = cache.length if cache is not None else 0
        if self.rope is not None and context is None:
            if positions is None:
                positions = torch.arange(past, past + T, device=x.device)
            q, k = self.rope(q, positions), self.rope(k, positions)
        need_weights = return_weights or self.weights_hook is not None or self.backend == "eager"
        band = None
        if cache is not None and cache.window is not None:
            k, v, band, attention_mask = self._ring(k, v, cache, attention_mask, need_weights)
        elif cache is not None:
            if context is None or cache.length == 0:
                k, v = cache.append(k, v)  # views of everything cached, (B, G, S, D)
            else:
                k, v = cache.k[:, :, : cache.length], cache.v[:, :, : cache.length]
        S = k.shape[2]
        if self.window is not None and band is None and k.shape[2] > self.window:
            band = self._band(torch.arange(S - T, S, device=x.device), 0, S)
        mask, is_causal, valid = self._mask(B, T, S, causal, attention_mask, attn_mask, x, band)
        dropout_p = self.dropout if self.training else 0.0
        sizes = None if self.uniform_groups else self.group_sizes  # uneven: one call per run
        weights = None
        if need_weights:
            y, weights = eager_attention(
                q,
                k,
                v,
                mask,
                is_causal=is_causal,
                scale=self.scale,
                dropout_p=dropout_p,
                group_sizes=sizes,
            )
        else:
            y = sdpa_attention(
                q,
                k,
                v,
                mask,
                is_causal=is_causal,
                scale=self.scale,
                dropout_p=dropout_p,
                group_sizes=sizes,
            )
        if valid is not None:  # rows with no visible key: zeros, not NaN or uniform weights
            y = y * valid
            weights = weights * valid if weights is not None else None
        if weights is not None and self.weights_hook is not None:
            self.weights_hook(weights)
        if self.head_gate is not None:
            y = y * self.head_gate.view(1, H, 1, 1).to(y.dtype)
        out = self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))  # (B, T, C)
        return (out, weights) if return_weights else out  # type: ignore[return-value]

    def _step(self, x: Tensor, cache: KVCache | None) -> Tensor:
        """One new position per row, ``x (B, 1, C) -> (B, 1, C)``, after the ``cache.length``
        cached ones, attending to all of them (the causal decode step; `forward` takes this
        path whenever there is no mask, no weights and no explicit positions).

        The fused projection, per-head norms, RoPE on the query and key heads together (one
        matrix product with the position's `RoPE.rotation`), the new key and value written into
        the cache (KV heads only; a sliding-window layer's ring holds exactly its window), the R
        query heads of each group folded into query rows against ``(B, G, S, D)``
        (`sdpa_attention`; uneven groups: each group padded to max(R) rows, one call), the head
        gate, ``o_proj``. Submodules are read from ``_modules``, a plain dict: nn.Module's
        attribute lookup costs about 1 µs each, as much as a small op.
        """
        B = x.shape[0]
        H, G, D = self.n_heads, self.n_kv_heads, self.head_dim
        mods = self._modules
        qkv = bare(mods["qkv_proj"])(x).view(B, H + 2 * G, D)  # [Q heads | K heads | V heads]
        q_norm, k_norm = mods.get("q_norm"), mods.get("k_norm")  # None: never set as modules
        if cache is not None and kernels.fusable(qkv):
            y = self._step_kernel(qkv, cache, q_norm, k_norm)
            if y is not None:
                return bare(mods["o_proj"])(y)  # (B, 1, C)
        qk, v = qkv.split_with_sizes((H + G, G), dim=1)  # (B, H + G, D), (B, G, D)
        if q_norm is not None or k_norm is not None:
            q, k = qk.split_with_sizes((H, G), dim=1)
            qk = torch.cat(
                (
                    q if q_norm is None else bare(q_norm)(q),
                    k if k_norm is None else bare(k_norm)(k),
                ),
                1,
            )
        past = 0 if cache is None else cache.length
        rope = mods.get("rope")
        if rope is not None:
            qk = rope.rotate_at(qk, past)  # type: ignore[operator]
        q, k = qk.split_with_sizes((H, G), dim=1)  # (B, H, D), (B, G, D)
        if cache is not None:
            k, v = cache.append_position(k, v)  # (B, G, S, D): views of the cache
        else:
            k, v = k.unsqueeze(2), v.unsqueeze(2)  # (B, G, 1, D)
        if self.uniform_groups:  # the R query heads of a group as R query rows
            y = F.scaled_dot_product_attention(q.view(B, G, H // G, D), k, v, scale=self.scale)
        else:
            y = sdpa_attention(
                q.unsqueeze(2),
                k,
                v,
                None,
                is_causal=False,
                scale=self.scale,
                group_sizes=self.group_sizes,
            )  # (B, H, 1, D)
        gate = self._buffers["head_gate"]
        if gate is not None:
            y = y.reshape(B, H, D) * gate.view(1, H, 1).to(y.dtype)
        return bare(mods["o_proj"])(y.reshape(B, 1, H * D))  # (B, 1, C)

    def _step_kernel(
        self, qkv: Tensor, cache: KVCache, q_norm: nn.Module | None, k_norm: nn.Module | None
    ) -> Tensor | None:
        """`_step` from the fused projection ``qkv (B, H + 2G, D)`` to o_proj's input ``(B, 1,
        H * D)`` in one compiled op (``headcount::decode_attention``: RoPE, the cache write and
        the grouped attention; ~13 dispatches fewer a layer), or None when the cache cannot take
        the position here (the op-by-op path then raises, naming the problem)."""
        rope = self._modules.get("rope")
        if rope is not None and type(rope) is not RoPE:
            return None  # a RoPE subclass may rotate otherwise: the op-by-op path calls it
        B, _, D = qkv.shape
        H, G = self.n_heads, self.n_kv_heads
        if q_norm is not None or k_norm is not None:
            q, k, v = qkv.split_with_sizes((H, G, G), dim=1)
            q = q if q_norm is None else bare(q_norm)(q)
            k = k if k_norm is None else bare(k_norm)(k)
            qkv = torch.cat((q, k, v), 1)
        past = cache.length
        cos = signed_sin = None
        if rope is not None:
            cos, _, signed_sin = rope.table(past + 1, qkv.dtype, qkv.device)
        taken = cache.take_position(B, G, D, qkv.dtype)
        if taken is None:
            return None
        buffers = cache._buffers  # plain dict: no nn.Module lookup
        try:  # the op checks every argument before it writes anything
            y = kernels.direct().decode_attention(
                qkv,
                cos,
                signed_sin,
                past,
                buffers["k"],
                buffers["v"],
                taken[0],
                taken[1],
                self.scale,
                self.group_sizes,
            )  # (B, 1, H * D)
        except BaseException:
            object.__setattr__(cache, "length", past)  # the position was not written: not counted
            raise
        gate = self._buffers["head_gate"]
        if gate is not None:
            y = (y.view(B, H, D) * gate.view(1, H, 1).to(y.dtype)).view(B, 1, H * D)
        return y

    def _band(self, qpos: Tensor, k0: int, k1: int) -> Tensor:
        """``(T, S)`` bool: key at absolute position ``k0 .. k1-1`` is at most W-1 before the query."""
        assert self.window is not None
        kpos = torch.arange(k0, k1, device=qpos.device)
        return kpos[None, :] > qpos[:, None] - self.window  # (T, S)

    def _ring(
        self,
        k: Tensor,
        v: Tensor,
        cache: KVCache,
        attention_mask: Tensor | None,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Attend through a windowed (ring) cache. Returns the keys and values to attend to, the
        band mask ``(T, S)`` (None when every key is inside the window) and ``attention_mask``
        restricted to those keys.

        One new query without weights reads the ring in place: after writing position p into
        slot p % W, the ring holds exactly positions p-W+1 .. p. Otherwise the last W-1 cached
        positions are copied in order in front of the new ones (prefill, chunks, weights).
        """
        if self.window is None or cache.window is None or cache.window < self.window:
            raise ConfigError(
                f"a KVCache with window={cache.window} cannot serve attention with window={self.window}"
            )
        T = k.shape[2]
        past = cache.length  # the masks were checked against it before anything was written
        if T == 1 and not need_weights and cache.window == self.window:
            k, v = cache.append(k, v)  # (B, G, held, D): the window, in slot order
            if attention_mask is not None:
                attention_mask = attention_mask[:, cache.positions(k.device)]
            return k, v, None, attention_mask
        old_k, old_v = cache.recent(self.window - 1)
        n_old = old_k.shape[2]
        k_all, v_all = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)  # (B, G, S, D)
        cache.append(k, v)
        if attention_mask is not None:
            attention_mask = attention_mask[:, past - n_old :]
        if past + T <= self.window:  # every key is inside every query's window
            return k_all, v_all, None, attention_mask
        qpos = torch.arange(past, past + T, device=k.device)
        return k_all, v_all, self._band(qpos, past - n_old, past + T), attention_mask

    def _check_input(self, name: str, t: Tensor) -> tuple[int, int]:
        if t.ndim != 3 or t.shape[-1] != self.d_model:
            raise ShapeError(f"{name} must be (B, T, d_model={self.d_model}), got {tuple(t.shape)}")
        w_dtype = self._modules["qkv_proj"].weight.dtype  # type: ignore[union-attr]
        if t.dtype != w_dtype:
            raise DTypeError(f"{name} is {t.dtype} but the attention weights are {w_dtype}")
        return t.shape[0], t.shape[1]

    def _project(
        self, x: Tensor, context: Tensor | None, cache: KVCache | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        H, G, D = self.n_heads, self.n_kv_heads, self.head_dim
        if context is None:
            q, k, v = self.qkv_proj(x).split([H * D, G * D, G * D], dim=-1)
            S = T
        else:
            Bc, S = self._check_input("context", context)
            if Bc != B:
                raise ShapeError(f"context batch {Bc} != x batch {B}")
            if cache is not None and cache.length and cache.length != S:
                raise ShapeError(
                    f"cross-attention cache holds {cache.length} positions, context has {S}"
                )
            w, b = self.qkv_proj.weight, self.qkv_proj.bias
            q = nn.functional.linear(x, w[: H * D], None if b is None else b[: H * D])
            kv = nn.functional.linear(context, w[H * D :], None if b is None else b[H * D :])
            k, v = kv.split([G * D, G * D], dim=-1)
        if cache is not None:
            cache.check_compatible(B, G, D, x.dtype)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, S, G, D).transpose(1, 2)  # (B, G, S, D)
        v = v.view(B, S, G, D).transpose(1, 2)  # (B, G, S, D)
        return q, k, v

    def _check_masks(
        self,
        B: int,
        T: int,
        S_keys: int,
        S_attn: int,
        causal: bool,
        attention_mask: Tensor | None,
        attn_mask: Tensor | None,
    ) -> Tensor | None:
        """Check the masks against the keys the queries will see, before anything is written
        to a cache (a failed call leaves the cache as it was). ``S_keys``: every key including
        cached ones (what ``attention_mask`` spans); ``S_attn``: the keys attended (what
        ``attn_mask`` spans; fewer through a sliding-window ring). Returns ``attention_mask``
        as bool."""
        H = self.n_heads
        if causal and S_attn < T:
            raise ShapeError(f"causal attention with {T} queries but only {S_attn} keys")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, S_keys):
                raise ShapeError(
                    f"attention_mask must be (B, S) = ({B}, {S_keys}) over all keys (cached ones "
                    f"included), got {tuple(attention_mask.shape)}"
                )
            attention_mask = key_padding_mask(attention_mask)
        if attn_mask is not None:
            if not (2 <= attn_mask.ndim <= 4) or any(
                m not in (1, n)
                for m, n in zip(attn_mask.shape[::-1], (S_attn, T, H, B), strict=False)
            ):
                raise ShapeError(
                    f"attn_mask {tuple(attn_mask.shape)} does not broadcast to (B, H, T, S) = "
                    f"{(B, H, T, S_attn)}"
                )
            if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
                raise DTypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
        return attention_mask

    def _mask(
        self,
        B: int,
        T: int,
        S: int,
        causal: bool,
        attention_mask: Tensor | None,
        attn_mask: Tensor | None,
        x: Tensor,
        band: Tensor | None = None,
    ) -> tuple[Tensor | None, bool, Tensor | None]:
        """Combine the masks into one broadcastable to ``(B, H, T, S)``.

        Returns ``(mask, is_causal, valid)``: ``is_causal`` asks the kernel for a plain causal
        mask (no other mask, T == S); ``valid (B|1, H|1, T, 1)`` marks rows that see at least one
        key, or is None when every row does. Rows that see none are unmasked so the kernel gives
        no NaN, and zeroed afterwards with ``valid``. ``band (T, S)``: the sliding window.
        """
        parts_bool: list[Tensor] = [] if band is None else [band[None, None]]
        if causal:
            if T == S and attention_mask is None and attn_mask is None and band is None:
                return None, True, None
            if T > 1:  # with T == 1 the newest query sees every cached key
                parts_bool.append(causal_mask(T, S, x.device)[None, None])  # (1, 1, T, S)
        if attention_mask is not None:  # checked by _check_masks, bool
            parts_bool.append(attention_mask[:, None, None, :])  # (B, 1, 1, S)
        additive = None
        if attn_mask is not None:  # checked by _check_masks
            am = attn_mask.reshape((1,) * (4 - attn_mask.ndim) + tuple(attn_mask.shape))
            if am.dtype == torch.bool:
                parts_bool.append(am)
            else:
                additive = am.to(x.dtype)
        if not parts_bool and additive is None:
            return None, False, None
        allowed = None
        for p in parts_bool:
            allowed = p if allowed is None else allowed & p
        if additive is not None:
            blocked = torch.isneginf(additive)
            allowed = ~blocked if allowed is None else allowed & ~blocked
        assert allowed is not None
        valid = allowed.any(dim=-1, keepdim=True)  # (b, h, T, 1)
        if bool(valid.all()):
            valid_out = None
        else:
            allowed = allowed | ~valid
            valid_out = valid.to(x.dtype)
        if additive is None:
            return allowed, False, valid_out
        mask = additive.masked_fill(~allowed, float("-inf"))
        if valid_out is not None:
            mask = mask.masked_fill(~valid, 0.0)
        return mask, False, valid_out

    def extra_repr(self) -> str:
        groups = "" if self.uniform_groups else f", group_sizes={self.group_sizes}"
        window = "" if self.window is None else f", window={self.window}"
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, dropout={self.dropout}{groups}{window}"
        )
