"""Gemma 3 270M (GGUF Q4_K_M, four chunk packages) on headcount's modules vs transformers.

transformers' ``Gemma3ForCausalLM`` loads the same GGUF (concatenated into a temporary file);
headcount reads the chunks in place. Token ids come from transformers' tokenizer of that file
where a test is about the model, not the tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import headcount
from headcount.nn import Attention

pytestmark = pytest.mark.model

SLIDING = ["sliding"] * 5 + ["full"]


def _hamlet_ids(tok: Any, n: int) -> list[int]:
    text = headcount.corpus("shakespeare", play="hamlet")[: 12 * n]
    ids = tok(text)["input_ids"][:n]
    assert len(ids) == n
    return list(ids)


def test_config_is_gemma3_270m(gemma3: headcount.Decoder) -> None:
    cfg = gemma3.config
    assert (cfg.n_layers, cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size) == (
        18,
        640,
        256,
        2048,
        262144,
    )
    assert cfg.n_heads == (4,) * 18 and cfg.n_kv_heads == (1,) * 18  # MQA
    assert cfg.layer_types == tuple(SLIDING * 3) and cfg.sliding_window == 512
    assert (cfg.rope_base, cfg.rope_local_base, cfg.query_pre_attn_scalar) == (1e6, 1e4, 256.0)
    assert cfg.tie_embeddings and gemma3.lm_head is None and cfg.eos_token_ids == (1, 106)
    layers = gemma3.attention_layers()
    assert all(isinstance(a, Attention) for a in layers)
    assert [a.window for a in layers] == [512 if t == "sliding" else None for t in SLIDING * 3]
    assert layers[0].rope is not None and layers[0].rope.base == 1e4
    assert layers[5].rope is not None and layers[5].rope.base == 1e6
    assert layers[0].scale == 256**-0.5
    assert gemma3.has_tokenizer and gemma3.tokenizer.vocab_size == 262144
    assert gemma3.tokenizer.chat is not None and gemma3.tokenizer.chat.name == "gemma"


def test_q4_k_and_q6_k_dequantisation_on_real_tensors(gemma3: headcount.Decoder) -> None:
    """gguf's numpy dequantiser (which the loader uses) against transformers' torch one, on the
    file's own Q4_K and Q6_K tensors, and the loaded weights equal to both."""
    from gguf.constants import GGMLQuantizationType as Q
    from gguf.quants import dequantize
    from transformers.integrations.gguf.dequant import dequantize as hf_dequantize

    from headcount.loaders.gguf_reader import BufferReader, read_parts
    from headcount.loaders.registry import embedded_parts

    parts, sha = embedded_parts("gemma3")
    reader = BufferReader(read_parts(parts, sha, "gemma3"), "gemma3")
    by_name = {t.name: t for t in reader.tensors}
    checked = {
        "blk.0.attn_output.weight": (Q.Q4_K, gemma3.layers[0].attn.o_proj.weight),
        "blk.0.ffn_down.weight": (Q.Q6_K, gemma3.layers[0].mlp.down.weight),
    }
    for name, (kind, ours) in checked.items():
        t = by_name[name]
        assert t.tensor_type == kind
        ref = dequantize(np.asarray(t.data), kind).reshape(-1)
        other = hf_dequantize(torch.from_numpy(np.asarray(t.data).reshape(-1).copy()), int(kind))
        torch.testing.assert_close(torch.from_numpy(ref.copy()), other, rtol=0, atol=0)
        out_f, in_f = t.shape[1], t.shape[0]
        torch.testing.assert_close(ours.detach(), other.view(out_f, in_f), rtol=0, atol=0)


def test_logits_equal_transformers_past_the_window(
    gemma3: headcount.Decoder, hf_gemma3: Any, hf_gemma3_tokenizer: Any
) -> None:
    ids = torch.tensor([_hamlet_ids(hf_gemma3_tokenizer, 700)])  # 700 > window 512
    with torch.inference_mode():
        ours = gemma3(ids).logits
        ref = hf_gemma3(ids).logits
    assert ours.shape == ref.shape == (1, 700, 262144)
    first = (ours[:, :300] - ref[:, :300]).abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert first <= 1e-3, f"300 tokens: max |logit difference| = {first:.2e}"
    assert diff <= 1e-3, f"700 tokens: max |logit difference| = {diff:.2e}"


def test_ring_caches_prefill_and_decode_equal_full_pass(
    gemma3: headcount.Decoder, hf_gemma3_tokenizer: Any
) -> None:
    ids = torch.tensor([_hamlet_ids(hf_gemma3_tokenizer, 560)])
    cache = gemma3.new_cache(1, 600)
    sliding = [c for c in cache if c.window is not None]
    assert len(sliding) == 15 and all(c.slots == 512 for c in sliding)
    assert all(c.slots == 600 for c in cache if c.window is None)
    with torch.inference_mode():
        full = gemma3(ids).logits
        steps = [gemma3(ids[:, :500], cache=cache).logits]
        steps += [gemma3(ids[:, t : t + 1], cache=cache).logits for t in range(500, 560)]
    steps_t = torch.cat(steps, 1)
    # the one-position steps run the packed GEMVs, whose Q8_0 segments (regrouped as Q8_0x) take
    # int16-rounded inputs; the full pass dequantises: they differ by that rounding (~1e-3 here;
    # HEADCOUNT_PACKED_ACT=float gives 2e-4), and rank the tokens the same
    torch.testing.assert_close(steps_t, full, atol=5e-3, rtol=1e-3)
    assert torch.equal(steps_t.argmax(-1), full.argmax(-1))
    assert cache.length == 560 and all(c.held == 512 for c in sliding)


def test_greedy_generation_equals_transformers(
    gemma3: headcount.Decoder, hf_gemma3: Any, hf_gemma3_tokenizer: Any
) -> None:
    prompt = _hamlet_ids(hf_gemma3_tokenizer, 520)  # decoding crosses the window
    n = 64
    ours = gemma3.generate(prompt, max_new_tokens=n, stop=[])
    with torch.inference_mode():
        ref = hf_gemma3.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    assert len(ours.ids) == n and ours.ids == ref


def test_heldout_perplexity_equals_transformers(gemma3: headcount.Decoder, hf_gemma3: Any) -> None:
    """4,096 held-out tokens (Macbeth, headcount's tokenizer) in windows of 1,024 that start
    every 512 tokens (each scores the 512 tokens the previous one did not): twice the sliding
    window, so local and global layers differ. transformers scores the same windows with HF's
    recipe (labels -100 on the context, mean loss times the scored count)."""
    text = headcount.corpus("shakespeare", play="macbeth")[:60_000]
    ids = torch.tensor(gemma3.tokenizer.encode(text)[:4096])
    assert ids.numel() == 4096
    window, stride = 1024, 512
    ours = headcount.perplexity(gemma3, ids, window=window, stride=stride)
    nll, count, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, 4096, stride):
            end = min(begin + window, 4096)
            chunk = ids[begin:end][None]  # (1, T)
            labels = chunk.clone()
            labels[:, : -(end - prev_end)] = -100  # context already scored
            n = int((labels[:, 1:] != -100).sum())
            nll += float(hf_gemma3(chunk, labels=labels).loss) * n
            count, prev_end = count + n, end
            if end == 4096:
                break
    ref = math.exp(nll / count)
    assert (ours.n_tokens, ours.n_windows) == (count, 7) == (4095, 7)
    assert abs(ours.perplexity / ref - 1) < 1e-3, f"{ours.perplexity:.4f} vs {ref:.4f}"


@pytest.mark.parametrize("context", [100, 512, 513, 4096, 32768])
def test_kv_calculator_agrees_with_the_allocated_ring_caches(
    gemma3: headcount.Decoder, context: int
) -> None:
    """``headcount kv gemma3`` prices the caches the model actually allocates (float32 here)."""
    from headcount.configs import load_shape

    shape = load_shape("gemma3")
    assert shape.sliding_window == 512 and shape.layer_types == tuple(SLIDING * 3)
    cache = gemma3.new_cache(2, context)
    assert cache.nbytes == shape.kv_bytes(context, 2, "float32")
