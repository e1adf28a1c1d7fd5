"""Read a llama.cpp GGUF file into a `DecoderConfig`, a state dict and a tokenizer.

Quantised tensors (Q4_1, Q8_0, Q4_K, Q6_K, ...) are dequantised to float32 with
``gguf.quants.dequantize``. GGUF lists a tensor's dims fastest-varying first (``[in, out]`` for
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
from headcount.loaders.config import DecoderConfig
from headcount.loaders.families import GEMMA3_GGUF, LLAMA_GGUF, Family, apply_family
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


def _open(path: Path) -> Any:
    import gguf

    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # numpy/struct errors of every kind on a damaged header
        raise CheckpointError(
            f"{path}: not a readable GGUF file, truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    size = path.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != int(t.n_bytes):
            raise CheckpointError(
                f"{path}: truncated GGUF file: tensor {t.name} needs bytes up to {end:,} "
                f"but the file has {size:,}"
            )
    return reader


def read_fields(reader: Any, path: Path) -> dict[str, Any]:
    """GGUF metadata as plain Python values."""
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        try:
            value = field.contents()
        except Exception as exc:
            raise CheckpointError(f"{path}: corrupt GGUF metadata field {key!r} ({exc})") from exc
        out[key] = value
    return out


class _GGUFTensors:
    def __init__(self, reader: Any, path: Path) -> None:
        self.path = str(path)
        self._by_name = {t.name: t for t in reader.tensors}

    def keys(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Tensor:
        from gguf.quants import dequantize

        t = self._by_name[name]
        try:
            data = dequantize(np.asarray(t.data), t.tensor_type)
        except NotImplementedError as exc:
            raise CheckpointError(f"{self.path}: tensor {name}: {exc}") from exc
        ne = tuple(int(n) for n in t.shape)
        arr = np.array(data, dtype=np.float32, copy=True)  # F32 tensors are read-only file views
        return gguf_matrix(torch.from_numpy(arr), ne)


def _config(fields: dict[str, Any], tensor_names: set[str], path: Path) -> DecoderConfig:
    arch = fields.get("general.architecture")
    if arch not in GGUF_FAMILIES:
        raise CheckpointError(
            f"{path}: unsupported architecture {arch!r}; supported: {', '.join(sorted(GGUF_FAMILIES))}"
        )

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in fields:
            raise CheckpointError(f"{path}: GGUF metadata has no {full}")
        return fields[full]

    n_layers = int(need("block_count"))
    d_model = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(fields.get(f"{arch}.attention.head_count_kv", n_heads))
    if d_model % n_heads and f"{arch}.attention.key_length" not in fields:
        raise CheckpointError(
            f"{path}: embedding_length={d_model} is not divisible by head_count={n_heads} "
            "and attention.key_length is not given"
        )
    head_dim = int(fields.get(f"{arch}.attention.key_length", d_model // max(n_heads, 1)))
    vocab = fields.get(f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(fields.get("tokenizer.ggml.tokens", []))
    rope_scaling = fields.get(f"{arch}.rope.scaling.type")
    if rope_scaling not in (None, "none"):
        raise CheckpointError(f"{path}: RoPE scaling {rope_scaling!r} is not supported")
    eos = fields.get("tokenizer.ggml.eos_token_id")
    bos = fields.get("tokenizer.ggml.bos_token_id")
    eos_ids = () if eos is None else (int(eos),)
    extra: dict[str, Any] = {}
    if arch == "gemma3":
        extra = _gemma3_fields(fields, n_layers, d_model, n_heads, head_dim)
        tokens = fields.get("tokenizer.ggml.tokens") or []
        if "<end_of_turn>" in tokens:  # a chat turn ends generation too (HF generation_config)
            eos_ids = (*eos_ids, tokens.index("<end_of_turn>"))
    try:
        return DecoderConfig(
            vocab_size=int(vocab),
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            d_ff=int(need("feed_forward_length")),
            max_len=int(need("context_length")),
            rope_base=float(fields.get(f"{arch}.rope.freq_base", 10000.0)),
            norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            tie_embeddings="output.weight" not in tensor_names,
            qkv_bias="blk.0.attn_q.bias" in tensor_names,
            o_bias="blk.0.attn_output.bias" in tensor_names,
            architecture=str(arch),
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos_ids,
            **extra,
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _gemma3_fields(
    fields: dict[str, Any], n_layers: int, d_model: int, n_heads: int, head_dim: int
) -> dict[str, Any]:
    """Sliding window, layer types, local RoPE base and score scale of a Gemma 3 GGUF."""
    window = fields.get("gemma3.attention.sliding_window")
    pattern = int(fields.get("gemma3.attention.sliding_window_pattern", GEMMA3_SLIDING_PATTERN))
    types = tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers))
    # llama.cpp: 27B (62 layers) scales by (d_model / n_heads) ** -0.5, the others by head_dim
    scalar = d_model // n_heads if n_layers == 62 else head_dim
    return {
        "sliding_window": None if window is None else int(window),
        "layer_types": types if window is not None else None,
        "rope_local_base": float(fields.get("gemma3.rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE)),
        "query_pre_attn_scalar": float(scalar),
    }


def read_gguf(path: str | Path, source: str | None = None) -> Checkpoint:
    """Config, float32 state dict (headcount layout) and tokenizer of a GGUF file.

    ``source``: the name to report instead of ``path`` (the chunks of a split file)."""
    path = Path(path)
    name = source or str(path)
    reader = _open(path)
    fields = read_fields(reader, path)
    tensors = _GGUFTensors(reader, path)
    tensors.path = name
    config = _config(fields, set(tensors.keys()), path)
    state = apply_family(GGUF_FAMILIES[config.architecture], config, tensors)
    tokenizer, why = None, None
    try:
        tokenizer = tokenizer_from_gguf(fields, name)
    except CheckpointError as exc:
        why = str(exc)
    return Checkpoint(config, state, tokenizer, name, tokenizer_error=why)


def read_gguf_parts(parts: list[Path], sha256: str | None, source: str) -> Checkpoint:
    """Read a GGUF file shipped as byte chunks ``parts`` (in order) whose concatenation has the
    SHA-256 ``sha256`` (None: unchecked), without writing the file anywhere."""
    buf = read_parts(parts, sha256, source)
    reader = BufferReader(buf, source)
    fields = reader.fields
    tensors = _GGUFTensors(reader, Path(source))
    tensors.path = source
    config = _config(fields, set(tensors.keys()), Path(source))
    state = apply_family(GGUF_FAMILIES[config.architecture], config, tensors)
    tokenizer, why = None, None
    try:
        tokenizer = tokenizer_from_gguf(fields, source)
    except CheckpointError as exc:
        why = str(exc)
    return Checkpoint(config, state, tokenizer, source, tokenizer_error=why)


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


class BufferReader:
    """A GGUF file in memory -> ``fields`` (key -> Python value) and ``tensors`` (name, dims
    ``ne`` fastest first, ggml type, raw bytes shaped as ``gguf.GGUFReader`` shapes them)."""

    _SCALARS: ClassVar[dict[int, str]] = {
        0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
        11: "<q", 12: "<d",
    }  # fmt: skip

    def __init__(self, buf: np.ndarray, source: str) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        self._b, self.source = buf.data.cast("B"), source
        try:
            if bytes(self._b[:4]) != b"GGUF":
                raise CheckpointError(f"{source}: not a GGUF file (bad magic)")
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._b, 4)
            if version < 2:
                raise CheckpointError(f"{source}: GGUF version {version} is not supported")
            pos = 24
            self.fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key, pos = self._str(pos)
                (t,) = struct.unpack_from("<I", self._b, pos)
                self.fields[key], pos = self._value(t, pos + 4)
            infos = []
            for _ in range(n_tensors):
                name, pos = self._str(pos)
                (n_dims,) = struct.unpack_from("<I", self._b, pos)
                ne = struct.unpack_from(f"<{n_dims}Q", self._b, pos + 4)
                qtype, offset = struct.unpack_from("<IQ", self._b, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                infos.append((name, tuple(int(n) for n in ne), qtype, offset))
            align = int(self.fields.get("general.alignment", 32))
            start = pos + (-pos % align)
            self.tensors = []
            for name, ne, qtype, offset in infos:
                kind = GGMLQuantizationType(qtype)
                block, size = GGML_QUANT_SIZES[kind]
                n_bytes = math.prod(ne) // block * size
                lo = start + offset
                if lo + n_bytes > buf.size:
                    raise CheckpointError(
                        f"{source}: truncated GGUF file: tensor {name} needs bytes up to "
                        f"{lo + n_bytes:,} but the file has {buf.size:,}"
                    )
                rows = (*reversed(ne[1:]), ne[0] // block * size)
                self.tensors.append(_Tensor(name, ne, kind, buf[lo : lo + n_bytes].reshape(rows)))
        except (struct.error, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{source}: not a readable GGUF file ({exc})") from exc

    def _str(self, p: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._b, p)
        return bytes(self._b[p + 8 : p + 8 + n]).decode("utf-8"), p + 8 + n

    def _value(self, t: int, p: int) -> tuple[Any, int]:
        if t in self._SCALARS:
            fmt = self._SCALARS[t]
            return struct.unpack_from(fmt, self._b, p)[0], p + struct.calcsize(fmt)
        if t == 8:
            return self._str(p)
        if t == 9:
            et, count = struct.unpack_from("<IQ", self._b, p)
            p += 12
            if et in self._SCALARS:
                fmt = self._SCALARS[et]
                size = struct.calcsize(fmt)
                dtype = np.dtype(fmt.replace("?", "b1")).newbyteorder("<")
                arr = np.frombuffer(self._b, dtype=dtype, count=count, offset=p)
                return arr.tolist(), p + count * size
            out = []
            for _ in range(count):
                item, p = self._value(et, p)
                out.append(item)
            return out, p
        raise CheckpointError(f"{self.source}: unknown GGUF value type {t}")


def _check_digest(digest: str, expected: str | None, source: str) -> None:
    if expected is not None and digest != expected.lower():
        raise CheckpointError(
            f"{source}: the chunks concatenate to SHA-256 {digest}, but the package lists "
            f"{expected}; reinstall the packages"
        )
