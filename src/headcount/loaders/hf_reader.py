"""Read a HuggingFace model folder: ``config.json`` + ``*.safetensors`` (+ ``tokenizer.json``).

Supported families: Llama-like decoders (llama, mistral, qwen2, smollm) and BERT encoders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from headcount.errors import CheckpointError, ConfigError
from headcount.loaders.config import DecoderConfig, EncoderConfig
from headcount.loaders.families import BERT_HF, GEMMA3_HF, LLAMA_HF, Family, apply_family
from headcount.loaders.fields import (
    as_bool,
    as_float,
    as_int,
    as_str,
    check_layer_count,
    shown,
    token_id,
)
from headcount.loaders.gguf_reader import Checkpoint
from headcount.loaders.tokenizer import tokenizer_from_file

DECODER_TYPES = ("llama", "mistral", "qwen2", "smollm", "smollm2")
ENCODER_TYPES = ("bert",)
HF_FAMILIES: dict[str, Family] = {
    **dict.fromkeys(DECODER_TYPES, LLAMA_HF),
    **dict.fromkeys(ENCODER_TYPES, BERT_HF),
    "gemma3": GEMMA3_HF,  # what `model.save` writes for Gemma 3 (read back through headcount.json)
}


class _SafetensorsFiles:
    """The tensors of one or more ``.safetensors`` files, opened lazily, as one mapping."""

    def __init__(self, files: list[Path], folder: Path) -> None:
        from safetensors import safe_open

        self.path = str(folder)
        self._where: dict[str, tuple[Any, Path, str]] = {}  # name -> (handle, file, name in file)
        for f in files:
            try:
                handle = safe_open(str(f), framework="pt")
                names = list(handle.keys())
            except Exception as exc:  # SafetensorError: header too small, invalid JSON, bad offsets
                raise CheckpointError(f"{f}: not a readable safetensors file ({exc})") from exc
            for n in names:
                if n in self._where:
                    raise CheckpointError(f"{f}: tensor {n} is also in {self._where[n][1]}")
                self._where[n] = (handle, f, n)

    def strip_prefix(self, prefix: str) -> None:
        """Drop a model-class prefix (``bert.``) that task-head checkpoints put on every encoder key."""
        self._where = {k.removeprefix(prefix): v for k, v in self._where.items()}

    def keys(self) -> list[str]:
        return list(self._where)

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self._where)

    def file_of(self, name: str) -> str:
        return str(self._where[name][1])

    def shape(self, name: str) -> tuple[int, ...]:
        handle, f, in_file = self._where[name]
        try:
            return tuple(int(n) for n in handle.get_slice(in_file).get_shape())
        except Exception as exc:  # SafetensorError
            raise CheckpointError(f"{f}: cannot read the shape of tensor {name} ({exc})") from exc

    def get(self, name: str) -> Tensor:
        handle, f, in_file = self._where[name]
        try:
            t = handle.get_tensor(in_file)
        except Exception as exc:
            raise CheckpointError(
                f"{f}: cannot read tensor {name} ({exc}); is the file truncated?"
            ) from exc
        if not t.is_floating_point():
            raise CheckpointError(
                f"{f}: tensor {name} holds {t.dtype} values; weights must be floating point"
            )
        return t.float()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no such file; a HuggingFace model folder needs config.json"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


class _Config:
    """Typed reads of ``config.json``: a field that sizes the model must be an integer (``16``
    or ``16.0``, never ``16.9``, ``"16"`` or ``true``); errors name the file and the field."""

    def __init__(self, cfg: dict[str, Any], path: Path) -> None:
        self.cfg, self.path = cfg, path

    def raw(self, *keys: str, default: Any = ...) -> Any:
        for k in keys:
            if self.cfg.get(k) is not None:
                return self.cfg[k]
        if default is ...:
            raise CheckpointError(f"{self.path}: missing {' / '.join(keys)}")
        return default

    def where(self, key: str) -> str:
        return f"{self.path}: {key}"

    def get_int(self, key: str, default: Any = ..., minimum: int | None = 1) -> Any:
        value = self.raw(key, default=default)
        return value if value is None else as_int(value, self.where(key), minimum)

    def get_float(self, key: str, default: float) -> float:
        return as_float(self.raw(key, default=default), self.where(key))

    def get_bool(self, key: str, default: bool) -> bool:
        return as_bool(self.raw(key, default=default), self.where(key))

    def get_str(self, key: str, default: str) -> str:
        return as_str(self.raw(key, default=default), self.where(key))


def _check_rope(c: _Config) -> None:
    """Only plain RoPE is read: ``rope_scaling`` / ``rope_parameters`` of another type are refused."""
    for key in ("rope_scaling", "rope_parameters"):
        value = c.cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise CheckpointError(f"{c.where(key)} must be an object or null, got {shown(value)}")
        kind = value.get("rope_type", value.get("type"))
        if kind not in (None, "default"):
            raise CheckpointError(f"{c.where(key)}: RoPE type {shown(kind)} is not supported")


def _decoder_config(cfg: dict[str, Any], path: Path, n_tensors: int) -> DecoderConfig:
    c = _Config(cfg, path)
    n_layers = c.get_int("num_hidden_layers")
    check_layer_count(n_layers, n_tensors, c.where("num_hidden_layers"))
    d_model = c.get_int("hidden_size")
    n_heads = c.get_int("num_attention_heads")
    n_kv = c.get_int("num_key_value_heads", default=n_heads)
    if n_heads % n_kv:
        raise CheckpointError(
            f"{path}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )
    head_dim = c.get_int("head_dim", default=None)
    if head_dim is None:
        if d_model % n_heads:
            raise CheckpointError(
                f"{path}: hidden_size={d_model} is not divisible by num_attention_heads={n_heads} "
                "and head_dim is not given"
            )
        head_dim = d_model // n_heads
    _check_rope(c)
    max_len = c.get_int("max_position_embeddings")
    window = (
        c.get_int("sliding_window", default=None)
        if c.get_bool("use_sliding_window", True)
        else None
    )
    if window:  # Mistral-style sliding window: within it, attention is plain causal attention
        max_len = min(max_len, window)
    vocab = c.get_int("vocab_size")
    eos = cfg.get("eos_token_id")
    eos_list = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    eos_ids = tuple(
        token_id(e, f"{c.where('eos_token_id')}[{k}]", vocab) for k, e in enumerate(eos_list)
    )
    model_type = cfg["model_type"]
    rope = cfg.get("rope_theta")
    where_rope = c.where("rope_theta")
    if rope is None and isinstance(cfg.get("rope_parameters"), dict):
        rope = cfg["rope_parameters"].get("rope_theta")
        where_rope = c.where("rope_parameters.rope_theta")
    bias = c.get_bool("attention_bias", model_type == "qwen2")
    try:
        return DecoderConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv,
            head_dim=head_dim,
            d_ff=c.get_int("intermediate_size"),
            max_len=max_len,
            rope_base=10000.0 if rope is None else as_float(rope, where_rope),
            norm_eps=c.get_float("rms_norm_eps", 1e-6),
            tie_embeddings=c.get_bool("tie_word_embeddings", False),
            qkv_bias=bias,
            o_bias=c.get_bool("attention_bias", False),
            architecture=model_type,
            bos_token_id=token_id(cfg.get("bos_token_id"), c.where("bos_token_id"), vocab),
            eos_token_ids=tuple(e for e in eos_ids if e is not None),
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _encoder_config(cfg: dict[str, Any], path: Path, n_tensors: int) -> EncoderConfig:
    c = _Config(cfg, path)
    n_layers = c.get_int("num_hidden_layers")
    check_layer_count(n_layers, n_tensors, c.where("num_hidden_layers"))
    d_model = c.get_int("hidden_size")
    n_heads = c.get_int("num_attention_heads")
    if d_model % n_heads:
        raise CheckpointError(
            f"{path}: hidden_size={d_model} is not divisible by num_attention_heads={n_heads}"
        )
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise CheckpointError(
            f"{path}: position_embedding_type {shown(pos)} is not supported (only 'absolute')"
        )
    try:
        return EncoderConfig(
            vocab_size=c.get_int("vocab_size"),
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            head_dim=d_model // n_heads,
            d_ff=c.get_int("intermediate_size"),
            max_len=c.get_int("max_position_embeddings"),
            type_vocab_size=c.get_int("type_vocab_size", default=2),
            norm_eps=c.get_float("layer_norm_eps", 1e-12),
            activation=c.get_str("hidden_act", "gelu"),
            pad_token_id=c.get_int("pad_token_id", default=0, minimum=0),
            architecture=cfg["model_type"],
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def read_config(folder: Path, n_tensors: int) -> DecoderConfig | EncoderConfig:
    """The config of ``folder/config.json``; ``n_tensors`` (in the weights) bounds the layer count."""
    path = folder / "config.json"
    cfg = _read_json(path)
    model_type = cfg.get("model_type")
    if isinstance(model_type, str) and model_type in DECODER_TYPES:
        return _decoder_config(cfg, path, n_tensors)
    if isinstance(model_type, str) and model_type in ENCODER_TYPES:
        return _encoder_config(cfg, path, n_tensors)
    raise CheckpointError(
        f"{path}: unsupported architecture model_type={shown(model_type)}; supported: "
        f"{', '.join(DECODER_TYPES + ENCODER_TYPES)}"
    )


def read_hf_folder(folder: str | Path) -> Checkpoint:
    """Config, float32 state dict (headcount layout) and tokenizer of a HuggingFace folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    raw = _read_json(folder / "config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{folder}: no *.safetensors files (PyTorch .bin checkpoints are not read)"
        )
    tensors = _SafetensorsFiles(files, folder)
    config = read_config(folder, len(tensors.keys()))
    if isinstance(config, EncoderConfig) and tensors.has_prefix("bert."):
        tensors.strip_prefix("bert.")
    state = apply_family(HF_FAMILIES[config.architecture], config, tensors)
    tok_path = folder / "tokenizer.json"
    tokenizer, why = None, None
    if tok_path.is_file():
        tokenizer = tokenizer_from_file(tok_path, raw)
    else:
        why = f"{tok_path}: no tokenizer.json in the model folder; pass token ids instead of text"
    extra: dict[str, Any] = {}
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        seq = _read_json(st_cfg).get("max_seq_length")
        if seq is not None:
            extra["max_seq_length"] = as_int(seq, f"{st_cfg}: max_seq_length", minimum=1)
    return Checkpoint(config, state, tokenizer, str(folder), tokenizer_error=why, extra=extra)
