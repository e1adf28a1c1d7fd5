"""SmolLM2-135M on 1, 2 and 3 CPU processes (gloo on loopback, started with torchrun):

1. data-parallel head analysis: ``analyze`` over --tokens text tokens in chunks of --chunk
   (no syntax pass), wall time on rank 0, scores all-reduced;
2. head-parallel decoding (`shard_heads`): one prefill of --prompt tokens, then --steps cached
   decode steps of one token; median ms per prefill and per decode step.

    python benchmarks/distributed.py [--procs 1 2 3] [--tokens 2048] [--chunk 256] [--layers N]

Each world size runs in fresh processes; every process gets --threads intra-op threads (default
1, so that N processes use N cores). The load average of the machine is printed with the results:
other work on the machine slows the runs with more processes first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def keep(model: Any, n: int) -> None:
    """Keep the first ``n`` layers of ``model`` (a shorter run on a busy machine)."""
    cfg = model.config
    model.layers = model.layers[:n]
    model.config = dataclasses.replace(
        cfg, n_layers=n, n_heads=cfg.n_heads[:n], n_kv_heads=cfg.n_kv_heads[:n], group_sizes=None
    )


def worker(args: argparse.Namespace) -> None:
    import torch

    from headcount import corpus, load
    from headcount.distributed import init, shutdown
    from headcount.distributed.tensor_parallel import shard_heads
    from headcount.heads import AnalysisConfig, analyze

    torch.set_num_threads(args.threads)
    world = init()
    try:
        model = load("smollm2").eval()
        if args.layers:
            keep(model, args.layers)
        text = corpus("shakespeare", split="calibration")
        world.barrier()
        t0 = time.perf_counter()
        cfg = AnalysisConfig(chunk_len=args.chunk, max_tokens=args.tokens)
        analyze(model, text, config=cfg, world=world)
        world.barrier()
        analysis = time.perf_counter() - t0

        shard_heads(model, world)
        ids = torch.tensor([model.tokenizer.encode(text)[: args.prompt + args.steps]])
        prefill, decode = [], []
        with torch.inference_mode():
            for _ in range(args.reps):
                cache = model.new_cache(1, args.prompt + args.steps)
                world.barrier()
                t0 = time.perf_counter()
                model(ids[:, : args.prompt], cache=cache)
                prefill.append(time.perf_counter() - t0)
                for t in range(args.prompt, args.prompt + args.steps):
                    t0 = time.perf_counter()
                    model(ids[:, t : t + 1], cache=cache, last_only=True)
                    decode.append(time.perf_counter() - t0)
        if world.is_main:
            print(
                json.dumps(
                    {
                        "procs": world.size,
                        "analysis_s": round(analysis, 2),
                        "prefill_ms": round(statistics.median(prefill) * 1e3, 1),
                        "decode_ms": round(statistics.median(decode) * 1e3, 2),
                        "kv_bytes_rank0": cache.nbytes,
                    }
                ),
                flush=True,
            )
    finally:
        shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, default=0, help="keep the first N layers (0: all 30)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rows = []
    for n in args.procs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={n}", str(Path(__file__).resolve()), "--worker"]
        for k in ("tokens", "chunk", "prompt", "steps", "reps", "threads", "layers"):
            cmd += [f"--{k}", str(getattr(args, k))]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        row = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    base = rows[0]
    print(
        "\n| processes | analysis (s) | speed-up | prefill (ms) | decode step (ms) | KV cache per rank |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['procs']} | {r['analysis_s']} | {base['analysis_s'] / r['analysis_s']:.2f}x | "
            f"{r['prefill_ms']} | {r['decode_ms']} | {r['kv_bytes_rank0'] / 2**20:.2f} MiB |"
        )


if __name__ == "__main__":
    main()
