"""BERT-family encoder built from `headcount.nn.Attention`: post-LayerNorm, GELU, learned positions.

Legend: B batch, T positions, C model dim, F MLP width, H heads, N sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headcount.errors import ShapeError
from headcount.loaders.config import EncoderConfig
from headcount.models.base import TextModel
from headcount.nn import Attention, Linear, key_padding_mask

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class EncoderOutput:
    hidden_states: Tensor  # (B, T, C), the last layer's output
    attentions: tuple[Tensor, ...] | None = None  # one (B, H_l, T, T) per layer when asked


class Embeddings(nn.Module):
    """``LayerNorm(token + position + token type)``."""

    def __init__(self, cfg: EncoderConfig, device: Any = None) -> None:
        super().__init__()
        C = cfg.d_model
        self.tokens = nn.Embedding(cfg.vocab_size, C, device=device)
        self.positions = nn.Embedding(cfg.max_len, C, device=device)
        self.token_types = nn.Embedding(cfg.type_vocab_size, C, device=device)
        self.norm = nn.LayerNorm(C, eps=cfg.norm_eps, device=device)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.tokens(input_ids) + self.positions(pos)  # (B, T, C)
        if token_type_ids is None:
            x = x + self.token_types.weight[0]
        else:
            x = x + self.token_types(token_type_ids)
        return self.norm(x)


class EncoderMLP(nn.Module):
    def __init__(self, cfg: EncoderConfig, device: Any = None) -> None:
        super().__init__()
        self.up = Linear(cfg.d_model, cfg.d_ff, device=device)
        self.down = Linear(cfg.d_ff, cfg.d_model, device=device)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.act(self.up(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, i: int, device: Any = None) -> None:
        super().__init__()
        C = cfg.d_model
        self.attn = Attention(
            C,
            cfg.n_heads[i],  # type: ignore[index]
            cfg.n_kv_heads[i],  # type: ignore[index]
            head_dim=cfg.head_dim,
            bias=True,
            device=device,
        )
        self.attn_norm = nn.LayerNorm(C, eps=cfg.norm_eps, device=device)
        self.mlp = EncoderMLP(cfg, device)
        self.mlp_norm = nn.LayerNorm(C, eps=cfg.norm_eps, device=device)

    def forward(
        self, x: Tensor, attention_mask: Tensor | None, return_weights: bool
    ) -> tuple[Tensor, Tensor | None]:
        out = self.attn(x, attention_mask=attention_mask, return_weights=return_weights)
        weights = None
        if return_weights:
            out, weights = out
        x = self.attn_norm(x + out)  # post-LN
        return self.mlp_norm(x + self.mlp(x)), weights


class Encoder(TextModel):
    """A bidirectional encoder. ``model(input_ids) -> EncoderOutput(hidden_states (B, T, C))``;
    ``model.embed(sentences)`` gives mean-pooled, L2-normalised sentence embeddings ``(N, C)``."""

    def __init__(self, config: EncoderConfig, device: Any = None) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config, device)
        self.layers = nn.ModuleList(EncoderLayer(config, i, device) for i in range(config.n_layers))
        # embed() truncates sentences to this many tokens (sentence-transformers' max_seq_length)
        self.max_seq_length = config.max_len

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        return_weights: bool = False,
    ) -> EncoderOutput:
        """Hidden states of ``input_ids (B, T)``; ``attention_mask (B, T)`` is 1 for real tokens."""
        B, T = self._check_ids(input_ids)
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, T):
                raise ShapeError(
                    f"attention_mask must be (B, T) = ({B}, {T}), got {tuple(attention_mask.shape)}"
                )
            attention_mask = key_padding_mask(attention_mask)  # refuses additive masks
        if token_type_ids is not None and tuple(token_type_ids.shape) != (B, T):
            raise ShapeError(
                f"token_type_ids must be (B, T) = ({B}, {T}), got {tuple(token_type_ids.shape)}"
            )
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        attentions: list[Tensor] = []
        for layer in self.layers:
            x, w = layer(x, attention_mask, return_weights)
            if w is not None:
                attentions.append(w)
        return EncoderOutput(x, tuple(attentions) if return_weights else None)

    def embed(self, sentences: str | Sequence[str], batch_size: int = 32) -> Tensor:
        """Sentence embeddings ``(N, C)``: mean of the last hidden states over real tokens, L2-normalised.

        Each sentence is truncated to ``max_seq_length`` tokens (keeping the final [SEP]).
        """
        if isinstance(sentences, str):
            sentences = [sentences]
        limit = min(self.max_seq_length, self.max_len)
        encoded = []
        for s in sentences:
            ids = self.tokenizer.encode(s)
            encoded.append(ids if len(ids) <= limit else [*ids[: limit - 1], ids[-1]])
        device = self.embeddings.tokens.weight.device
        pad = self.config.pad_token_id
        out = []
        with torch.inference_mode():
            for start in range(0, len(encoded), batch_size):
                batch = encoded[start : start + batch_size]
                T = max(len(b) for b in batch)
                batch_ids = torch.full((len(batch), T), pad, dtype=torch.long, device=device)
                mask = torch.zeros(len(batch), T, dtype=torch.bool, device=device)
                for r, b in enumerate(batch):
                    batch_ids[r, : len(b)] = torch.tensor(b)
                    mask[r, : len(b)] = True
                h = self(batch_ids, attention_mask=mask).hidden_states  # (b, T, C)
                m = mask[..., None].to(h.dtype)  # (b, T, 1)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (b, C)
                out.append(F.normalize(pooled, p=2, dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.config.d_model)
