"""Per-op profile of one batch-1 decode step of SmolLM2: aten ops, µs and dispatch overhead per layer.

For each dtype (fp32, bf16; the model loaded with ``headcount.load("smollm2", dtype=...)``; and
``packed``, ``headcount.load("smollm2")``, the file's own quantised blocks) and
each decode path it finds, a 64-token prompt fills the cache, then:

* time: the median of ``--steps`` unprofiled greedy steps (µs per step and per layer), as wall
  time and as the CPU time of the calling thread (``time.thread_time``: with ``--threads 1``
  every op runs on that thread, and time spent descheduled on a shared machine is left out);
* under ``torch.profiler`` (CPU) for ``--profiled`` steps: aten ops per step (every ``aten::``
  event, nested ones included: each one is a trip through the dispatcher), top-level aten ops
  (those the Python code calls), and the ops' self time summed (the kernels' work, each op's
  time minus the ops it calls);
* dispatch overhead per layer: the CPU time per layer of a probe model with SmolLM2's layers
  and heads but tiny matrices (head_dim 8, d_ff 32), built in the same dtype, whose matrix work
  is negligible, so its step time is the Python, argument parsing, dispatcher and allocation
  cost of the ops. (Wall time minus the profiler's op self times was tried first: the profiler
  inflates self times by about as much as the overhead, so it came out near zero or negative.)

Paths: ``forward`` is ``model(token, cache=..., last_only=True)`` (`Decoder.forward`);
``fastdecode`` is ``headcount.models.fastpath.FastDecode.step`` when that class exists (before
issue 11 a second copy of the layer math; since then an alias of `generation.Decoding`, whose
step is the same forward).
Per-layer numbers divide the whole step (embedding, final norm and logits included) by the layers.

Run: ``.venv/bin/python benchmarks/decode_profile.py [--threads 1] [--steps 48] [--top 12]``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import headcount

PROMPT_T = 64


def _paths(model: Any, cache_len: int) -> dict[str, Callable[[int], int]]:
    """name -> step(token) -> next greedy token, each with its own filled cache."""
    prompt = torch.arange(100, 100 + PROMPT_T).view(1, -1) % model.config.vocab_size
    paths: dict[str, Callable[[int], int]] = {}
    cache = model.new_cache(1, cache_len)
    model(prompt, cache=cache, last_only=True)

    def forward(tok: int) -> int:
        t = torch.tensor([[tok]])
        return int(model(t, cache=cache, last_only=True).logits[0, -1].argmax())

    paths["forward"] = forward
    try:
        from headcount.models import fastpath
    except ImportError:
        return paths
    fd_cls = getattr(fastpath, "FastDecode", None)
    if fd_cls is not None and hasattr(fd_cls, "step"):
        run = fd_cls(model, cache_len)
        run.prefill(prompt[0].tolist())

        def fast(tok: int) -> int:
            return int(run.step(tok).argmax())

        paths["fastdecode"] = fast
    return paths


def _profile(step: Callable[[int], int], steps: int, profiled: int, top: int) -> dict[str, Any]:
    tok = 10
    for _ in range(8):
        tok = step(tok)  # warm
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.thread_time()
        tok = step(tok)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    wall = statistics.median(times)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(profiled):
            tok = step(tok)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top_level = [
        e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")
    ]
    op_self = sum(e.self_cpu_time_total for e in events) / profiled  # µs per step
    calls: Counter[str] = Counter()
    self_us: Counter[str] = Counter()
    for e in events:
        calls[e.name] += 1
        self_us[e.name] += e.self_cpu_time_total
    table = [
        (name, calls[name] / profiled, us / profiled)
        for name, us in sorted(self_us.items(), key=lambda kv: -kv[1])
    ][:top]
    return {
        "wall_us": wall * 1e6,
        "cpu_us": statistics.median(cpu) * 1e6,
        "ops": len(events) / profiled,
        "top_ops": len(top_level) / profiled,
        "op_us": op_self,
        "table": table,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=48, help="timed steps (median)")
    ap.add_argument("--profiled", type=int, default=8, help="steps under the profiler")
    ap.add_argument("--top", type=int, default=10, help="aten ops listed per run")
    ap.add_argument(
        "--dtypes", default="float32,bfloat16,packed", help="'packed': the GGUF's own blocks"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, prompt {PROMPT_T} tokens, batch 1\n")
    for name in a.dtypes.split(","):
        if name == "packed":  # the file's own blocks (Q4_1 as Q4_1x, Q8_0), float32 activations
            dtype, model = torch.float32, headcount.load("smollm2").eval()
        else:
            dtype = getattr(torch, name)
            model = headcount.load("smollm2", dtype=dtype).eval()
        real = _report(name, model, a)
        probe = _report(f"{name} probe", _probe(model.config).to(dtype), a)
        for path, us in probe.items():
            print(
                f"=> {name} {path}: dispatch overhead {us:.0f} µs/layer (the probe's CPU time), "
                f"{us / real[path]:.0%} of the real step's {real[path]:.0f} µs/layer\n"
            )
        del model


def _probe(cfg: Any) -> Any:
    """SmolLM2's layer structure (layers, heads, KV heads) with head_dim 8, d_ff 32 and 512
    tokens: the matrix work is negligible, so its step time is the per-op overhead."""
    from headcount.models import Decoder

    small = dataclasses.replace(
        cfg, d_model=8 * max(cfg.n_heads), head_dim=8, d_ff=32, vocab_size=512
    )
    torch.manual_seed(0)
    return Decoder(small).eval()


def _report(name: str, model: Any, a: argparse.Namespace) -> dict[str, float]:
    """Print one block per decode path; returns path -> CPU µs per layer."""
    L = model.config.n_layers
    out = {}
    with torch.inference_mode():
        for path, step in _paths(model, PROMPT_T + a.steps + a.profiled + 16).items():
            r = _profile(step, a.steps, a.profiled, a.top)
            out[path] = r["cpu_us"] / L
            print(
                f"## {name} {path}: wall {r['wall_us'] / 1e3:.2f} ms/step, "
                f"{r['wall_us'] / L:.0f} µs/layer; CPU {r['cpu_us'] / L:.0f} µs/layer; "
                f"aten ops/layer {r['ops'] / L:.1f} (top-level {r['top_ops'] / L:.1f}); "
                f"op self time under the profiler {r['op_us'] / L:.0f} µs/layer"
            )
            print("   aten op                                  calls/step  self µs/step")
            for op, n, us in r["table"]:
                print(f"   {op:<40} {n:>10.0f} {us:>13.0f}")
            print()
    return out


if __name__ == "__main__":
    main()
