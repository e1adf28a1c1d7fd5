"""One decode path (issue 11): cached decoding through the modules' own single-position branch
equals a full forward of the whole sequence (to float rounding), generation drives the model and
equals recomputing without a cache, batches of left-padded prompts give each row's batch-1
tokens, and bfloat16 on a CPU without bf16 units takes float32 GEMMs / the GEMV kernel."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch.profiler import profile

import headcount
from headcount.errors import ConfigError, ShapeError
from headcount.models import Decoder, DecoderConfig, generation
from headcount.models.generation import Decoding, stream_batch
from headcount.models.quant import quantize_int8
from headcount.nn import Attention
from tests.models.tiny import tiny_gemma3


def _tiny(tied: bool = True, bias: bool = False) -> Decoder:
    cfg = DecoderConfig(
        vocab_size=96,
        d_model=64,
        n_layers=3,
        n_heads=(4, 4, 2),
        n_kv_heads=(2, 1, 2),
        head_dim=16,
        d_ff=96,
        max_len=48,
        tie_embeddings=tied,
        qkv_bias=bias,
    )
    torch.manual_seed(0)
    return Decoder(cfg).eval()


class _CountSteps:
    """Counts calls of `Attention._step` (the single-position branch) while active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = Attention._step

        def spy(attn: Attention, *args: Any) -> torch.Tensor:
            self.calls += 1
            return real(attn, *args)

        monkeypatch.setattr(Attention, "_step", spy)


def _decode_vs_full(model: Decoder, ids: list[int], n_prompt: int) -> tuple[torch.Tensor, ...]:
    """Logits of a prefill of ``n_prompt`` ids then one id per step, and of one full forward."""
    with torch.inference_mode():
        full = model(torch.tensor([ids])).logits[0, n_prompt - 1 :]  # (n, V)
        run = Decoding(model, len(ids))
        got = [run.prefill(ids[:n_prompt])] + [run.step(t) for t in ids[n_prompt:]]
    return torch.cat(got), full


@pytest.mark.parametrize(("tied", "bias", "gate"), [(True, False, False), (False, True, True)])
def test_cached_decode_equals_full_forward(
    tied: bool, bias: bool, gate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _tiny(tied, bias)
    if gate:
        for attn in model.attention_layers():
            attn.head_gate = torch.linspace(0.0, 1.5, attn.n_heads)
    count = _CountSteps(monkeypatch)
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    got, full = _decode_vs_full(model, ids, 5)
    assert count.calls == 6 * 3  # every decode step of every layer took the lean branch
    assert got.shape == full.shape == (7, 96)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_sliding_window_layers_decode_on_the_same_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny Gemma 3 (per-head norms, (1 + w) norms, MQA, two sliding layers of window 6 with
    ring caches, one global layer): decoding past the window equals the full forward."""
    model = tiny_gemma3(6, ("sliding", "full", "sliding"))
    count = _CountSteps(monkeypatch)
    ids = torch.randint(0, 50, (20,)).tolist()
    got, full = _decode_vs_full(model, ids, 4)  # 16 steps, 10 of them past the window
    assert count.calls == 16 * 3
    assert [c.slots for c in Decoding(model, 20).cache] == [6, 20, 6]
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_hooks_and_masks_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny()
    seen: list[tuple[int, ...]] = []
    model.attention_layers()[1].weights_hook = lambda w: seen.append(tuple(w.shape))
    count = _CountSteps(monkeypatch)
    got, full = _decode_vs_full(model, [7, 8, 9, 10, 11], 3)
    assert count.calls == 2 * 2  # layers 0 and 2 only
    assert seen[-2:] == [(1, 4, 1, 4), (1, 4, 1, 5)]  # weights of every decode step
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    model.attention_layers()[1].weights_hook = None
    count.calls = 0
    with torch.inference_mode():  # a padding mask: the general path, same logits
        cache = model.new_cache(1, 6)
        model(torch.tensor([[7, 8, 9]]), cache=cache)
        out = model(torch.tensor([[10]]), attention_mask=torch.ones(1, 4), cache=cache)
    assert count.calls == 0
    torch.testing.assert_close(out.logits[0], full[1:2], rtol=1e-5, atol=1e-5)


def test_module_hooks_still_run_on_the_decode_step() -> None:
    """Submodules without hooks are called through their ``forward`` (`headcount.nn.calls.bare`);
    a forward hook on a layer's MLP, one that changes a projection's output, and a global module
    hook see every call of prefill and decode steps alike, so decoding still equals the full
    forward under the same hooks."""
    model = _tiny()
    ids = [7, 8, 9, 10, 11, 12]
    plain, _ = _decode_vs_full(model, ids, 3)
    mlp_calls: list[tuple[int, ...]] = []
    norms: list[int] = []
    handles = [
        model.layers[1].mlp.register_forward_hook(lambda m, a, out: mlp_calls.append(out.shape)),
        model.layers[0].attn.o_proj.register_forward_hook(lambda m, a, out: out * 0.5),
        torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, out: norms.append(1) if isinstance(m, headcount.nn.RMSNorm) else None
        ),
    ]
    try:
        got, full = _decode_vs_full(model, ids, 3)
    finally:
        for h in handles:
            h.remove()
    assert mlp_calls == [(1, 6, 64), (1, 3, 64)] + [(1, 1, 64)] * 3  # full, prefill, 3 steps
    assert len(norms) == 5 * 7  # 2 per layer and the final one, in each of the 5 forwards
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 1e-2  # the halved projection changed the logits


def test_gradients_through_a_step_after_inference_mode_decoding() -> None:
    """RoPE's tables and rotation, first built while decoding under inference mode, still serve
    a step that autograd records (importance scoring after generating): the same gradient as a
    copy of the model that never decoded."""
    model, fresh = _tiny(), _tiny()
    run = Decoding(model, 10)
    run.prefill([1, 2, 3])
    run.step(4)  # the rotation of position 3 is now kept, built under inference mode
    grads = []
    for m in (model, fresh):
        cache = m.new_cache(1, 10)
        with torch.no_grad():
            m(torch.tensor([[1, 2, 3]]), cache=cache)
        m(torch.tensor([[4]]), cache=cache).logits.square().sum().backward()  # position 3
        grads.append(m.layers[0].attn.qkv_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_greedy_generation_equals_recompute(variant: str) -> None:
    model = _tiny()
    if variant == "int8":
        model = quantize_int8(model)
    prompt, n = [5, 6, 7, 8], 8
    ref = model.generate(prompt, max_new_tokens=n, stop=[], use_cache=False).ids
    assert model.generate(prompt, max_new_tokens=n, stop=[]).ids == ref and len(ref) == n
    first = ref.index(ref[3])  # stops after a stop id, which is yielded
    assert model.generate(prompt, max_new_tokens=n, stop=[ref[3]]).ids == ref[: first + 1]


def test_sampling_is_seeded() -> None:
    model = _tiny()
    kw: dict[str, Any] = dict(max_new_tokens=10, temperature=1.0, top_k=20, seed=3, stop=[])
    a, b = model.generate([1, 2], **kw).ids, model.generate([1, 2], **kw).ids
    assert a == b and len(a) == 10


def test_limits() -> None:
    model = _tiny()
    with torch.inference_mode():
        run = Decoding(model, 4)
        run.prefill([1, 2, 3, 4])
        with pytest.raises(ShapeError, match="full"):
            run.step(5)
    with pytest.raises(ShapeError, match="empty"):
        model.generate([], max_new_tokens=3)
    # the context bounds the number of new tokens
    assert len(model.generate(list(range(1, 46)), max_new_tokens=10, stop=[]).ids) == 3
    with pytest.raises(ShapeError, match="prompt 1 is empty"):
        list(stream_batch(model, [[1, 2], []], max_new_tokens=3))
    with pytest.raises(ConfigError, match="use_cache"):
        model.generate([[1, 2], [3]], max_new_tokens=3, use_cache=False)


def test_padded_batch_equals_each_prompt_alone() -> None:
    model = _tiny().double()  # float64: batched and single products round alike
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]
    singles = [model.generate(p, max_new_tokens=14, stop=[]) for p in prompts]
    batch = model.generate(prompts, max_new_tokens=14, stop=[])
    assert isinstance(batch, list) and len(batch) == 3
    for b, s in zip(batch, singles, strict=True):
        assert b.prompt_ids == s.prompt_ids and b.ids == s.ids and len(b.ids) == 14
    # each row stops on its own stop id; the others run on
    stop = singles[1].ids[2]
    got = model.generate(prompts, max_new_tokens=14, stop=[stop])
    for g, s in zip(got, singles, strict=True):
        want = s.ids[: s.ids.index(stop) + 1] if stop in s.ids else s.ids
        assert g.ids == want
        assert g.finish_reason == ("stop" if stop in s.ids else "length")


def test_padded_batch_logits_equal_single_rows() -> None:
    """The logits (not just the argmax) of each left-padded row equal its batch-1 decoding."""
    model = _tiny()
    prompts = [[5, 6, 7, 8, 9], [12, 13]]
    steps = list(stream_batch(model, prompts, max_new_tokens=6))
    assert [t.shape for t in steps] == [(2,)] * 6
    for i, p in enumerate(prompts):
        ids = p + [int(t[i]) for t in steps]
        got, full = _decode_vs_full(model, ids, len(p))
        assert [int(x) for x in got.argmax(-1)[:6]] == [int(t[i]) for t in steps]
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_equal_length_batch_takes_the_lean_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny()
    prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
    singles = [model.generate(p.tolist(), max_new_tokens=5, stop=[]).ids for p in prompts]
    count = _CountSteps(monkeypatch)
    got = model.generate(prompts, max_new_tokens=5, stop=[])
    assert [g.ids for g in got] == singles
    assert count.calls == 4 * 3  # no padding: no mask, the lean branch at B = 2


def test_bfloat16_without_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without bfloat16 arithmetic: prefill as float32 GEMMs, decode steps through
    the GEMV kernel when it is available; logits equal the plain bfloat16 forward's to bf16
    rounding, and are as close to the float64 model's as that forward's are."""
    from headcount.models import kernels

    model = _tiny()
    prompt = list(range(3, 40))  # more rows than kernels.MAX_ROWS
    ids = torch.tensor([[*prompt, 41, 42]])
    with torch.inference_mode():
        ref64 = copy.deepcopy(model).double()(ids).logits[0, len(prompt) - 1 :]
        model = model.to(torch.bfloat16)
        ref = model(ids).logits[0, len(prompt) - 1 :]
    monkeypatch.setattr(generation, "_native_half", lambda: False)
    floats: list[int] = []
    real_float = torch.Tensor.float

    def spy_float(t: torch.Tensor) -> torch.Tensor:
        floats.append(t.numel())
        return real_float(t)

    with torch.inference_mode():
        run = Decoding(model)
        monkeypatch.setattr(torch.Tensor, "float", spy_float)
        got = [run.prefill(prompt)]
        monkeypatch.setattr(torch.Tensor, "float", real_float)
        with profile() as prof:
            got += [run.step(41), run.step(42)]
    assert floats  # the float32 GEMM path ran for the prompt
    gemv = {e.key for e in prof.key_averages()} & {"headcount::gemv"}
    assert bool(gemv) == kernels.available()  # decode steps: the GEMV kernel
    out = torch.cat(got)
    assert out.dtype == torch.bfloat16
    # decode steps round differently from the full forward (a fused attention kernel sums in
    # float32 once): within two bfloat16 ulps of these logits (|logit| < 16: ulp 0.0625)
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.02, atol=0.13)
    err = (out.double() - ref64).abs().mean(-1)  # per position, vs float64
    assert (err <= 1.1 * (ref.double() - ref64).abs().mean(-1) + 1e-3).all()


@pytest.mark.model
def test_smollm2_decode_equals_forward_and_batches(smollm2: headcount.Decoder) -> None:
    prompt = smollm2.tokenizer.encode("To be, or not to be, that is the question:")
    with torch.inference_mode():
        cache = smollm2.new_cache(1, len(prompt) + 8)
        smollm2(torch.tensor([prompt[:-8]]), cache=cache)
        steps = [smollm2(torch.tensor([[t]]), cache=cache).logits[0] for t in prompt[-8:]]
        full = smollm2(torch.tensor([prompt])).logits[0, -8:]
    # steps: packed GEMVs, whose Q4_1 weights take int16-rounded inputs (csrc/q4x.cpp); the full
    # forward: dequantised weights and the float GEMM. They differ by that rounding (~0.01 of
    # logits up to ~30), and rank the tokens the same
    torch.testing.assert_close(torch.cat(steps), full, rtol=1e-3, atol=5e-2)
    assert torch.equal(torch.cat(steps).argmax(-1), full.argmax(-1))
    texts = [
        "To be, or not to be, that is the question:",
        "The capital of France is",
        "def fibonacci(n):\n    ",
    ]
    singles = [smollm2.generate(t, max_new_tokens=12, stop=[]) for t in texts]
    batch = smollm2.generate(texts, max_new_tokens=12, stop=[])
    assert [b.ids for b in batch] == [s.ids for s in singles]
    assert [b.text for b in batch] == [s.text for s in singles]
    q = quantize_int8(copy.deepcopy(smollm2))
    assert (
        q.generate(prompt, max_new_tokens=8, stop=[]).ids
        == q.generate(prompt, max_new_tokens=8, stop=[], use_cache=False).ids
    )
