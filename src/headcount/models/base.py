"""What Decoder and Encoder share: the tokenizer slot, the attention layers, the context check."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from headcount.errors import CheckpointError, ShapeError
from headcount.loaders.tokenizer import Tokenizer
from headcount.models.cache import ModelCache
from headcount.nn import Attention


def is_id_dtype(dtype: torch.dtype) -> bool:
    """Whether a tensor of ``dtype`` can hold token ids: an integer type (not bool, not float:
    ``int()`` would silently truncate 1.7 to 1)."""
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


class TextModel(nn.Module):
    """Base of `Decoder` and `Encoder`. ``layers`` is an ``nn.ModuleList`` whose items have ``.attn``."""

    layers: nn.ModuleList
    config: Any

    def __init__(self) -> None:
        super().__init__()
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_error = (
            "this model was built without a tokenizer; pass token ids instead of text"
        )
        self.source = ""  # the checkpoint path, when loaded from one

    @property
    def tokenizer(self) -> Tokenizer:
        """The checkpoint's tokenizer; raises `CheckpointError` naming the file if it has none."""
        if self._tokenizer is None:
            raise CheckpointError(self._tokenizer_error)
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tok: Tokenizer | None) -> None:
        self._tokenizer = tok

    @property
    def has_tokenizer(self) -> bool:
        return self._tokenizer is not None

    def set_tokenizer(self, tok: Tokenizer | None, error: str | None = None) -> None:
        self._tokenizer = tok
        if error:
            self._tokenizer_error = error

    @property
    def max_len(self) -> int:
        """Context length: the most positions one sequence may have."""
        return int(self.config.max_len)

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> ModelCache:
        """Empty per-layer KV caches ``(B, G_l, max_len, D)`` (default: the whole context);
        a sliding-window layer's holds ``min(window, max_len)`` positions.

        `Decoder.forward` appends to them; an `Encoder` attends bidirectionally and never uses a
        cache, but its caches still size the KV memory its layers would need.
        """
        max_len = self.max_len if max_len is None else max_len
        if not 0 < max_len <= self.max_len:
            raise ShapeError(
                f"cache max_len={max_len} must be in 1..{self.max_len} (the model's context)"
            )
        w = next(self.parameters())
        return ModelCache.for_layers(
            tuple(self.config.n_kv_heads),
            self.config.head_dim,
            batch_size,
            max_len,
            dtype=w.dtype,
            device=w.device,
            windows=tuple(getattr(a, "window", None) for a in self.attention_layers()),
        )

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the model to the folder ``path``; ``headcount.load(path)`` gives it back exactly.

        ``headcount.json`` (config with per-layer heads, tokenizer ids), ``model.safetensors``
        (HuggingFace names, the model's dtype), ``tokenizer.json``, and a ``config.json`` for
        transformers when every layer has the same heads. Atomic; an existing non-empty folder is
        replaced only with ``force`` and only if it holds an earlier save. Returns the folder.
        """
        from headcount.models.save import save

        return save(self, path, force=force)

    def attention_layers(self) -> list[Attention]:
        """The `Attention` module of every layer, in order (set ``weights_hook`` / ``head_gate`` here)."""
        return [cast(Attention, layer.attn) for layer in self.layers]

    def _check_ids(self, input_ids: Tensor, past: int = 0) -> tuple[int, int]:
        if input_ids.ndim != 2 or not is_id_dtype(input_ids.dtype):
            raise ShapeError(
                f"input_ids must be an integer tensor (B, T), got {input_ids.dtype} {tuple(input_ids.shape)}"
            )
        B, T = input_ids.shape
        if past + T > self.max_len:
            cached = f" + {past} cached" if past else ""
            raise ShapeError(
                f"input of {T} tokens{cached} is longer than the model's context of max_len={self.max_len} "
                "positions; split it into windows (see headcount.perplexity)"
            )
        V = self.config.vocab_size
        if T and bool(((input_ids < 0) | (input_ids >= V)).any()):
            bad = input_ids[(input_ids < 0) | (input_ids >= V)][0].item()
            raise ShapeError(f"token id {bad} is outside the vocabulary of {V} ids")
        return B, T
