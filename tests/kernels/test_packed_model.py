"""Real models on packed weights: SmolLM2 (Q4_1 + a Q8_0 embedding) and Gemma 3 (Q4_K_M: Q5_0,
Q8_0, Q4_K and Q6_K mixed inside one fused projection) load packed by default, score the same
held-out perplexity as their fp32-dequantised selves through the packed GEMV (decode path), and
save as dequantised weights that load back to the same logits."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import headcount
from headcount import kernels
from headcount.kernels.packed import PackedLinear, PackedWeight
from tests.models import checkpoints

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def dense() -> headcount.Decoder:
    model = headcount.load("smollm2", dtype=torch.float32)
    assert isinstance(model, headcount.Decoder)
    return model


def _chunked_nll(model: headcount.Decoder, ids: list[int], chunk: int) -> float:
    """Mean NLL of ids[1:], the window fed ``chunk`` tokens at a time through the KV cache (every
    projection then sees at most `kernels.MAX_ROWS` rows: the packed GEMV, as in generation)."""
    w = torch.tensor([ids])
    cache = model.new_cache(1, len(ids))
    with torch.inference_mode():
        logits = torch.cat(
            [
                model(w[:, at : at + chunk], cache=cache).logits[0]
                for at in range(0, len(ids), chunk)
            ]
        )
    return float(F.cross_entropy(logits[:-1].float(), w[0, 1:]))


def test_smollm2_loads_packed_and_scores_the_fp32_perplexity(dense: headcount.Decoder) -> None:
    packed = checkpoints.smollm2()  # headcount.load("smollm2"): the file's own format
    qkv = packed.layers[0].attn.qkv_proj
    assert isinstance(qkv, PackedLinear) and qkv.weight.types == ("Q4_1",)
    assert isinstance(packed.embed.weight, PackedWeight) and packed.embed.weight.types == ("Q8_0",)
    stored = sum(b.nbytes_stored for b in packed.buffers() if isinstance(b, PackedWeight))
    assert stored < 0.2 * sum(p.numel() * 4 for p in dense.parameters())  # 4-5 bits, not 32
    # held-out text (Hamlet is not in the training split), 384 tokens through 8-token steps
    ids = dense.tokenizer.encode(headcount.corpus("shakespeare", play="hamlet"))[500:884]
    got = _chunked_nll(packed, ids, kernels.MAX_ROWS)
    ref = _chunked_nll(dense, ids, kernels.MAX_ROWS)
    assert abs(math.exp(got) / math.exp(ref) - 1) < 5e-4, (math.exp(got), math.exp(ref))
    # prefill (dequantised weights + the float GEMM) equals the fp32 model's logits
    x = torch.tensor([ids[:64]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).logits, dense(x).logits, rtol=1e-4, atol=1e-3)


def test_packed_model_saves_dequantised_weights(dense: headcount.Decoder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    packed = checkpoints.smollm2()
    folder = tmp_path / "saved"
    packed.save(folder)
    back = headcount.load(folder)
    assert not any(isinstance(m, PackedLinear) for m in back.modules())  # safetensors: fp32
    ids = torch.tensor([dense.tokenizer.encode("The king is dead. Long live the king")])
    with torch.inference_mode():
        torch.testing.assert_close(back(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-4)


def test_gemma3_mixed_types_stay_packed_and_match_dense() -> None:
    packed = checkpoints.gemma3()
    qkv = packed.layers[0].attn.qkv_proj
    assert isinstance(qkv, PackedLinear) and len(qkv.weight.types) > 1, qkv.weight.types
    seen = {t for m in packed.modules() if isinstance(m, PackedLinear) for t in m.weight.types}
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K"} <= seen
    dense = headcount.load("gemma3", dtype=torch.float32)
    ids = torch.tensor([packed.tokenizer.encode("The capital of France is")])
    with torch.inference_mode():
        a, b = packed(ids).logits, dense(ids).logits  # 6 tokens: the packed GEMV everywhere
    torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-3)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_packed_load_without_kernels_warns_and_names_the_dense_dtype(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kernels.available():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # with the kernels: no warning
            headcount.load("smollm2")
    monkeypatch.setattr(kernels, "available", lambda: False)
    monkeypatch.setattr(kernels, "unavailable_reason", lambda: "disabled by HEADCOUNT_KERNELS=0")
    with pytest.warns(UserWarning, match=r"HEADCOUNT_KERNELS=0.*dtype=torch\.float32"):
        model = headcount.load("smollm2")
    assert isinstance(model.layers[0].attn.qkv_proj, PackedLinear)  # still the file's format
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dense on request: nothing to warn about
        headcount.load("smollm2", dtype=torch.float32)
