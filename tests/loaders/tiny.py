"""Tiny random checkpoints written the way real tools write them: transformers' save_pretrained
(HF folders) and gguf's GGUFWriter with llama.cpp's Q/K permutation (GGUF files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headcount.loaders.transforms import llama_cpp_permute

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES = dict(
    vocab_size=96,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
    max_position_embeddings=64,
)


def hf_decoder(folder: Path, model_type: str = "llama", **overrides: Any) -> Any:
    """A random HF causal LM of ``model_type`` saved to ``folder`` (config.json + model.safetensors)."""
    import transformers

    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_cls, model_cls = classes[model_type]
    kwargs: dict[str, Any] = {
        **SIZES,
        "rope_theta": 5000.0,
        "tie_word_embeddings": False,
        **overrides,
    }
    torch.manual_seed(0)
    config = config_cls(**kwargs)
    model = model_cls(config).eval()
    with torch.no_grad():  # random, non-trivial norms and biases
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


def hf_bert(folder: Path, **overrides: Any) -> Any:
    import transformers

    torch.manual_seed(0)
    sizes = {k: v for k, v in SIZES.items() if k != "num_key_value_heads"}
    config = transformers.BertConfig(**{**sizes, "type_vocab_size": 2, **overrides})
    config._attn_implementation = "eager"  # the reference must return attention weights
    model = transformers.BertModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


def write_gguf(
    path: Path,
    hf_model: Any,
    arch: str = "llama",
    tokenizer: bool = False,
    quant: dict[str, Any] | None = None,
    per_layer_heads: bool = False,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``hf_model`` (a Llama) as llama.cpp's converter would: F32, Q/K rows permuted.

    ``quant``: ggml types (``gguf.GGMLQuantizationType``) of some block matrices by GGUF name
    (``"ffn_down"``); ``per_layer_heads``: head counts as per-layer arrays, as llama.cpp writes
    models whose layers differ; ``meta``: metadata fields to set (typed by their Python value)
    or, given None, to leave out."""
    import gguf

    cfg = hf_model.config
    H, G = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    if per_layer_heads:
        w.add_array(f"{arch}.attention.head_count", [H] * cfg.num_hidden_layers)
        w.add_array(f"{arch}.attention.head_count_kv", [G] * cfg.num_hidden_layers)
    else:
        w.add_head_count(H)
        w.add_head_count_kv(G)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer:
        tokens = ["<s>", "</s>", *[chr(ord("!") + i) for i in range(cfg.vocab_size - 2)]]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3, 3] + [1] * (cfg.vocab_size - 2))
        w.add_token_merges([])
        w.add_eos_token_id(1)
    for key, value in (meta or {}).items():
        if value is None:
            w.kv_data[0].pop(key, None)
        else:
            w.kv_data[0][key] = gguf.GGUFValue(value, gguf_type(value))
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg in ("attn_q", "attn_k"):  # per head, as many heads as the rows hold
                t = llama_cpp_permute(torch.from_numpy(t), t.shape[0] // D).numpy()
            qtype = (quant or {}).get(gg)
            if qtype is None:
                w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
            else:
                q = gguf.quants.quantize(np.ascontiguousarray(t), qtype)
                w.add_tensor(f"blk.{i}.{gg}.weight", q, raw_dtype=qtype)
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_type(value: Any) -> Any:
    """The GGUF value type a Python value is written as."""
    import gguf

    T = gguf.GGUFValueType
    if isinstance(value, bool):
        return T.BOOL
    if isinstance(value, int):
        return T.INT32 if value < 0 else (T.UINT32 if value < 2**32 else T.UINT64)
    if isinstance(value, float):
        return T.FLOAT32
    if isinstance(value, str):
        return T.STRING
    return T.ARRAY


def gguf_layout(raw: bytes) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]], int]:
    """Where the fields and tensor entries of a GGUF file's header are, for tests that damage
    them: ``fields[key]`` has ``type_at`` and ``value_at``; ``tensors[name]`` has ``n_dims_at``,
    ``dims_at``, ``type_at``, ``offset_at`` and the values ``dims``, ``type``, ``offset``;
    and the start of the data section. An independent reader (not headcount's)."""
    import struct

    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip(t: int, p: int) -> int:
        if t in scalar:
            return p + scalar[t]
        if t == 8:
            return p + 8 + struct.unpack_from("<Q", raw, p)[0]
        et, n = struct.unpack_from("<IQ", raw, p)
        p += 12
        for _ in range(n):
            p = skip(et, p)
        return p

    n_tensors, n_kv = struct.unpack_from("<QQ", raw, 8)
    pos, fields, tensors = 24, {}, {}
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", raw, pos)[0]
        key = raw[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (t,) = struct.unpack_from("<I", raw, pos)
        fields[key] = {"key_at": pos - 8 - n, "type_at": pos, "value_at": pos + 4, "type": t}
        pos = skip(t, pos + 4)
    for _ in range(n_tensors):
        n = struct.unpack_from("<Q", raw, pos)[0]
        name = raw[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        (n_dims,) = struct.unpack_from("<I", raw, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", raw, pos + 4)
        type_at = pos + 4 + 8 * n_dims
        qtype, offset = struct.unpack_from("<IQ", raw, type_at)
        tensors[name] = {
            "n_dims_at": pos,
            "dims_at": pos + 4,
            "type_at": type_at,
            "offset_at": type_at + 4,
            "dims": dims,
            "type": qtype,
            "offset": offset,
        }
        pos = type_at + 12
    return fields, tensors, pos + (-pos % 32)


class FakeLlama:
    """A random Llama-shaped model (HF names) with the config attributes `write_gguf` and
    `write_hf` read: a stand-in for a transformers model where a test needs no transformers
    (the fuzz tests write hundreds of files)."""

    def __init__(self, seed: int = 0, **overrides: Any) -> None:
        from types import SimpleNamespace

        sizes = {**SIZES, "vocab_size": 64, "intermediate_size": 64, **overrides}
        self.config = SimpleNamespace(
            **sizes,
            model_type="llama",
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        )
        c = self.config
        D = c.hidden_size // c.num_attention_heads
        g = torch.Generator().manual_seed(seed)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * 0.1

        sd = {"model.embed_tokens.weight": rand(c.vocab_size, c.hidden_size)}
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            sd[p + "input_layernorm.weight"] = 1 + rand(c.hidden_size)
            sd[p + "self_attn.q_proj.weight"] = rand(c.num_attention_heads * D, c.hidden_size)
            sd[p + "self_attn.k_proj.weight"] = rand(c.num_key_value_heads * D, c.hidden_size)
            sd[p + "self_attn.v_proj.weight"] = rand(c.num_key_value_heads * D, c.hidden_size)
            sd[p + "self_attn.o_proj.weight"] = rand(c.hidden_size, c.num_attention_heads * D)
            sd[p + "post_attention_layernorm.weight"] = 1 + rand(c.hidden_size)
            sd[p + "mlp.gate_proj.weight"] = rand(c.intermediate_size, c.hidden_size)
            sd[p + "mlp.up_proj.weight"] = rand(c.intermediate_size, c.hidden_size)
            sd[p + "mlp.down_proj.weight"] = rand(c.hidden_size, c.intermediate_size)
        sd["model.norm.weight"] = 1 + rand(c.hidden_size)
        sd["lm_head.weight"] = rand(c.vocab_size, c.hidden_size)
        self._state = sd

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._state)


def write_hf(folder: Path, model: Any) -> Path:
    """``model`` (a `FakeLlama`) as a HuggingFace folder: config.json + model.safetensors."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    cfg = {
        **{k: getattr(c, k) for k in SIZES},
        "model_type": "llama",
        "rope_theta": c.rope_parameters["rope_theta"],
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "eos_token_id": 1,
        "bos_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    return folder
