"""The seeds' claim on real models: fewer KV heads (and sliding windows) make long-context decoding
cheaper. Greedy decode speed at 1K and 8K tokens of context for SmolLM2-135M (GQA, 3 KV heads
of 9) and Gemma 3 270M (MQA, 1 KV head of 4; 5 of every 6 layers see a window of 512), beside
the bytes one decode step must read: the weights, and the KV cache per layer (all positions for
a global layer, at most the window for a local one).

Run: ``.venv/bin/python benchmarks/context_decode.py`` (``--contexts 1024,8192``,
``--steps 32``, ``--rounds 3``, ``--json FILE``).

Each model decodes the way ``model.generate`` does (SmolLM2 through the fast decode path,
Gemma 3 through its modules); the prompt is Shakespeare (a calibration play); only the decode
phase is timed (first new token to last), median over rounds. The machine's read bandwidth is
measured in the same run: bytes read per step x tokens/s over it is the share of the memory
wall each model reaches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

import headcount
from headcount.loaders.corpus import plays
from headcount.memory import kv_cache_bytes

GB = 1e9


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def read_bandwidth(reps: int = 5) -> float:
    """GB/s of a 1 GiB fp32 sum (the read rate that bounds batch-1 decoding)."""
    a = torch.ones(2**28)
    a.sum()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.sum()
        ts.append(time.perf_counter() - t0)
    return a.nbytes / statistics.median(ts) / GB


def step_bytes(model: headcount.Decoder, context: int) -> dict[str, int]:
    """Bytes one decode step reads at ``context`` cached positions: weights and KV cache."""
    w = model.embed.weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights -= w.numel() * w.element_size() - model.config.d_model * w.element_size()  # a row
    if model.lm_head is None:  # tied: the output projection reads the table once
        weights += w.numel() * w.element_size()
    dtype = str(w.dtype).removeprefix("torch.")
    D = model.config.head_dim
    kv = 0
    for a in model.attention_layers():
        kv += kv_cache_bytes(1, a.n_kv_heads, D, context, dtype=dtype, window=a.window)
    return {"weights": weights, "kv": kv}


def decode(model: headcount.Decoder, ids: list[int], n: int) -> float:
    """Seconds per token of the decode phase of ``model.stream`` after the prompt ``ids``."""
    stamps = []
    for _ in model.stream(ids, max_new_tokens=n, stop=[]):
        stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--contexts", default="1024,8192")
    ap.add_argument("--steps", type=int, default=32, help="new tokens per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bw = read_bandwidth()
    log(f"read bandwidth {bw:.1f} GB/s, {args.threads} threads, torch {torch.__version__}")
    text = "\n".join(headcount.corpus("shakespeare", play=p) for p in plays("calibration")[:4])
    rows = []
    for name in args.models.split(","):
        model = headcount.load(name)
        ids_all = model.tokenizer.encode(text)
        for ctx in (int(c) for c in args.contexts.split(",")):
            c = min(ctx, model.max_len - args.steps - 1)
            ids = ids_all[:c]
            times = []
            for r in range(args.rounds):
                with torch.inference_mode():
                    times.append(decode(model, ids, args.steps))
                log(f"{name} @ {c}: round {r}: {1 / times[-1]:.1f} tok/s")
            s = statistics.median(times)
            b = step_bytes(model, c)
            layers = model.attention_layers()
            rows.append(
                {
                    "model": name,
                    "attention": f"{layers[0].n_heads} query / "
                    f"{layers[0].n_kv_heads} KV heads, "
                    + (
                        f"{sum(a.window is not None for a in layers)} of {len(layers)} layers "
                        f"windowed ({max(a.window or 0 for a in layers)})"
                        if any(a.window for a in layers)
                        else f"{len(layers)} global layers"
                    ),
                    "context": c,
                    "tok_s": 1 / s,
                    "kv_bytes_per_token": sum(
                        kv_cache_bytes(1, a.n_kv_heads, model.config.head_dim, 1, dtype="float32")
                        for a in layers
                    ),
                    "kv_read_MB": b["kv"] / 1e6,
                    "weights_read_MB": b["weights"] / 1e6,
                    "GBps": (b["kv"] + b["weights"]) / s / GB,
                }
            )
            log(rows[-1])
        del model
    print(f"read bandwidth {bw:.1f} GB/s; fp32 models, {args.threads} threads\n")
    print(
        "| model | attention | context | decode tok/s | KV bytes/token (fp32) | KV read/step "
        "| weights read/step | GB/s reached (% of read bw) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['attention']} | {r['context']:,} | {r['tok_s']:.1f} | "
            f"{r['kv_bytes_per_token']:,} | {r['kv_read_MB']:.1f} MB | "
            f"{r['weights_read_MB']:.0f} MB | {r['GBps']:.1f} ({100 * r['GBps'] / bw:.0f}%) |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"read_GBps": bw, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
