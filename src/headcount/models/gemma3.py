"""Gemma 3 text decoder on `headcount.nn.Attention`: MQA/GQA, sliding-window and global layers.

What differs from the Llama layer (`headcount.models.decoder.DecoderLayer`), and nothing else:

* RMSNorm scales by ``1 + w`` (weights stored as offsets from one), computed in float32;
* four norms per layer: before and after attention, before and after the MLP;
* per-head RMSNorm on queries and keys before RoPE (``Attention(q_norm=, k_norm=)``);
* scores scale by ``query_pre_attn_scalar ** -0.5``;
* GeGLU MLP (tanh-approximated GELU on the gate);
* input embeddings multiplied by ``sqrt(d_model)`` (rounded to the model's dtype, as in HF);
* sliding layers use a window and RoPE base ``rope_local_base``, global layers ``rope_base``.

`Gemma3Decoder` subclasses `Decoder`, so forward, generation, caches, perplexity, analysis and
the CLI are shared; only the layer and the embedding scale live here.

Legend: B batch, T new positions, C model dim, F MLP width, H query heads, G KV heads, D head dim.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headcount.errors import ConfigError
from headcount.loaders.config import DecoderConfig
from headcount.models.base import TextModel
from headcount.models.decoder import Decoder, DecoderLayer
from headcount.nn import Attention, Linear, RoPE, rms_normalize
from headcount.nn.calls import bare


class GemmaRMSNorm(nn.Module):
    """``x / rms(x) * (1 + w)`` in float32, cast back to ``x``'s dtype; ``w`` starts at zero."""

    def __init__(self, dim: int, eps: float = 1e-6, device: Any = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, device=device))

    def forward(self, x: Tensor) -> Tensor:
        h = rms_normalize(x, self.eps)  # float32 at least
        h = h * (1.0 + self.weight.float())
        return h if h.dtype == x.dtype else h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GeGLU(nn.Module):
    """``down(gelu_tanh(gate(x)) * up(x))`` with gate and up fused into one ``Linear(C, 2F)``."""

    def __init__(self, d_model: int, d_ff: int, device: Any = None) -> None:
        super().__init__()
        self.gate_up = Linear(d_model, 2 * d_ff, bias=False, device=device)  # rows [gate | up]
        self.down = Linear(d_ff, d_model, bias=False, device=device)

    def forward(self, x: Tensor) -> Tensor:
        mods = self._modules  # a plain dict: nn.Module's attribute lookup costs ~1 µs each
        gate, up = bare(mods["gate_up"])(x).chunk(2, dim=-1)  # (B, T, F) each
        return bare(mods["down"])(F.gelu(gate, approximate="tanh") * up)


class Gemma3Layer(DecoderLayer):
    """``x + post_attn_norm(attn(attn_norm(x)))``, then ``x + post_mlp_norm(mlp(mlp_norm(x)))``."""

    def __init__(self, cfg: DecoderConfig, i: int, rope: RoPE, device: Any = None) -> None:
        nn.Module.__init__(self)  # its own modules; `forward` is DecoderLayer's
        C, D, eps = cfg.d_model, cfg.head_dim, cfg.norm_eps
        scalar = cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else D
        self.attn_norm = GemmaRMSNorm(C, eps, device)
        self.attn = Attention(
            C,
            cfg.n_heads[i],  # type: ignore[index]
            cfg.n_kv_heads[i],  # type: ignore[index]
            D,
            bias=cfg.qkv_bias,
            o_bias=cfg.o_bias,
            rope=rope,
            scale=scalar**-0.5,
            group_sizes=cfg.layer_group_sizes(i),
            window=cfg.layer_window(i),
            q_norm=GemmaRMSNorm(D, eps, device),
            k_norm=GemmaRMSNorm(D, eps, device),
            device=device,
        )
        self.post_attn_norm = GemmaRMSNorm(C, eps, device)
        self.mlp_norm = GemmaRMSNorm(C, eps, device)
        self.mlp = GeGLU(C, cfg.d_ff, device)
        self.post_mlp_norm = GemmaRMSNorm(C, eps, device)


class Gemma3Decoder(Decoder):
    """Gemma 3 (text): a `Decoder` whose layers are `Gemma3Layer` and whose embeddings are scaled
    by ``sqrt(d_model)``. Sliding layers share one local `RoPE`, global layers another."""

    def __init__(self, config: DecoderConfig, device: Any = None) -> None:
        if config.architecture != "gemma3":
            raise ConfigError(
                f"Gemma3Decoder needs architecture='gemma3', got {config.architecture!r}"
            )
        TextModel.__init__(self)
        self.config = config
        C = config.d_model
        self.embed = nn.Embedding(config.vocab_size, C, device=device)
        self.rope = RoPE(config.head_dim, base=config.rope_base)  # global layers
        self.rope_local = RoPE(config.head_dim, base=config.rope_local_base or config.rope_base)
        self.layers = nn.ModuleList(
            Gemma3Layer(
                config,
                i,
                self.rope if config.layer_window(i) is None else self.rope_local,
                device,
            )
            for i in range(config.n_layers)
        )
        self.norm = GemmaRMSNorm(C, config.norm_eps, device)  # type: ignore[assignment]
        self.lm_head = (
            None
            if config.tie_embeddings
            else Linear(C, config.vocab_size, bias=False, device=device)
        )

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        x = self.embed(input_ids)  # (B, T, C)
        return x * torch.tensor(math.sqrt(self.config.d_model), dtype=x.dtype)

    def layer_kinds(self) -> list[str]:
        """``"sliding"`` or ``"full"`` per layer."""
        return ["full" if a.window is None else "sliding" for a in self.attention_layers()]
