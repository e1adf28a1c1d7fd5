"""KV-cache and attention-parameter arithmetic for any attention shape (no torch needed).

Legend: B batch, S cached positions (the context), L layers, H query heads, G KV heads,
D key head dim, Dv value head dim (= D unless stated), C model dim.

A standard cache holds, per layer and per cached position, G keys of D elements and G values of
Dv elements: ``L * B * S * G * (D + Dv)`` elements. MHA is G = H, MQA is G = 1. DeepSeek's
multi-head latent attention (MLA) caches one compressed vector of ``kv_lora_rank`` elements plus
one decoupled RoPE key of ``qk_rope_head_dim`` elements per position and layer, shared by all
heads. A sliding-window layer never holds more than ``window`` positions.

Bytes per element: float32 4, bfloat16 2, float16 2, float8 1, int8 1, int4 0.5 (two per byte,
packed). Quantised caches also keep scales/zero-points; those are not counted here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from headcount.errors import ConfigError, DTypeError

# Bits per element of each cache/weights dtype headcount can price.
DTYPE_BITS: dict[str, int] = {
    "float32": 32,
    "bfloat16": 16,
    "float16": 16,
    "float8": 8,
    "int8": 8,
    "int4": 4,
}

DTYPE_ALIASES: dict[str, str] = {
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "fp8": "float8",
    "f8": "float8",
    "e4m3": "float8",
    "e5m2": "float8",
    "float8_e4m3fn": "float8",
    "float8_e4m3fnuz": "float8",
    "float8_e5m2": "float8",
    "float8_e5m2fnuz": "float8",
    "i8": "int8",
    "q8": "int8",
    "uint8": "int8",
    "i4": "int4",
    "q4": "int4",
}


def canonical_dtype(dtype: object) -> str:
    """The canonical name (a key of `DTYPE_BITS`) of ``dtype``: a name, alias or ``torch.dtype``."""
    name = str(dtype).strip().lower().removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_BITS:
        known = ", ".join(DTYPE_BITS)
        raise DTypeError(
            f"unknown dtype {dtype!r}; use one of {known} (or fp32, bf16, fp16, fp8, ...)"
        )
    return name


def dtype_bytes(dtype: object) -> float:
    """Bytes per element of ``dtype``: 4, 2, 2, 1, 1 or 0.5 (int4, packed two per byte)."""
    return DTYPE_BITS[canonical_dtype(dtype)] / 8


def nbytes(n_elements: int, dtype: object) -> int:
    """Bytes taken by ``n_elements`` of ``dtype``, rounded up to whole bytes (int4 packs two per byte)."""
    return -(-n_elements * DTYPE_BITS[canonical_dtype(dtype)] // 8)


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------------------- KV cache
def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch_size: int = 1,
    dtype: object = "float16",
    *,
    v_head_dim: int | None = None,
    window: int | None = None,
) -> int:
    """Bytes of a K/V cache: ``L * B * min(S, window) * G * (D + Dv)`` elements of ``dtype``.

    ``window``: the layers are sliding-window layers that keep at most ``window`` positions.
    Example: Llama-3-8B (L=32, G=8, D=128) at S=131,072 in float16 -> 16 GiB.
    """
    L = _positive("n_layers", n_layers)
    G = _positive("n_kv_heads", n_kv_heads)
    D = _positive("head_dim", head_dim)
    Dv = D if v_head_dim is None else _positive("v_head_dim", v_head_dim)
    S = _positive("seq_len", seq_len)
    B = _positive("batch_size", batch_size)
    if window is not None:
        S = min(S, _positive("window", window))
    return nbytes(L * B * S * G * (D + Dv), dtype)


def mla_cache_bytes(
    n_layers: int,
    kv_lora_rank: int,
    qk_rope_head_dim: int,
    seq_len: int,
    batch_size: int = 1,
    dtype: object = "float16",
) -> int:
    """Bytes of a multi-head latent attention cache: ``L * B * S * (kv_lora_rank + qk_rope_head_dim)``.

    Example: DeepSeek-V3 (L=61, 512 + 64) holds 576 elements per position and layer.
    """
    L = _positive("n_layers", n_layers)
    r = _positive("kv_lora_rank", kv_lora_rank)
    rope = _positive("qk_rope_head_dim", qk_rope_head_dim)
    S = _positive("seq_len", seq_len)
    B = _positive("batch_size", batch_size)
    return nbytes(L * B * S * (r + rope), dtype)


# ----------------------------------------------------------------------------- parameters
def attention_params(
    d_model: int,
    n_heads: int,
    n_kv_heads: int | None = None,
    head_dim: int | None = None,
    bias: bool = False,
    *,
    o_bias: bool | None = None,
    v_head_dim: int | None = None,
) -> int:
    """Parameters of one attention layer, counted as `headcount.Attention` builds it.

    Q ``C x H*D``, K ``C x G*D``, V ``C x G*Dv``, O ``H*Dv x C``; with ``bias`` the Q/K/V biases
    and (unless ``o_bias=False``) the output bias. MHA at C=4096, H=32: 67,108,864.
    """
    C = _positive("d_model", d_model)
    H = _positive("n_heads", n_heads)
    G = H if n_kv_heads is None else _positive("n_kv_heads", n_kv_heads)
    if H % G:
        raise ConfigError(f"n_heads={H} is not a multiple of n_kv_heads={G}")
    if head_dim is None:
        if C % H:
            raise ConfigError(
                f"d_model={C} is not divisible by n_heads={H}; pass head_dim explicitly"
            )
        head_dim = C // H
    D = _positive("head_dim", head_dim)
    Dv = D if v_head_dim is None else _positive("v_head_dim", v_head_dim)
    return _attention_params(C, H, G, D, Dv, bias, bias if o_bias is None else o_bias)


def _attention_params(C: int, H: int, G: int, D: int, Dv: int, bias: bool, o_bias: bool) -> int:
    """Q ``C x H*D``, K ``C x G*D``, V ``C x G*Dv``, O ``H*Dv x C`` (+ biases); any H and G."""
    weights = C * (H * D + G * D + G * Dv) + H * Dv * C
    biases = (H * D + G * D + G * Dv) if bias else 0
    return weights + biases + (C if o_bias else 0)


@dataclass(frozen=True)
class MLAShape:
    """DeepSeek-V2/V3 multi-head latent attention: the compressed KV and the decoupled RoPE key."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    @property
    def cache_dim(self) -> int:
        """Elements cached per position and layer: ``kv_lora_rank + qk_rope_head_dim``."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


def mla_attention_params(d_model: int, n_heads: int, mla: MLAShape) -> int:
    """Parameters of one MLA layer (DeepSeek-V3 layout, its two RMSNorms included).

    q_a ``C x q_lora_rank`` + norm + q_b ``q_lora_rank x H*(nope+rope)`` (or q ``C x H*(nope+rope)``
    without a q LoRA), kv_a ``C x (kv_lora_rank+rope)`` + norm, kv_b ``kv_lora_rank x H*(nope+Dv)``,
    o ``H*Dv x C``. DeepSeek-V3: 187,107,328.
    """
    C, H, r = d_model, n_heads, mla.kv_lora_rank
    qk = mla.qk_head_dim
    if mla.q_lora_rank:
        q = C * mla.q_lora_rank + mla.q_lora_rank + mla.q_lora_rank * H * qk
    else:
        q = C * H * qk
    kv = C * (r + mla.qk_rope_head_dim) + r + r * H * (mla.qk_nope_head_dim + mla.v_head_dim)
    return q + kv + H * mla.v_head_dim * C


# -------------------------------------------------------------------------------- models
FULL, SLIDING = "full", "sliding"


@dataclass(frozen=True)
class ModelShape:
    """What the calculator needs to know about a model: its attention shape and size.

    ``layer_types``: "full" or "sliding" per layer (empty: every layer is full); sliding layers
    keep at most ``sliding_window`` positions. ``mla``: set for multi-head latent attention, in
    which case ``n_kv_heads``/``head_dim``/``v_head_dim`` describe its MHA-equivalent K and V.
    ``n_params``: total parameters (weights bytes = n_params x weights dtype bytes).
    ``layer_heads``: ``(H_l, G_l)`` per layer when layers differ (a pruned or converted model, or
    KV groups of uneven sizes); ``n_heads`` and ``n_kv_heads`` are then the largest counts, and
    bytes and parameters are summed over the layers.
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_params: int
    v_head_dim: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()
    mla: MLAShape | None = None
    max_context: int | None = None
    source: str = ""
    notes: tuple[str, ...] = field(default=())
    layer_heads: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "n_params"):
            _positive(name, getattr(self, name))
        if self.layer_heads:
            self._check_layer_heads()
        elif self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.layer_types:
            if len(self.layer_types) != self.n_layers:
                raise ConfigError(
                    f"layer_types has {len(self.layer_types)} entries for n_layers={self.n_layers}"
                )
            bad = sorted(set(self.layer_types) - {FULL, SLIDING})
            if bad:
                raise ConfigError(f"layer_types must be 'full' or 'sliding', got {bad}")
            if SLIDING in self.layer_types and self.sliding_window is None:
                raise ConfigError("sliding layers need a sliding_window")
        if self.sliding_window is not None:
            _positive("sliding_window", self.sliding_window)

    def _check_layer_heads(self) -> None:
        if len(self.layer_heads) != self.n_layers:
            raise ConfigError(
                f"layer_heads has {len(self.layer_heads)} entries for n_layers={self.n_layers}"
            )
        for i, (H, G) in enumerate(self.layer_heads):
            _positive(f"layer_heads[{i}] query heads", H)
            _positive(f"layer_heads[{i}] KV heads", G)
            if G > H:
                raise ConfigError(f"layer {i}: {G} KV heads for only {H} query heads")
        if self.mla is not None:
            raise ConfigError("layer_heads cannot describe multi-head latent attention")

    @property
    def n_sliding_layers(self) -> int:
        return sum(t == SLIDING for t in self.layer_types)

    @property
    def n_full_layers(self) -> int:
        return self.n_layers - self.n_sliding_layers

    @property
    def attention_kind(self) -> str:
        """ "MLA", "MHA", "MQA" or "GQA-<G>"."""
        if self.mla is not None:
            return "MLA"
        if self.layer_heads:
            return "per-layer heads"
        return variant_label(self.n_heads, self.n_kv_heads)

    def attention_params_total(self) -> int:
        """Attention parameters of all layers (summed layer by layer with ``layer_heads``)."""
        if not self.layer_heads:
            return self.n_layers * self.attention_params_per_layer()
        Dv = self.v_head_dim or self.head_dim
        return sum(
            _attention_params(self.d_model, H, G, self.head_dim, Dv, self.qkv_bias, self.o_bias)
            for H, G in self.layer_heads
        )

    def attention_params_per_layer(self, n_kv_heads: int | None = None) -> int:
        """One layer's attention parameters; with ``n_kv_heads``, those of that GQA variant."""
        if self.mla is not None and n_kv_heads is None:
            return mla_attention_params(self.d_model, self.n_heads, self.mla)
        return attention_params(
            self.d_model,
            self.n_heads,
            self.n_kv_heads if n_kv_heads is None else n_kv_heads,
            self.head_dim,
            self.qkv_bias,
            o_bias=self.o_bias,
            v_head_dim=self.v_head_dim,
        )

    def kv_bytes(
        self,
        seq_len: int,
        batch_size: int = 1,
        dtype: object = "float16",
        n_kv_heads: int | None = None,
    ) -> int:
        """Bytes of the whole model's cache; ``n_kv_heads`` prices that GQA variant instead.

        Sliding layers hold ``min(seq_len, sliding_window)`` positions; MLA layers the latent.
        """
        if self.mla is not None and n_kv_heads is None:
            return mla_cache_bytes(
                self.n_layers,
                self.mla.kv_lora_rank,
                self.mla.qk_rope_head_dim,
                seq_len,
                batch_size,
                dtype,
            )
        if self.layer_heads and n_kv_heads is None:
            return self._layer_kv_bytes(seq_len, batch_size, dtype)
        G = self.n_kv_heads if n_kv_heads is None else n_kv_heads
        total = 0
        for n, window in ((self.n_full_layers, None), (self.n_sliding_layers, self.sliding_window)):
            if n:
                total += kv_cache_bytes(
                    n,
                    G,
                    self.head_dim,
                    seq_len,
                    batch_size,
                    dtype,
                    v_head_dim=self.v_head_dim,
                    window=window,
                )
        return total

    def _layer_kv_bytes(self, seq_len: int, batch_size: int, dtype: object) -> int:
        """``sum_l B * min(S, window_l) * G_l * (D + Dv)`` elements of ``dtype``."""
        S, B = _positive("seq_len", seq_len), _positive("batch_size", batch_size)
        types = self.layer_types or (FULL,) * self.n_layers
        elements = 0
        for (_, G), kind in zip(self.layer_heads, types, strict=True):
            positions = min(S, self.sliding_window or S) if kind == SLIDING else S
            elements += B * positions * G * (self.head_dim + (self.v_head_dim or self.head_dim))
        return nbytes(elements, dtype)

    def kv_bytes_per_token(self, dtype: object = "float16", n_kv_heads: int | None = None) -> int:
        """Bytes one more position adds to the cache of all layers (while inside every window)."""
        if self.mla is not None and n_kv_heads is None:
            return nbytes(self.n_layers * self.mla.cache_dim, dtype)
        if self.layer_heads and n_kv_heads is None:
            G_sum = sum(G for _, G in self.layer_heads)
            return nbytes(G_sum * (self.head_dim + (self.v_head_dim or self.head_dim)), dtype)
        G = self.n_kv_heads if n_kv_heads is None else n_kv_heads
        return nbytes(
            self.n_layers * G * (self.head_dim + (self.v_head_dim or self.head_dim)), dtype
        )

    def with_kv_heads(self, n_kv_heads: int) -> ModelShape:
        """The same model converted to ``n_kv_heads`` KV heads (MLA becomes plain attention)."""
        attn_delta = self.n_layers * (
            self.attention_params_per_layer(n_kv_heads) - self.attention_params_per_layer()
        )
        return replace(self, n_kv_heads=n_kv_heads, mla=None, n_params=self.n_params + attn_delta)

    def with_layer_kv_heads(self, kv_heads: tuple[int, ...]) -> ModelShape:
        """A per-layer model with ``kv_heads[l]`` KV heads in layer l (its query heads kept)."""
        layers = tuple((H, G) for (H, _), G in zip(self.layer_heads, kv_heads, strict=True))
        variant = replace(self, layer_heads=layers, n_kv_heads=max(kv_heads))
        delta = variant.attention_params_total() - self.attention_params_total()
        return replace(variant, n_params=self.n_params + delta)


def variant_label(n_heads: int, n_kv_heads: int) -> str:
    if n_kv_heads == n_heads:
        return "MHA"
    if n_kv_heads == 1:
        return "MQA"
    return f"GQA-{n_kv_heads}"


@dataclass(frozen=True)
class KVVariant:
    """One row of the comparison: the model with ``n_kv_heads`` KV heads (None: its MLA latent)."""

    label: str
    n_kv_heads: int | None
    published: bool
    bytes_per_token: int
    kv_bytes: int
    attention_params: int
    weights_bytes: int
    sequences_fit: int | None
    layer_kv_heads: tuple[int, ...] | None = None  # per layer, for a per-layer model


def kv_variants(
    shape: ModelShape,
    seq_len: int,
    batch_size: int = 1,
    dtype: object = "float16",
    memory: int | None = None,
    weights_dtype: object | None = None,
) -> list[KVVariant]:
    """The model as published, then as MHA, every GQA divisor of H (largest first), and MQA.

    A model with ``layer_heads`` has rows MHA (each layer G_l = H_l), "saved" (as it is, unless
    that is MHA or MQA) and MQA (G_l = 1); ``n_kv_heads`` of a row is then the sum over layers.
    GQA rows are left out there: no single G divides every layer's query heads in general.

    ``kv_bytes`` is the cache at ``seq_len`` x ``batch_size``; ``attention_params`` is summed over
    all layers; ``sequences_fit`` = ``(memory - weights_bytes) // kv_bytes(seq_len, batch 1)``, the
    number of ``seq_len``-token sequences whose cache fits next to the weights (None without
    ``memory``). Weights are ``n_params`` of the variant x ``weights_dtype`` (default ``dtype``).
    """
    _positive("seq_len", seq_len)
    _positive("batch_size", batch_size)
    if memory is not None:
        _positive("memory", memory)
    wdtype = dtype if weights_dtype is None else weights_dtype
    H = shape.n_heads
    counts = [g for g in range(H, 0, -1) if H % g == 0]
    rows: list[KVVariant] = []

    def row(label: str, s: ModelShape, G: int | None, published: bool) -> KVVariant:
        weights = nbytes(s.n_params, wdtype)
        per_seq = s.kv_bytes(seq_len, 1, dtype)
        fit = None if memory is None else max(0, (memory - weights) // per_seq)
        return KVVariant(
            label=label,
            n_kv_heads=G,
            published=published,
            bytes_per_token=s.kv_bytes_per_token(dtype),
            kv_bytes=s.kv_bytes(seq_len, batch_size, dtype),
            attention_params=s.attention_params_total(),
            weights_bytes=weights,
            sequences_fit=fit,
            layer_kv_heads=tuple(g for _, g in s.layer_heads) or None,
        )

    if shape.layer_heads:
        saved = tuple(g for _, g in shape.layer_heads)
        mha = tuple(h for h, _ in shape.layer_heads)
        mqa = (1,) * shape.n_layers
        for label, gs in (("MHA", mha), ("saved", saved), ("MQA", mqa)):
            if label == "saved" and saved in (mha, mqa):
                continue
            rows.append(row(label, shape.with_layer_kv_heads(gs), sum(gs), gs == saved))
        return rows

    if shape.mla is not None:
        rows.append(row("MLA", shape, None, True))
    for G in counts:
        variant = shape.with_kv_heads(G)
        label = variant_label(H, G)
        if H == 1:
            label = "MHA=MQA"
        rows.append(row(label, variant, G, shape.mla is None and shape.n_kv_heads == G))
    return rows


# ------------------------------------------------------------------------- sizes and units
_BINARY = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
_DECIMAL = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``80GiB`` (binary, 2**30), ``80GB`` (decimal, 10**9) or ``1024``.

    Units: B, kB/KB, MB, GB, TB, PB and KiB, MiB, GiB, TiB, PiB (case-insensitive). A bare ``G``
    is refused as ambiguous.
    """
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(
            f"malformed size {text!r}: expected a number and a unit, such as 80GiB or 80GB"
        )
    number, unit = m.group(1), m.group(2).lower()
    if unit in ("k", "m", "g", "t", "p"):
        raise ConfigError(
            f"ambiguous size {text!r}: write {number}{unit.upper()}iB (binary, 2^n) "
            f"or {number}{unit.upper()}B (decimal, 10^n)"
        )
    scale = _BINARY.get(unit) or _DECIMAL.get(unit or "b")
    if scale is None:
        raise ConfigError(
            f"malformed size {text!r}: unknown unit {m.group(2)!r}; use B, KB, MB, GB, TB "
            "(decimal) or KiB, MiB, GiB, TiB (binary)"
        )
    value = round(float(number) * scale)
    if value <= 0:
        raise ConfigError(f"size must be positive, got {text!r}")
    return value


_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def parse_count(text: str, what: str = "count") -> int:
    """A positive whole number, with ``k`` = 1024 and ``m`` = 1024**2: ``128k`` -> 131,072.

    Context lengths are quoted this way (Llama-3.1's "128k" is 131,072 tokens), so ``k`` is binary.
    """
    m = _COUNT_RE.match(str(text))
    if not m:
        raise ConfigError(
            f"{what} must be a positive integer (optionally with k = 1024), got {text!r}"
        )
    scale = {"": 1, "k": 2**10, "m": 2**20}[m.group(2).lower()]
    value = float(m.group(1)) * scale
    if value != int(value) or value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {text!r}")
    return int(value)


def format_bytes(n: int) -> str:
    """``16.00 GiB (17.18 GB)``: binary and decimal, both labelled; small sizes in bytes."""
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 5)
    dexp = min(int(math.log10(n) // 3), 5)
    bunit = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")[exp]
    dunit = ("B", "kB", "MB", "GB", "TB", "PB")[dexp]
    return f"{n / 1024**exp:.2f} {bunit} ({n / 1000**dexp:.2f} {dunit})"


def format_count(n: int) -> str:
    """``8.03B``, ``134.5M``, ``22.7M``, ``41.9M``: a parameter count at a glance."""
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "k")):
        if n >= div:
            return f"{n / div:.2f}{suffix}" if div >= 10**9 else f"{n / div:.1f}{suffix}"
    return str(n)
