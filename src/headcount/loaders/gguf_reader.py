"""Read a llama.cpp GGUF file into a `DecoderConfig`, a state dict and a tokenizer.

Quantised tensors (Q4_1, Q8_0, Q4_K, Q6_K, ...) are dequantised to float32 with
``gguf.quants.dequantize``, or (``packed=True``) matrices of the types the kernels read stay
packed as `headcount.kernels.packed.PackedWeight`. GGUF lists a tensor's dims fastest-varying first (``[in, out]`` for
a matrix), and llama.cpp's converter permutes Q/K rows for its RoPE layout (Llama; not Gemma);
both are undone by the family's transforms.

A GGUF split into byte chunks (``read_gguf_parts``, as PyPI's size limit makes packages ship
it) is read as one file without writing a copy to disk: the chunks are read into one buffer in
memory, the SHA-256 checked on the way, and parsed by `BufferReader`, a small GGUF parser that
reads a 262k-token vocabulary in well under a second (``gguf.GGUFReader`` takes ~45 s on it).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from headcount.errors import CheckpointError, ConfigError
from headcount.kernels import QTYPES
from headcount.kernels.packed import PackedWeight
from headcount.loaders.config import DecoderConfig
from headcount.loaders.families import GEMMA3_GGUF, LLAMA_GGUF, Family, apply_family
from headcount.loaders.fields import (
    as_float,
    as_int,
    as_str,
    check_layer_count,
    per_layer_ints,
    shown,
    token_id,
)
from headcount.loaders.tokenizer import Tokenizer, tokenizer_from_gguf
from headcount.loaders.transforms import gguf_matrix

# GGUF ``general.architecture`` -> family
GGUF_FAMILIES: dict[str, Family] = {"llama": LLAMA_GGUF, "gemma3": GEMMA3_GGUF}
# llama.cpp's Gemma 3 conventions where the file is silent (llama-model.cpp): every 6th layer
# is global, the others slide; local layers rotate with base 10,000.
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_LOCAL_ROPE_BASE = 10_000.0


@dataclass
class Checkpoint:
    """What a reader returns: config, headcount-layout tensors, tokenizer (or why there is none)."""

    config: DecoderConfig | Any
    state_dict: dict[str, Tensor]
    tokenizer: Tokenizer | None
    source: str
    tokenizer_error: str | None = None
    extra: dict[str, Any] | None = None


def _open(path: Path) -> BufferReader:
    """The GGUF file at ``path``, memory-mapped and parsed by `BufferReader` (header checked,
    tensor data not read)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a readable GGUF file, truncated or corrupt (empty)")
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc})") from exc
    return BufferReader(buf, str(path))


def read_fields(reader: BufferReader, path: Path) -> dict[str, Any]:
    """GGUF metadata as plain Python values."""
    return dict(reader.fields)


class _GGUFTensors:
    """The tensors of a parsed GGUF file, read one at a time on `get`: dequantised to float32,
    or with ``packed``, a matrix of a type the kernels read (`headcount.kernels.QTYPES`) as a
    `PackedWeight` holding the file's blocks."""

    def __init__(self, reader: BufferReader, path: Path, packed: bool = False) -> None:
        self.path = str(path)
        self.packed = packed
        self._by_name = {t.name: t for t in reader.tensors}

    def keys(self) -> list[str]:
        return list(self._by_name)

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape in ``nn.Linear`` layout: its GGUF dims reversed."""
        return tuple(reversed(self._by_name[name].shape))

    def get(self, name: str) -> Tensor:
        from gguf.quants import dequantize

        t = self._by_name[name]
        if self.packed and len(t.shape) == 2 and int(t.tensor_type) in QTYPES:
            return PackedWeight.from_gguf(np.asarray(t.data), int(t.tensor_type), int(t.shape[0]))
        try:
            with np.errstate(all="ignore"):  # non-finite values are refused by the caller
                data = dequantize(np.asarray(t.data), t.tensor_type)
        except (NotImplementedError, ValueError, TypeError, ArithmeticError) as exc:
            raise CheckpointError(
                f"{self.path}: tensor {name} ({t.tensor_type.name}): cannot dequantise it ({exc})"
            ) from exc
        ne = tuple(int(n) for n in t.shape)
        arr = np.array(data, dtype=np.float32, copy=True)  # F32 tensors are read-only file views
        return gguf_matrix(torch.from_numpy(arr), ne)


def _config(fields: dict[str, Any], tensor_names: set[str], path: Path) -> DecoderConfig:
    """The model config of a GGUF file's metadata; a missing or mistyped field is refused by name.

    Head counts may be per-layer arrays, as llama.cpp writes models whose layers differ."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or arch not in GGUF_FAMILIES:
        raise CheckpointError(
            f"{path}: unsupported architecture {shown(arch)}; supported: {', '.join(sorted(GGUF_FAMILIES))}"
        )

    def where(key: str) -> str:
        return (
            f"{path}: {key}"
            if key.startswith(("tokenizer.", "general."))
            else f"{path}: {arch}.{key}"
        )

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in fields:
            raise CheckpointError(f"{path}: GGUF metadata has no {full}")
        return fields[full]

    def opt(key: str) -> Any:
        return fields.get(key if key.startswith(("tokenizer.", "general.")) else f"{arch}.{key}")

    n_layers = as_int(need("block_count"), where("block_count"), minimum=1)
    check_layer_count(n_layers, len(tensor_names), where("block_count"))
    d_model = as_int(need("embedding_length"), where("embedding_length"), minimum=1)
    heads = per_layer_ints(need("attention.head_count"), n_layers, where("attention.head_count"))
    kv_field = opt("attention.head_count_kv")
    kv = (
        heads
        if kv_field is None
        else per_layer_ints(kv_field, n_layers, where("attention.head_count_kv"))
    )
    for i, (h, g) in enumerate(zip(heads, kv, strict=True)):
        if h % g:
            raise CheckpointError(
                f"{path}: layer {i}: {arch}.attention.head_count={h} is not a multiple of "
                f"{arch}.attention.head_count_kv={g}"
            )
    head_dim = _head_dim(fields, arch, d_model, heads, path)
    d_ff = _same_per_layer(need("feed_forward_length"), n_layers, where("feed_forward_length"))
    tokens = opt("tokenizer.ggml.tokens")
    vocab_field = opt("vocab_size")
    if vocab_field is not None:
        vocab = as_int(vocab_field, where("vocab_size"), minimum=1)
    elif isinstance(tokens, list) and tokens:
        vocab = len(tokens)
    else:
        raise CheckpointError(
            f"{path}: GGUF metadata has neither {arch}.vocab_size nor a vocabulary"
        )
    rope_scaling = opt("rope.scaling.type")
    if rope_scaling is not None and as_str(rope_scaling, where("rope.scaling.type")) != "none":
        raise CheckpointError(
            f"{where('rope.scaling.type')}: RoPE scaling {rope_scaling!r} is not supported"
        )
    eos = token_id(opt("tokenizer.ggml.eos_token_id"), where("tokenizer.ggml.eos_token_id"), vocab)
    bos = token_id(opt("tokenizer.ggml.bos_token_id"), where("tokenizer.ggml.bos_token_id"), vocab)
    eos_ids = () if eos is None else (eos,)
    rope_base = opt("rope.freq_base")
    extra: dict[str, Any] = {}
    if arch == "gemma3":
        extra = _gemma3_fields(fields, path, n_layers, d_model, heads[0], head_dim)
        if (
            isinstance(tokens, list) and "<end_of_turn>" in tokens
        ):  # a chat turn ends generation too
            eos_ids = (*eos_ids, tokens.index("<end_of_turn>"))
    try:
        return DecoderConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=heads,
            n_kv_heads=kv,
            head_dim=head_dim,
            d_ff=d_ff,
            max_len=as_int(need("context_length"), where("context_length"), minimum=1),
            rope_base=10000.0
            if rope_base is None
            else as_float(rope_base, where("rope.freq_base")),
            norm_eps=as_float(
                need("attention.layer_norm_rms_epsilon"), where("attention.layer_norm_rms_epsilon")
            ),
            tie_embeddings="output.weight" not in tensor_names,
            qkv_bias="blk.0.attn_q.bias" in tensor_names,
            o_bias="blk.0.attn_output.bias" in tensor_names,
            architecture=arch,
            bos_token_id=bos,
            eos_token_ids=eos_ids,
            **extra,
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _head_dim(
    fields: dict[str, Any], arch: str, d_model: int, heads: tuple[int, ...], path: Path
) -> int:
    """``attention.key_length``, else ``d_model / head_count`` when that is exact and the same
    for every layer (never guessed for layers whose head counts differ)."""
    key, value = (fields.get(f"{arch}.attention.{k}_length") for k in ("key", "value"))
    if key is not None:
        head_dim = as_int(key, f"{path}: {arch}.attention.key_length", minimum=1)
        if (
            value is not None
            and as_int(value, f"{path}: {arch}.attention.value_length") != head_dim
        ):
            raise CheckpointError(
                f"{path}: {arch}.attention.value_length={value} differs from key_length={head_dim}; "
                "headcount needs one head dim"
            )
        return head_dim
    if len(set(heads)) > 1:
        raise CheckpointError(
            f"{path}: {arch}.attention.head_count differs between layers ({list(heads)}) and "
            f"{arch}.attention.key_length is not given"
        )
    if d_model % heads[0]:
        raise CheckpointError(
            f"{path}: {arch}.embedding_length={d_model} is not divisible by "
            f"{arch}.attention.head_count={heads[0]} and attention.key_length is not given"
        )
    return d_model // heads[0]


def _same_per_layer(value: Any, n_layers: int, where: str) -> int:
    """One integer for every layer: a scalar, or a per-layer array whose entries are all equal."""
    values = per_layer_ints(value, n_layers, where)
    if len(set(values)) > 1:
        raise CheckpointError(f"{where} differs between layers ({list(values)}); not supported")
    return values[0]


def _gemma3_fields(
    fields: dict[str, Any], path: Path, n_layers: int, d_model: int, n_heads: int, head_dim: int
) -> dict[str, Any]:
    """Sliding window, layer types, local RoPE base and score scale of a Gemma 3 GGUF."""
    window = fields.get("gemma3.attention.sliding_window")
    if window is not None:
        window = as_int(window, f"{path}: gemma3.attention.sliding_window", minimum=1)
    pattern = fields.get("gemma3.attention.sliding_window_pattern", GEMMA3_SLIDING_PATTERN)
    where = f"{path}: gemma3.attention.sliding_window_pattern"
    if isinstance(pattern, list):  # per layer: true where the layer slides
        if len(pattern) != n_layers or not all(isinstance(p, bool) for p in pattern):
            raise CheckpointError(f"{where} must be {n_layers} booleans, got {shown(pattern)}")
        types = tuple("sliding" if p else "full" for p in pattern)
    else:
        every = as_int(pattern, where, minimum=1)
        types = tuple("full" if (i + 1) % every == 0 else "sliding" for i in range(n_layers))
    # llama.cpp: 27B (62 layers) scales by (d_model / n_heads) ** -0.5, the others by head_dim
    scalar = d_model // n_heads if n_layers == 62 else head_dim
    local = fields.get("gemma3.rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE)
    return {
        "sliding_window": window,
        "layer_types": types if window is not None else None,
        "rope_local_base": as_float(local, f"{path}: gemma3.rope.freq_base_swa"),
        "query_pre_attn_scalar": float(scalar),
    }


def read_gguf(path: str | Path, source: str | None = None, packed: bool = False) -> Checkpoint:
    """Config, float32 state dict (headcount layout) and tokenizer of a GGUF file.

    ``source``: the name to report instead of ``path`` (the chunks of a split file).
    ``packed``: quantised matrices stay packed (`PackedWeight`) instead of dequantised."""
    path = Path(path)
    return _checkpoint(_open(path), source or str(path), packed)


def read_gguf_parts(
    parts: list[Path], sha256: str | None, source: str, packed: bool = False
) -> Checkpoint:
    """Read a GGUF file shipped as byte chunks ``parts`` (in order) whose concatenation has the
    SHA-256 ``sha256`` (None: unchecked), without writing the file anywhere."""
    return _checkpoint(BufferReader(read_parts(parts, sha256, source), source), source, packed)


def _checkpoint(reader: BufferReader, name: str, packed: bool = False) -> Checkpoint:
    fields = reader.fields
    tensors = _GGUFTensors(reader, Path(name), packed)
    tensors.path = name
    config = _config(fields, set(tensors.keys()), Path(name))
    state = apply_family(GGUF_FAMILIES[config.architecture], config, tensors)
    tokenizer, why = None, None
    try:
        tokenizer = tokenizer_from_gguf(fields, name)
    except CheckpointError as exc:  # the weights are usable without it: say why there is none
        why = str(exc)
    return Checkpoint(config, state, tokenizer, name, tokenizer_error=why)


def read_parts(parts: list[Path], sha256: str | None, source: str) -> np.ndarray:
    """The concatenation of ``parts`` as one ``uint8`` array, its SHA-256 checked."""
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise CheckpointError(f"{source}: missing chunk files: {', '.join(missing)}")
    buf = np.empty(sum(p.stat().st_size for p in parts), dtype=np.uint8)
    view, at, digest = buf.data.cast("B"), 0, hashlib.sha256()
    for part in parts:
        with part.open("rb") as fh:
            while n := fh.readinto(view[at : at + (1 << 24)]):
                digest.update(view[at : at + n])
                at += n
    _check_digest(digest.hexdigest(), sha256, source)
    return buf


class _Tensor:
    def __init__(self, name: str, ne: tuple[int, ...], qtype: Any, data: np.ndarray) -> None:
        self.name, self.shape, self.tensor_type, self.data = name, ne, qtype, data


@dataclass(frozen=True)
class _Info:
    """One tensor's header entry: dims ``ne`` (fastest first), ggml type, bytes and offset."""

    name: str
    ne: tuple[int, ...]
    kind: Any  # gguf.GGMLQuantizationType
    n_bytes: int
    offset: int  # from the start of the data section

    def describe(self) -> str:
        return f"{self.name} ({self.kind.name}, dims {list(self.ne)}, {self.n_bytes:,} bytes)"


class BufferReader:
    """A GGUF file in memory -> ``fields`` (key -> Python value) and ``tensors`` (name, dims
    ``ne`` fastest first, ggml type, raw bytes shaped as ``gguf.GGUFReader`` shapes them).

    The header is checked before anything is sized by it, as llama.cpp checks it: counts and
    lengths must fit in the file, dims must be positive (at most 4 of them), type codes known,
    and the tensors must tile the data section in order, each at the aligned end of the one
    before (a tensor whose type or shape was changed no longer fits, nor does a shifted offset).
    Every refusal is a `CheckpointError` naming the file and the field or tensor.
    """

    _SCALARS: ClassVar[dict[int, str]] = {
        0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
        11: "<q", 12: "<d",
    }  # fmt: skip
    _STRING, _ARRAY = 8, 9
    MAX_DIMS = 4  # GGML_MAX_DIMS
    MAX_NESTING = 3  # arrays of arrays of arrays: more is a damaged type code, not a real file

    def __init__(self, buf: np.ndarray, source: str) -> None:
        self._b, self.source, self.size = buf.data.cast("B"), source, int(buf.size)
        self.fields: dict[str, Any] = {}
        self.tensors: list[_Tensor] = []
        self._at = "the header"  # what is being read, for errors
        try:
            self._parse(buf)
        except (struct.error, ValueError, OverflowError, IndexError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(
                f"{source}: not a readable GGUF file, truncated or corrupt: reading "
                f"{self._at} ({type(exc).__name__}: {exc})"
            ) from exc

    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.source}: not a readable GGUF file, truncated or corrupt: {what}"
        )

    def _parse(self, buf: np.ndarray) -> None:
        from gguf.constants import GGML_QUANT_SIZES

        if self.size < 4 or bytes(self._b[:4]) != b"GGUF":
            if self.size < 4:
                raise self._fail(f"{self.size} bytes, not even the magic")
            raise CheckpointError(
                f"{self.source}: not a GGUF file (bad magic {bytes(self._b[:4])!r})"
            )
        if self.size < 24:
            raise self._fail(f"{self.size} bytes, shorter than a GGUF header")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._b, 4)
        if version not in (2, 3):
            raise CheckpointError(
                f"{self.source}: GGUF version {version} is not supported (2 and 3 are)"
            )
        # a key/value pair takes at least 13 bytes, a tensor entry at least 32
        if 24 + 13 * n_kv + 32 * n_tensors > self.size:
            raise self._fail(
                f"the header counts {n_kv:,} metadata fields and {n_tensors:,} tensors, more "
                f"than a file of {self.size:,} bytes holds"
            )
        pos = 24
        for k in range(n_kv):
            self._at = f"the key of metadata field {k + 1} of {n_kv}"
            key, pos = self._str(pos, "a metadata key")
            self._at = f"metadata field {key!r}"
            (t,) = struct.unpack_from("<I", self._b, pos)
            if key in self.fields:
                raise self._fail(f"metadata field {key!r} appears twice")
            self.fields[key], pos = self._value(t, pos + 4, key, 0)
        infos, pos = self._infos(n_tensors, pos)
        align = self.fields.get("general.alignment", 32)
        if (
            isinstance(align, bool)
            or not isinstance(align, int)
            or align < 1
            or align & (align - 1)
        ):
            raise CheckpointError(
                f"{self.source}: general.alignment must be a power of two, got {shown(align)}"
            )
        start = pos + (-pos % align)
        self._check_layout(infos, start, align)
        for info in infos:
            block, type_size = GGML_QUANT_SIZES[info.kind]
            rows = (*reversed(info.ne[1:]), info.ne[0] // block * type_size)
            lo = start + info.offset
            data = buf[lo : lo + info.n_bytes].reshape(rows)
            self.tensors.append(_Tensor(info.name, info.ne, info.kind, data))

    def _infos(self, n_tensors: int, pos: int) -> tuple[list[_Info], int]:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        infos: list[_Info] = []
        names: set[str] = set()
        for k in range(n_tensors):
            self._at = f"tensor entry {k + 1} of {n_tensors}"
            name, pos = self._str(pos, "a tensor name")
            self._at = f"the entry of tensor {name}"
            if name in names:
                raise self._fail(f"tensor {name} appears twice")
            names.add(name)
            (n_dims,) = struct.unpack_from("<I", self._b, pos)
            if not 1 <= n_dims <= self.MAX_DIMS:
                raise self._fail(f"tensor {name} has {n_dims} dims (1 to {self.MAX_DIMS} allowed)")
            ne = tuple(int(n) for n in struct.unpack_from(f"<{n_dims}Q", self._b, pos + 4))
            qtype, offset = struct.unpack_from("<IQ", self._b, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            if min(ne) < 1:
                raise self._fail(f"tensor {name} has a zero dimension (dims {list(ne)})")
            try:
                kind = GGMLQuantizationType(qtype)
                block, type_size = GGML_QUANT_SIZES[kind]
            except (ValueError, KeyError):
                raise self._fail(f"tensor {name} has an unknown ggml type code {qtype}") from None
            if ne[0] % block:
                raise self._fail(
                    f"tensor {name} ({kind.name}) has dims {list(ne)}: the first is not a "
                    f"multiple of the {block}-value {kind.name} block"
                )
            n_bytes = math.prod(ne) // block * type_size
            if n_bytes > self.size:
                raise self._fail(
                    f"tensor {name} ({kind.name}, dims {list(ne)}) needs {n_bytes:,} bytes, "
                    f"more than the whole file ({self.size:,})"
                )
            infos.append(_Info(name, ne, kind, n_bytes, int(offset)))
        return infos, pos

    def _check_layout(self, infos: list[_Info], start: int, align: int) -> None:
        """Each tensor lies in the data section and no two overlap; then, as llama.cpp requires,
        they follow each other with only the alignment padding between them and the file ends
        with the last one (a tensor whose type code or dims changed no longer fits)."""
        ordered = sorted(infos, key=lambda i: (i.offset, i.n_bytes))
        for k, info in enumerate(ordered):
            end = start + info.offset + info.n_bytes
            if end > self.size:
                raise self._fail(
                    f"tensor {info.describe()} needs bytes up to {end:,} but the file has {self.size:,}"
                )
            if k and info.offset < ordered[k - 1].offset + ordered[k - 1].n_bytes:
                raise self._fail(
                    f"tensor {info.describe()} at offset {info.offset:,} overlaps tensor "
                    f"{ordered[k - 1].describe()} at offset {ordered[k - 1].offset:,}"
                )
        at = 0  # the aligned end of the tensors so far, relative to ``start``
        for k, info in enumerate(ordered):
            if info.offset != at:
                after = (
                    "the data section's start" if k == 0 else f"tensor {ordered[k - 1].describe()}"
                )
                raise self._fail(
                    f"tensor {info.describe()} at offset {info.offset:,} leaves a gap of "
                    f"{info.offset - at:,} bytes after {after} (expected offset {at:,}); a "
                    "tensor's offset, type code or dims are wrong"
                )
            at = info.offset + info.n_bytes
            at += -at % align
        trailing = self.size - (start + at)
        if ordered and trailing > 0:
            raise self._fail(
                f"{trailing:,} bytes after the last tensor, {ordered[-1].describe()}; a tensor's "
                "type code or dims are wrong"
            )

    def _str(self, p: int, what: str) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._b, p)
        if p + 8 + n > self.size:
            raise self._fail(f"{what} at byte {p:,} claims {n:,} bytes, past the end of the file")
        try:
            return bytes(self._b[p + 8 : p + 8 + n]).decode("utf-8"), p + 8 + n
        except UnicodeDecodeError:
            raise self._fail(f"{what} at byte {p:,} is not UTF-8") from None

    def _value(self, t: int, p: int, key: str, depth: int) -> tuple[Any, int]:
        if t in self._SCALARS:
            fmt = self._SCALARS[t]
            return struct.unpack_from(fmt, self._b, p)[0], p + struct.calcsize(fmt)
        if t == self._STRING:
            return self._str(p, f"the value of {key!r}")
        if t == self._ARRAY:
            if depth >= self.MAX_NESTING:
                raise self._fail(f"metadata field {key!r} nests arrays {depth + 1} deep")
            et, count = struct.unpack_from("<IQ", self._b, p)
            p += 12
            if et in self._SCALARS:
                fmt = self._SCALARS[et]
                size = struct.calcsize(fmt)
                if p + count * size > self.size:
                    raise self._fail(
                        f"metadata field {key!r} claims {count:,} entries, past the end of the file"
                    )
                dtype = np.dtype(fmt.replace("?", "b1")).newbyteorder("<")
                arr = np.frombuffer(self._b, dtype=dtype, count=count, offset=p)
                return arr.tolist(), p + count * size
            if p + count * 8 > self.size:  # a string or an array takes at least 8 bytes
                raise self._fail(
                    f"metadata field {key!r} claims {count:,} entries, past the end of the file"
                )
            out = []
            for _ in range(count):
                item, p = self._value(et, p, key, depth + 1)
                out.append(item)
            return out, p
        raise self._fail(f"metadata field {key!r} has an unknown value type {t}")


def _check_digest(digest: str, expected: str | None, source: str) -> None:
    if expected is not None and digest != expected.lower():
        raise CheckpointError(
            f"{source}: the chunks concatenate to SHA-256 {digest}, but the package lists "
            f"{expected}; reinstall the packages"
        )
