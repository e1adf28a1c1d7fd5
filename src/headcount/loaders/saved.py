"""Read a folder written by ``model.save``: ``headcount.json`` + ``model.safetensors`` (+ tokenizer).

``headcount.json`` holds the exact config (per-layer head counts, KV group sizes), the special
token ids and where the model came from; ``model.safetensors`` holds the weights in HuggingFace
names, read back through the same family key map as a HuggingFace folder. Reading is strict:
a missing or damaged file, or a tensor that does not fit the config, raises `CheckpointError`
naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headcount.errors import CheckpointError, ConfigError
from headcount.loaders.config import DecoderConfig, EncoderConfig
from headcount.loaders.families import apply_family
from headcount.loaders.fields import as_int, check_layer_count, shown
from headcount.loaders.gguf_reader import Checkpoint
from headcount.loaders.hf_reader import HF_FAMILIES, _SafetensorsFiles
from headcount.loaders.tokenizer import Tokenizer, tokenizer_from_file

FORMAT = "headcount"
VERSION = 1
META = "headcount.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
HF_CONFIG = "config.json"
CONFIGS: dict[str, type[DecoderConfig] | type[EncoderConfig]] = {
    DecoderConfig.kind: DecoderConfig,
    EncoderConfig.kind: EncoderConfig,
}
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def is_saved_folder(path: Path) -> bool:
    """Whether ``path`` is a folder that ``model.save`` wrote (it holds ``headcount.json``)."""
    return (path / META).is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    """``headcount.json`` of a saved folder, checked for format and version."""
    path = folder / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; a saved headcount model needs it") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(
            f"{path}: not a headcount save (format {found!r}, expected {FORMAT!r})"
        )
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: format version {meta.get('version')!r} is not supported (this headcount reads {VERSION})"
        )
    return meta


def saved_config(
    meta: dict[str, Any], path: Path, n_tensors: int | None = None
) -> DecoderConfig | EncoderConfig:
    """The model config stored in ``headcount.json`` (``path`` names the file in errors);
    ``n_tensors`` (in the weights, when known) bounds its layer count."""
    cfg = meta.get("config")
    if not isinstance(cfg, dict) or cfg.get("kind") not in CONFIGS:
        kind = cfg.get("kind") if isinstance(cfg, dict) else None
        raise CheckpointError(
            f"{path}: config must be an object with kind {' or '.join(map(repr, CONFIGS))}, got {shown(kind)}"
        )
    if n_tensors is not None:
        n_layers = as_int(cfg.get("n_layers"), f"{path}: config.n_layers", minimum=1)
        check_layer_count(n_layers, n_tensors, f"{path}: config.n_layers")
    try:
        config = CONFIGS[cfg["kind"]].from_dict(cfg)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: config: {exc}") from exc
    if config.architecture not in HF_FAMILIES:
        raise CheckpointError(
            f"{path}: architecture {config.architecture!r} is not one of {', '.join(HF_FAMILIES)}"
        )
    return config


def _tokenizer(folder: Path, meta: dict[str, Any]) -> tuple[Tokenizer | None, str | None]:
    info = meta.get("tokenizer")
    path = folder / TOKENIZER
    if info is None:
        return None, f"{folder}: saved without a tokenizer; pass token ids instead of text"
    if not isinstance(info, dict):
        raise CheckpointError(f"{folder / META}: tokenizer must be an object or null")
    for key in TOKEN_IDS:
        value = info.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise CheckpointError(f"{folder / META}: tokenizer.{key} must be an integer or null")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file, but {META} describes a tokenizer")
    tok = tokenizer_from_file(path, {k: info.get(k) for k in TOKEN_IDS})
    tok.add_bos = bool(info.get("add_bos", False))
    template = info.get("chat_template")
    tok.chat_template = template if isinstance(template, str) else None
    return tok, None


def read_saved_folder(folder: str | Path) -> Checkpoint:
    """Config, float32 state dict (headcount layout) and tokenizer of a folder ``model.save`` wrote."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such file; a saved headcount model needs it")
    tensors = _SafetensorsFiles([weights], weights)  # errors name the file
    config = saved_config(meta, folder / META, len(tensors.keys()))
    state = apply_family(HF_FAMILIES[config.architecture], config, tensors)
    tokenizer, why = _tokenizer(folder, meta)
    extra: dict[str, Any] = {"weights": str(weights), "saved_from": meta.get("source")}
    if meta.get("max_seq_length") is not None:
        where = f"{folder / META}: max_seq_length"
        extra["max_seq_length"] = as_int(meta["max_seq_length"], where, minimum=1)
    return Checkpoint(config, state, tokenizer, str(folder), tokenizer_error=why, extra=extra)
