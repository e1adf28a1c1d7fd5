"""``model.save(path)``: a folder that ``headcount.load`` reads back exactly and transformers reads too.

The folder holds:

- ``headcount.json``: format, version, the exact config (per-layer head counts, KV group sizes),
  the tokenizer's special ids, the model's source and, for encoders, ``max_seq_length``;
- ``model.safetensors``: the weights in HuggingFace names and the model's dtype, un-fused by the
  inverse of the family's load transforms (`headcount.loaders.families.unapply_family`);
- ``tokenizer.json`` and ``tokenizer_config.json``, when the model has a tokenizer;
- ``config.json`` (``LlamaConfig``, ``Qwen2Config`` or ``BertConfig``) only when transformers can
  describe the model: every layer with the same heads and evenly sized KV groups.

The folder is written into a temporary sibling and renamed into place (`headcount.outputs`), so a
failure leaves nothing half-written; its files get the usual permissions (0644 under umask 022).
Legend: L layers, H query heads, G KV heads, D head dim, C model dim.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from headcount.errors import OutputError
from headcount.kernels.packed import dense_state_dict
from headcount.loaders.config import DecoderConfig, EncoderConfig
from headcount.loaders.families import unapply_family
from headcount.loaders.hf_reader import HF_FAMILIES
from headcount.loaders.saved import (
    FORMAT,
    HF_CONFIG,
    META,
    TOKENIZER,
    TOKENIZER_CONFIG,
    VERSION,
    WEIGHTS,
)
from headcount.loaders.tokenizer import Tokenizer
from headcount.models.base import TextModel
from headcount.models.quant import Int8Linear, Int8Weight
from headcount.outputs import check_apart, prepare_target, write_atomically

log = logging.getLogger(__name__)


def save(model: TextModel, path: str | Path, *, force: bool = False) -> Path:
    """Write ``model`` to the folder ``path`` (see the module docstring); returns its absolute path.

    Refuses (`OutputError`) a target that is, is inside, or contains the model's source, and an
    existing non-empty folder unless ``force`` and it holds an earlier save, which is then
    replaced only once the new folder is complete.
    """
    target = Path(path).expanduser().absolute()
    for source in model_sources(model):
        check_apart(target, source)
    prepare_target(target, marker=META, what="saved model", force=force)
    files = _files(model)  # every tensor and document, before anything is written
    return write_atomically(target, files.write)


def write_contents(model: TextModel, folder: Path) -> None:
    """The files of a save, into the existing empty ``folder``: no checks, not atomic. For
    callers that add files before moving the folder into place (`outputs.write_atomically`)."""
    _files(model).write(folder)


def model_sources(model: TextModel) -> list[str]:
    """The checkpoint and tokenizer paths ``model`` came from, which a save never touches."""
    sources = {model.source, model.tokenizer.source if model.has_tokenizer else ""}
    return sorted(s for s in sources if s)


def write_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """``tensors`` to one safetensors file, with the ``format: pt`` metadata transformers expects."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------- contents
class _Files:
    def __init__(
        self, tensors: dict[str, Tensor], documents: dict[str, str], tokenizer: Any
    ) -> None:
        self.tensors = tensors  # checkpoint name -> CPU tensor owning its storage
        self.documents = documents  # file name -> JSON text
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer to save as tokenizer.json, or None

    def write(self, folder: Path) -> None:
        for name, text in self.documents.items():
            (folder / name).write_text(text, encoding="utf-8")
        if self.tokenizer is not None:
            self.tokenizer.save(str(folder / TOKENIZER))
        write_tensors(self.tensors, folder / WEIGHTS)


def _files(model: TextModel) -> _Files:
    cfg = model.config
    if any(isinstance(m, Int8Linear) for m in model.modules()) or any(
        isinstance(b, Int8Weight) for b in model.buffers()
    ):
        raise OutputError("an int8-quantized model cannot be saved; save it before quantize_int8")
    family = HF_FAMILIES.get(cfg.architecture)
    if family is None:
        raise OutputError(f"no HuggingFace layout for architecture {cfg.architecture!r}")
    # packed GGUF weights are written dequantised (in the dtype they look like)
    state = {k: v.detach() for k, v in dense_state_dict(model).items()}
    # clone: each piece owns its storage (safetensors refuses tensors that share memory)
    tensors = {
        k: v.to("cpu").clone(memory_format=torch.contiguous_format)
        for k, v in unapply_family(family, cfg, state).items()
    }
    tok = model.tokenizer if model.has_tokenizer else None
    backend, tok_meta = _tokenizer_parts(tok) if tok is not None else (None, None)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "tokenizer": tok_meta,
        "source": model.source,
        "dtype": str(next(iter(state.values())).dtype).removeprefix("torch."),
    }
    if isinstance(cfg, EncoderConfig):
        meta["max_seq_length"] = int(getattr(model, "max_seq_length", cfg.max_len))
    documents = {META: _json(meta)}
    hf = hf_config(cfg, meta["dtype"], tok)
    if hf is not None:
        documents[HF_CONFIG] = _json(hf)
    else:
        log.info("%s: no config.json, transformers cannot describe its layers", model.source)
    if tok is not None:
        documents[TOKENIZER_CONFIG] = _json(_tokenizer_config(tok, cfg, meta))
    return _Files(tensors, documents, backend)


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def _tokenizer_parts(tok: Tokenizer) -> tuple[Any, dict[str, Any]]:
    """The backend to save as tokenizer.json and the ids headcount.json keeps.

    A BOS that headcount adds itself (GGUF ``add_bos_token``) is written into the saved backend as
    a post-processor instead, so transformers adds it too; headcount.json then says ``add_bos``
    false and encoding is unchanged.
    """
    from tokenizers import Tokenizer as Backend
    from tokenizers.processors import TemplateProcessing

    backend = Backend.from_str(tok.backend.to_str())  # a copy: the model's stays untouched
    add_bos = tok.add_bos
    if add_bos and tok.bos_token_id is not None and backend.post_processor is None:
        bos = backend.id_to_token(tok.bos_token_id)
        backend.post_processor = TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B:1",
            special_tokens=[(bos, tok.bos_token_id)],
        )
        add_bos = False
    return backend, {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "add_bos": add_bos,
        "chat_template": tok.chat_template,
    }


def _tokenizer_config(
    tok: Tokenizer, cfg: DecoderConfig | EncoderConfig, meta: dict[str, Any]
) -> dict[str, Any]:
    """What transformers' ``AutoTokenizer`` needs next to tokenizer.json."""
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": meta.get("max_seq_length", cfg.max_len),
        "clean_up_tokenization_spaces": False,
    }
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tok, f"{name}_token_id")
        if token_id is not None:
            out[f"{name}_token"] = tok.backend.id_to_token(token_id)
    if isinstance(cfg, EncoderConfig):
        for name, token in (
            ("unk", "[UNK]"),
            ("cls", "[CLS]"),
            ("sep", "[SEP]"),
            ("mask", "[MASK]"),
        ):
            if tok.token_to_id(token) is not None:
                out[f"{name}_token"] = token
    if tok.chat_template is not None:
        out["chat_template"] = tok.chat_template
    return out


def _uniform(cfg: DecoderConfig | EncoderConfig) -> tuple[int, int] | None:
    """``(H, G)`` when every layer has H query heads in G equal groups, else None."""
    heads, kv = set(cfg.n_heads), set(cfg.n_kv_heads)  # type: ignore[arg-type]
    if len(heads) != 1 or len(kv) != 1:
        return None
    H, G = heads.pop(), kv.pop()
    groups = getattr(cfg, "group_sizes", None)  # uneven KV groups, when a config has them
    if H % G or (groups is not None and any(set(g) != {H // G} for g in groups)):
        return None
    return H, G


def hf_config(
    cfg: DecoderConfig | EncoderConfig, dtype: str, tok: Tokenizer | None = None
) -> dict[str, Any] | None:
    """The config.json transformers builds the same model from, or None when it cannot."""
    shape = _uniform(cfg)
    if shape is None or cfg.architecture == "gemma3":  # Gemma 3: headcount.json only, for now
        return None
    H, G = shape
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": H,
        "max_position_embeddings": cfg.max_len,
        "dtype": dtype,
    }
    if isinstance(cfg, EncoderConfig):
        if cfg.head_dim * H != cfg.d_model or G != H:
            return None  # BertConfig has no head_dim and no KV heads
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            **common,
            "hidden_act": cfg.activation,
            "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_eps,
            "pad_token_id": cfg.pad_token_id,
            "position_embedding_type": "absolute",
        }
    if cfg.qkv_bias == cfg.o_bias:
        model_type, arch, extra = "llama", "LlamaForCausalLM", {"attention_bias": cfg.qkv_bias}
    elif cfg.qkv_bias and cfg.head_dim * H == cfg.d_model:  # Q/K/V biases, none on O: Qwen2
        model_type, arch, extra = "qwen2", "Qwen2ForCausalLM", {"use_sliding_window": False}
    else:
        return None
    eos = list(cfg.eos_token_ids)
    pad = None if tok is None else tok.pad_token_id
    return {
        "architectures": [arch],
        "model_type": model_type,
        **common,
        "num_key_value_heads": G,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "tie_word_embeddings": cfg.tie_embeddings,
        "mlp_bias": False,
        **extra,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": pad,
    }
