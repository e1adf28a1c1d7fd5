"""Speed of head-pruned SmolLM2-135M against the unpruned model, in one run.

Variants (all fp32, physically pruned with `headcount.prune.remove_heads`, heads chosen by
Michel's importance on ``--score-tokens`` tokens of Othello):

* ``full``: 270 query heads, 90 KV heads;
* ``heads-30%`` / ``heads-50%``: 30% / 50% of the query heads removed (a KV head goes only with
  the last of its query heads, so most KV heads stay);
* ``groups-30%`` / ``groups-50%``: 30% / 50% of the KV groups removed whole (their query heads
  with them): a smaller KV cache as well.

Measures, variants interleaved round by round, medians: prefill tokens/s at 1K and 8K tokens (one
forward over the prompt that fills the cache), and decode tokens/s at 1K and 8K context (the
batch-1 decode step (`Decoding`: the model forward ``generate`` uses), ``--new`` tokens after a
prompt of that length). Beside them, measured in the same run: read bandwidth and fp32 matmul FLOP/s, the
bytes one decode step must read (weights + KV cache at that context) and the bandwidth floor
they imply.

    .venv/bin/python benchmarks/pruning.py [--reps 3] [--new 16] [--contexts 1024,8192] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch
from timing import median_ms

import headcount
from headcount.models.generation import Decoding
from headcount.prune import LanguageModeling, remove_heads, schedule

GB = 1e9


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def machine_limits(reps: int) -> dict[str, float]:
    a = torch.ones(2**28)  # 1 GiB of float32: far beyond the caches
    read = median_ms({"read": lambda: a.sum()}, reps)["read"]
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    mm = median_ms({"mm": lambda: x @ y}, reps)["mm"]
    return {"read_GBps": a.nbytes / (read / 1e3) / GB, "fp32_GFLOPs": 2 * n**3 / (mm / 1e3) / 1e9}


def kv_bytes(model: headcount.Decoder, context: int) -> int:
    """Bytes of the fp32 KV cache holding ``context`` positions."""
    return sum(model.config.n_kv_heads) * 2 * model.config.head_dim * 4 * context


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prefill_s(model: headcount.Decoder, ids: torch.Tensor) -> float:
    cache = model.new_cache(1, ids.shape[1])
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(ids, cache=cache, last_only=True)
    return time.perf_counter() - t0


def decode_s(model: headcount.Decoder, ids: torch.Tensor, new: int) -> float:
    """Seconds per token of ``new`` greedy decode steps after a prompt of ``ids``."""
    run = Decoding(model, max_len=ids.shape[1] + new + 1)
    with torch.inference_mode():
        logits = run.prefill(ids[0])
        tok = int(logits.argmax())
        t0 = time.perf_counter()
        for _ in range(new):
            tok = int(run.step(tok).argmax())
    return (time.perf_counter() - t0) / new


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new", type=int, default=16, help="decode steps timed per round")
    ap.add_argument("--contexts", default="1024,8192")
    ap.add_argument("--score-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    contexts = [int(c) for c in args.contexts.split(",")]

    full = headcount.load("smollm2")
    assert isinstance(full, headcount.Decoder)
    tok = full.tokenizer
    score = LanguageModeling(
        tok.encode(headcount.corpus(play="othello"))[: args.score_tokens], window=512
    )
    variants: dict[str, headcount.Decoder] = {"full": full}
    for unit in ("head", "group"):
        log(f"importance ({unit}s) ...")
        s = schedule(full, score, [0.3, 0.5], method="importance", unit=unit)  # type: ignore[arg-type]
        for f in (0.3, 0.5):
            variants[f"{unit}s-{round(f * 100)}%"] = remove_heads(full, s.masks[f])  # type: ignore[assignment]
    text = tok.encode(headcount.corpus(split="calibration"))
    limits = machine_limits(5)
    log(
        f"machine: read {limits['read_GBps']:.1f} GB/s, fp32 matmul {limits['fp32_GFLOPs']:.0f} GFLOP/s"
    )

    times: dict[tuple[str, str, int], list[float]] = {}
    for r in range(args.reps + 1):  # round 0 warms up
        for S in contexts:
            ids = torch.tensor([text[:S]])
            for name, m in variants.items():
                p = prefill_s(m, ids)
                d = decode_s(m, ids[:, : S - args.new - 1], args.new)
                if r:
                    times.setdefault((name, "prefill", S), []).append(p)
                    times.setdefault((name, "decode", S), []).append(d)
                log(f"round {r} S={S} {name}: prefill {S / p:.0f} tok/s, decode {1 / d:.1f} tok/s")
    rows = []
    for name, m in variants.items():
        row: dict[str, Any] = {
            "variant": name,
            "heads": sum(m.config.n_heads),
            "kv_heads": sum(m.config.n_kv_heads),
            "params": sum(p.numel() for p in m.parameters()),
        }
        for S in contexts:
            p = statistics.median(times[(name, "prefill", S)])
            d = statistics.median(times[(name, "decode", S)])
            step_bytes = weight_bytes(m) + kv_bytes(m, S)
            row[f"prefill_{S}_tok_s"] = S / p
            row[f"decode_{S}_tok_s"] = 1 / d
            row[f"decode_{S}_bytes"] = step_bytes
            row[f"decode_{S}_floor_tok_s"] = limits["read_GBps"] * GB / step_bytes
        rows.append(row)
    base = rows[0]
    print(
        f"SmolLM2-135M fp32, {args.threads} threads; read {limits['read_GBps']:.1f} GB/s, "
        f"fp32 matmul {limits['fp32_GFLOPs']:.0f} GFLOP/s; medians of {args.reps} rounds\n"
    )
    head = "| variant | heads | KV heads | params |"
    for S in contexts:
        head += f" prefill {S} tok/s (x) | decode @{S} tok/s (x) | decode @{S} floor tok/s |"
    print(head)
    print("|" + "---|" * (4 + 3 * len(contexts)))
    for row in rows:
        line = f"| {row['variant']} | {row['heads']} | {row['kv_heads']} | {row['params'] / 1e6:.1f}M |"
        for S in contexts:
            p, d = row[f"prefill_{S}_tok_s"], row[f"decode_{S}_tok_s"]
            line += (
                f" {p:.0f} ({p / base[f'prefill_{S}_tok_s']:.2f}) |"
                f" {d:.1f} ({d / base[f'decode_{S}_tok_s']:.2f}) | {row[f'decode_{S}_floor_tok_s']:.0f} |"
            )
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"limits": limits, "rows": rows, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
