"""Held-out perplexity of SmolLM2 from its own packed Q4_1 weights against the fp32-dequantised model.

Run: ``.venv/bin/python benchmarks/packed_perplexity.py`` (``--windows 8 --window 512``: Hamlet,
windows of 512 tokens with no carried context, HF's recipe via `headcount.perplexity`).

Two paths are scored, because a packed model computes differently by input size:

* **prefill** (`headcount.perplexity`, one forward per window): more than `kernels.MAX_ROWS` rows,
  so each packed weight is dequantised (exactly as ``gguf.quants.dequantize``) and the float GEMM
  runs: this must equal the fp32 model up to float rounding;
* **decode** (the same windows fed 8 tokens at a time through the KV cache, so every projection
  runs the packed GEMV kernels, as generation does), with the default int16 activations (Q4_1
  regrouped as Q4_1x, csrc/q4x.cpp), float32 activations (``HEADCOUNT_PACKED_ACT=float``: the
  dequantised weights' exact products) and int8 activations (``HEADCOUNT_PACKED_ACT=int8``,
  llama.cpp's scheme); the fp32 model is fed the same 8-token chunks as the reference.

Prints the perplexities and their relative differences; the goal is |packed / fp32 - 1| < 0.05%.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import headcount
from headcount import kernels


def chunked_nll(model: headcount.Decoder, ids: list[int], window: int, chunk: int) -> float:
    """Mean NLL of each window's tokens 1..window-1, fed ``chunk`` tokens at a time via the cache."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - window + 1, window):
            w = torch.tensor([ids[start : start + window]])
            cache = model.new_cache(1, window)
            logits = []
            for at in range(0, window, chunk):
                logits.append(model(w[:, at : at + chunk], cache=cache).logits[0])
            lg = torch.cat(logits)[:-1].float()  # (window-1, V)
            total += float(F.cross_entropy(lg, w[0, 1:], reduction="sum"))
            count += window - 1
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=8, help="tokens per decode-path forward (<= 8)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dense = headcount.load("smollm2", dtype=torch.float32)
    packed = headcount.load("smollm2")  # the default: Q4_1 regrouped for int16 activations
    kernels.ACTIVATIONS = "float"  # read at load: Q4_1 kept in the GGUF layout
    packed_gguf = headcount.load("smollm2")
    assert isinstance(dense, headcount.Decoder) and isinstance(packed, headcount.Decoder)
    assert isinstance(packed_gguf, headcount.Decoder)
    layouts = [m.layers[0].mlp.down.weight.layouts[0] for m in (packed, packed_gguf)]
    text = headcount.corpus("shakespeare", play="hamlet")
    ids = dense.tokenizer.encode(text)[: args.windows * args.window]
    print(
        f"kernels: {kernels.variant()}; Q4_1 held as {layouts}; {len(ids)} Hamlet tokens, windows of {args.window}"
    )

    rows = []
    for name, model in (("fp32 (dequantised)", dense), ("packed Q4_1", packed)):
        t0 = time.perf_counter()
        r = headcount.perplexity(model, ids, window=args.window, stride=args.window)
        rows.append((f"prefill: {name}", r.perplexity, time.perf_counter() - t0))
    for name, model, int8 in (
        ("fp32 (dequantised)", dense, False),
        ("packed Q4_1, int16 activations (default)", packed, False),
        ("packed Q4_1, float32 activations", packed_gguf, False),
        ("packed Q4_1, int8 activations", packed_gguf, True),
    ):
        kernels.INT8_ACTIVATIONS = int8
        t0 = time.perf_counter()
        nll = chunked_nll(model, ids, args.window, args.chunk)
        rows.append(
            (f"decode ({args.chunk}-token steps): {name}", math.exp(nll), time.perf_counter() - t0)
        )
    ref = {"prefill": rows[0][1], "decode": rows[2][1]}
    print("| path: model | perplexity | vs fp32 | seconds |\n| --- | ---: | ---: | ---: |")
    for label, ppl, secs in rows:
        rel = ppl / ref[label.split(" ")[0].rstrip(":")] - 1
        print(f"| {label} | {ppl:.3f} | {100 * rel:+.4f}% | {secs:.0f} |")


if __name__ == "__main__":
    main()
