"""Llama-family decoder built from `headcount.nn.Attention`: pre-RMSNorm, SwiGLU, RoPE.

Legend: B batch, T new positions, S key positions (cached + new), C model dim, F MLP width,
V vocabulary, L layers, H query heads, G KV heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from headcount import kernels
from headcount.errors import ShapeError
from headcount.loaders.config import DecoderConfig
from headcount.models.base import TextModel
from headcount.models.cache import ModelCache
from headcount.nn import Attention, Linear, RMSNorm, RoPE, key_padding_mask, linear
from headcount.nn.calls import bare


@dataclass
class DecoderOutput:
    logits: Tensor  # (B, T, V), or (B, 1, V) with last_only
    attentions: tuple[Tensor, ...] | None = None  # one (B, H_l, T, S) per layer when asked


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one ``Linear(C, 2F)``."""

    def __init__(self, d_model: int, d_ff: int, device: Any = None) -> None:
        super().__init__()
        self.gate_up = Linear(d_model, 2 * d_ff, bias=False, device=device)  # rows [gate | up]
        self.down = Linear(d_ff, d_model, bias=False, device=device)

    def forward(self, x: Tensor) -> Tensor:
        mods = self._modules  # a plain dict: nn.Module's attribute lookup costs ~1 µs each
        h = bare(mods["gate_up"])(x)  # (B, T, 2F)
        if kernels.fusable(h):
            return bare(mods["down"])(kernels.direct().silu_mul(h))  # one op for the three
        gate, up = h.chunk(2, dim=-1)  # (B, T, F) each
        return bare(mods["down"])(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    attn_norm: nn.Module  # Llama: RMSNorm; Gemma 3 (a subclass): (1 + w) RMSNorm, GeGLU MLP
    mlp_norm: nn.Module
    mlp: nn.Module

    def __init__(self, cfg: DecoderConfig, i: int, rope: RoPE, device: Any = None) -> None:
        super().__init__()
        C = cfg.d_model
        self.attn_norm = RMSNorm(C, eps=cfg.norm_eps, device=device)
        self.attn = Attention(
            C,
            cfg.n_heads[i],  # type: ignore[index]
            cfg.n_kv_heads[i],  # type: ignore[index]
            cfg.head_dim,
            bias=cfg.qkv_bias,
            o_bias=cfg.o_bias,
            rope=rope,
            group_sizes=cfg.layer_group_sizes(i),
            device=device,
        )
        self.mlp_norm = RMSNorm(C, eps=cfg.norm_eps, device=device)
        self.mlp = SwiGLU(C, cfg.d_ff, device=device)
        # Llama has no norms after the blocks; Gemma's layer sets real ones and reuses `forward`
        self.post_attn_norm: nn.Module = nn.Identity()
        self.post_mlp_norm: nn.Module = nn.Identity()

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None,
        cache: Any,
        positions: Tensor | None,
        return_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        mods = self._modules  # a plain dict: nn.Module's attribute lookup costs ~1 µs each
        h = bare(mods["attn_norm"])(x)
        attn = bare(mods["attn"])
        if attention_mask is None and positions is None and not return_weights:
            out = attn(h, causal=True, cache=cache)  # fewer keywords: a decode step
        else:
            out = attn(
                h,
                causal=True,
                attention_mask=attention_mask,
                cache=cache,
                positions=positions,
                return_weights=return_weights,
            )
        weights = None
        if return_weights:
            out, weights = out
        post_attn_norm = mods["post_attn_norm"]
        mlp, mlp_norm = bare(mods["mlp"]), bare(mods["mlp_norm"])
        if type(post_attn_norm) is nn.Identity:  # Llama: no norms after the blocks
            x = x + out
            return x + mlp(mlp_norm(x)), weights
        x = x + bare(post_attn_norm)(out)
        return x + bare(mods["post_mlp_norm"])(mlp(mlp_norm(x))), weights


class Decoder(TextModel):
    """A causal language model. ``model(input_ids) -> DecoderOutput(logits (B, T, V))``.

    Embeddings are tied to the output projection when ``config.tie_embeddings`` (no ``lm_head``
    then). All layers share one `RoPE`. ``device="meta"`` builds without allocating (for loading).
    """

    def __init__(self, config: DecoderConfig, device: Any = None) -> None:
        super().__init__()
        self.config = config
        C = config.d_model
        self.embed = nn.Embedding(config.vocab_size, C, device=device)
        self.rope = RoPE(config.head_dim, base=config.rope_base)  # buffers only: always real
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, self.rope, device) for i in range(config.n_layers)
        )
        self.norm = RMSNorm(C, eps=config.norm_eps, device=device)
        self.lm_head = (
            None
            if config.tie_embeddings
            else Linear(C, config.vocab_size, bias=False, device=device)
        )

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """``(B, T) -> (B, T, C)``: the input embeddings."""
        return self.embed(input_ids)

    @property
    def output_weight(self) -> Tensor:
        """``(V, C)``: the embedding matrix when tied, else ``lm_head.weight``."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: ModelCache | None = None,
        return_weights: bool = False,
        *,
        positions: Tensor | None = None,
        last_only: bool = False,
    ) -> DecoderOutput:
        """Logits of the next token at every position of ``input_ids (B, T)``.

        ``attention_mask (B, S)``: 1 for real tokens, 0 for padding, over cached and new positions;
        positions then count real tokens only, so a left-padded row gives the logits of the
        unpadded one. ``cache``: from `new_cache`; new keys/values are appended. ``last_only``:
        logits of the last position only ``(B, 1, V)``, as generation needs.
        """
        past = cache.length if cache is not None else 0
        B, T = self._check_ids(input_ids, past)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, past + T):
                raise ShapeError(
                    f"attention_mask must be (B, cached + new) = ({B}, {past + T}), got {tuple(attention_mask.shape)}"
                )
            attention_mask = key_padding_mask(attention_mask)  # refuses additive masks
            if positions is None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)[:, past:]  # (B, T)
        x = self.embed_tokens(input_ids)  # (B, T, C)
        attentions: list[Tensor] = []
        caches = [None] * len(self.layers) if cache is None else cache.layers
        for layer, layer_cache in zip(self.layers, caches, strict=True):
            x, w = bare(layer)(x, attention_mask, layer_cache, positions, return_weights)
            if w is not None:
                attentions.append(w)
        if last_only and T > 1:
            x = x[:, -1:]
        logits = linear(bare(self.norm)(x), self.output_weight)  # (B, T, V)
        return DecoderOutput(logits, tuple(attentions) if return_weights else None)

    # ----------------------------------------------------------------------------- generation
    def stream(
        self,
        prompt_or_ids: str | Sequence[int] | Tensor,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: Sequence[int | str] | None = None,
        seed: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[int]:
        """Yield new token ids one by one (see `generate`)."""
        from headcount.models.generation import stream

        return stream(
            self, prompt_or_ids, max_new_tokens, temperature, top_k, top_p, stop, seed, use_cache
        )

    def generate(
        self,
        prompt_or_ids: str | Sequence[int] | Tensor | Sequence[str | Sequence[int]],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: Sequence[int | str] | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        on_token: Callable[[int], None] | None = None,
    ) -> Any:
        """Decode up to ``max_new_tokens`` after a prompt (text or ids); returns a `Generation`.

        ``temperature=0`` is greedy; otherwise sample from ``softmax(logits / temperature)``
        restricted to the ``top_k`` most likely tokens and the ``top_p`` nucleus. ``stop``: token
        ids and/or strings that end generation (default: the checkpoint's end-of-sequence ids).
        ``on_token(id)`` is called as each token is produced. ``use_cache=False`` recomputes the
        whole sequence every step (a reference for the cache).

        Several prompts (a list of texts or of id lists, or ids ``(B, T)``) decode as one
        left-padded batch and give a list of `Generation`, each row's greedy tokens those of
        its prompt alone.
        """
        from headcount.models.generation import generate

        return generate(
            self,
            prompt_or_ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            stop,
            seed,
            use_cache,
            on_token,
        )
