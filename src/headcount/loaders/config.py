"""Model configurations: frozen dataclasses that carry the attention shape of every layer.

They live under ``loaders`` because the readers produce them and ``models`` builds from them
(imports point downward: models -> loaders -> nn). ``headcount.models`` re-exports them.

Pruning and MHA->GQA->MQA conversion make layers differ, so ``n_heads`` and ``n_kv_heads`` are
tuples with one entry per layer; an ``int`` given to the constructor is repeated for every layer.
Pruning query heads of a GQA layer leaves KV groups of different sizes: ``DecoderConfig.group_sizes``
holds them per layer. ``to_dict`` / ``from_dict`` round-trip a config through JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from headcount.errors import ConfigError


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _per_layer(cfg: Any, name: str) -> tuple[int, ...]:
    value = getattr(cfg, name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * cfg.n_layers
    value = tuple(value)
    if len(value) != cfg.n_layers:
        raise ConfigError(f"{name} has {len(value)} entries but n_layers={cfg.n_layers}")
    for i, v in enumerate(value):
        _positive(f"{name}[{i}]", v)
    object.__setattr__(cfg, name, value)
    return value


def _lists(value: Any) -> Any:
    """Tuples, nested ones included, as lists (what JSON gives back)."""
    return [_lists(v) for v in value] if isinstance(value, tuple | list) else value


class _ConfigBase:
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists), with ``"kind"`` naming the config class."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"kind": self.kind, **{k: _lists(v) for k, v in d.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"config kind {kind!r} cannot build a {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**d)


@dataclass(frozen=True)
class DecoderConfig(_ConfigBase):
    """A Llama-family decoder: pre-RMSNorm, SwiGLU MLP, rotary positions.

    ``head_dim`` is explicit (never silently ``d_model // n_heads``); ``max_len`` is the context
    length; ``eos_token_ids`` end generation. ``group_sizes``: per layer, the query heads of each
    KV head when groups differ in size (after pruning); None means ``H // G`` everywhere.

    Sliding-window models: ``layer_types`` gives ``"full"`` or ``"sliding"`` per layer (None:
    every layer slides when ``sliding_window`` is set, else every layer is full); sliding layers
    see the last ``sliding_window`` positions and rotate with ``rope_local_base`` (None: the
    same ``rope_base``). ``query_pre_attn_scalar``: scores scale by its ``**-0.5`` instead of
    ``head_dim**-0.5`` (Gemma). ``architecture="gemma3"`` builds `Gemma3Decoder`. The defaults
    keep a Llama model exactly as before.
    """

    kind: ClassVar[str] = "decoder"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: tuple[int, ...] | int
    n_kv_heads: tuple[int, ...] | int
    head_dim: int
    d_ff: int
    max_len: int
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    architecture: str = "llama"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default=())
    group_sizes: tuple[tuple[int, ...], ...] | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_local_base: float | None = None
    query_pre_attn_scalar: float | None = None

    LAYER_TYPES: ClassVar[tuple[str, ...]] = ("full", "sliding")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "head_dim", "d_ff", "max_len"):
            _positive(name, getattr(self, name))
        self._check_windows()
        heads = _per_layer(self, "n_heads")
        kv = _per_layer(self, "n_kv_heads")
        if self.group_sizes is None:
            for i, (h, g) in enumerate(zip(heads, kv, strict=True)):
                if h % g:
                    raise ConfigError(f"layer {i}: n_heads={h} is not a multiple of n_kv_heads={g}")
        else:
            self._check_group_sizes(heads, kv)
        if self.head_dim % 2:
            raise ConfigError(
                f"rotary embeddings need an even head_dim, got head_dim={self.head_dim}"
            )
        if not self.rope_base > 1:
            raise ConfigError(f"rope_base must be > 1, got {self.rope_base}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))

    def _check_group_sizes(self, heads: tuple[int, ...], kv: tuple[int, ...]) -> None:
        try:
            sizes = tuple(tuple(layer) for layer in self.group_sizes or ())  # lists from JSON too
        except TypeError:
            raise ConfigError(
                f"group_sizes must hold one sequence of ints per layer, got {self.group_sizes!r}"
            ) from None
        if len(sizes) != self.n_layers:
            raise ConfigError(f"group_sizes has {len(sizes)} entries but n_layers={self.n_layers}")
        for i, (s, h, g) in enumerate(zip(sizes, heads, kv, strict=True)):
            if (
                len(s) != g
                or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in s)
                or sum(s) != h
            ):
                raise ConfigError(
                    f"layer {i}: group_sizes={s} must be n_kv_heads={g} positive integers "
                    f"summing to n_heads={h}"
                )
        object.__setattr__(self, "group_sizes", sizes)

    def _check_windows(self) -> None:
        if self.sliding_window is not None:
            _positive("sliding_window", self.sliding_window)
        if self.layer_types is not None:
            types = tuple(self.layer_types)
            if len(types) != self.n_layers or any(t not in self.LAYER_TYPES for t in types):
                raise ConfigError(
                    f"layer_types must hold n_layers={self.n_layers} entries of {self.LAYER_TYPES}, "
                    f"got {types}"
                )
            if "sliding" in types and self.sliding_window is None:
                raise ConfigError("layer_types has sliding layers but sliding_window is None")
            object.__setattr__(self, "layer_types", types)
        for name in ("rope_local_base", "query_pre_attn_scalar"):
            value = getattr(self, name)
            if value is not None and not value > (1 if name == "rope_local_base" else 0):
                raise ConfigError(f"{name} must be positive (and a RoPE base > 1), got {value}")

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer ``i``, or None for a layer that sees every position."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[i] == "sliding":
            return self.sliding_window
        return None

    def layer_rope_base(self, i: int) -> float:
        """RoPE base of layer ``i``: ``rope_local_base`` on sliding layers when given."""
        if self.layer_window(i) is not None and self.rope_local_base is not None:
            return self.rope_local_base
        return self.rope_base

    def layer_group_sizes(self, i: int) -> tuple[int, ...]:
        """Query heads per KV head in layer ``i``: ``group_sizes[i]``, or ``H // G`` each."""
        if self.group_sizes is not None:
            return self.group_sizes[i]
        H, G = self.n_heads[i], self.n_kv_heads[i]  # type: ignore[index]
        return (H // G,) * G


@dataclass(frozen=True)
class EncoderConfig(_ConfigBase):
    """A BERT-family encoder: post-LayerNorm, GELU MLP, learned absolute positions, token types.

    ``n_kv_heads``: KV heads per layer; None (BERT as published) means as many as query heads.
    Converted encoders (`headcount.convert`) share KV heads between contiguous query heads.
    """

    kind: ClassVar[str] = "encoder"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: tuple[int, ...] | int
    head_dim: int
    d_ff: int
    max_len: int
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_token_id: int = 0
    architecture: str = "bert"
    n_kv_heads: tuple[int, ...] | int | None = None

    ACTIVATIONS: ClassVar[tuple[str, ...]] = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "head_dim",
            "d_ff",
            "max_len",
            "type_vocab_size",
        ):
            _positive(name, getattr(self, name))
        heads = _per_layer(self, "n_heads")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", heads)
        kv = _per_layer(self, "n_kv_heads")
        for i, (h, g) in enumerate(zip(heads, kv, strict=True)):
            if h % g:
                raise ConfigError(f"layer {i}: n_heads={h} is not a multiple of n_kv_heads={g}")
        if self.activation not in self.ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not one of {self.ACTIVATIONS}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")


ModelConfig = DecoderConfig | EncoderConfig
