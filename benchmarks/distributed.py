"""SmolLM2-135M on 1, 2 and 3 CPU processes (gloo on loopback, started with torchrun):

1. data-parallel head analysis: ``analyze`` over --tokens text tokens in chunks of --chunk
   (no syntax pass), wall time on rank 0, scores all-reduced;
2. head-parallel decoding (`shard_heads`): one prefill of --prompt tokens, then --steps cached
   decode steps of one token; median ms per prefill and per decode step.

    python benchmarks/distributed.py [--procs 1 2 3] [--tokens 2048] [--chunk 256] [--layers N]

``--train``: data-parallel uptraining instead (`headcount.prune.training.train` with ``world``):
SmolLM2 (its first --layers layers) converted to MQA and distilled toward itself (``kl``), a global
batch of --batch windows of --window tokens per step, --train-steps steps; median seconds per
optimizer step on rank 0 (the first step, with its warm-up, left out), and the bytes each rank
sends per step in the gradient all-reduce. ``--engines``: the same step written three ways at
--engine-procs processes, to choose how gradients are synchronised: DDP (in place,
``torch.distributed._composable.replicate``), FSDP2 (``fully_shard`` per layer and on the model)
and headcount's one all-reduce per step (`DataParallel.sync`); each run's final weights are
compared with the others'.

    python benchmarks/distributed.py --train [--procs 1 2 3] [--layers 6] [--batch 6] [--window 64]
    python benchmarks/distributed.py --engines [--engine-procs 2] [--layers 6]

Each world size runs in fresh processes; every process gets --threads intra-op threads (default
1, so that N processes use N cores). The load average of the machine is printed with the results:
other work on the machine slows the runs with more processes first.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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


def train_worker(args: argparse.Namespace) -> None:
    import torch

    from headcount import corpus, load
    from headcount.convert import convert
    from headcount.distributed import init, shutdown
    from headcount.prune import LanguageModeling
    from headcount.prune.training import train

    torch.set_num_threads(args.threads)
    world = init()
    try:
        teacher = load("smollm2", dtype=torch.float32).eval()
        if args.layers:
            keep(teacher, args.layers)
        student = convert(teacher, 1, "mean")
        ids = teacher.tokenizer.encode(corpus("shakespeare", split="calibration"))
        data = LanguageModeling(ids[: args.window * args.batch * 4], args.window, args.batch)
        marks: list[float] = []
        world.barrier()
        train(
            student,
            teacher,
            data,
            steps=args.train_steps,
            loss="kl",
            lr=1e-4,
            warmup=1,
            progress=lambda *_: marks.append(time.perf_counter()),
            world=world,
        )
        if world.is_main:
            steps = [b - a for a, b in itertools.pairwise(marks)]
            params = sum(p.numel() for p in student.parameters())
            sent = params * 4 * 2 * (world.size - 1) / world.size
            print(
                json.dumps(
                    {
                        "procs": world.size,
                        "step_s": round(statistics.median(steps), 3),
                        "params": params,
                        "allreduce_mb_per_rank": round(sent / 1e6, 1),
                    }
                ),
                flush=True,
            )
    finally:
        shutdown()


def engine_worker(args: argparse.Namespace) -> None:
    """One optimizer step at a time, the rows of each global batch shared out, synchronised by
    DDP, FSDP2 or `DataParallel.sync`; prints the median step and a digest of the weights."""
    import torch

    from headcount import corpus, load
    from headcount.convert import convert
    from headcount.distributed import init, shutdown
    from headcount.distributed.data_parallel import DataParallel
    from headcount.prune import LanguageModeling
    from headcount.prune.training import distill_loss

    torch.set_num_threads(args.threads)
    world = init()
    try:
        teacher = load("smollm2", dtype=torch.float32).eval()
        if args.layers:
            keep(teacher, args.layers)
        student = convert(teacher, 1, "mean").train()
        ids = teacher.tokenizer.encode(corpus("shakespeare", split="calibration"))
        data = LanguageModeling(ids[: args.window * args.batch * 4], args.window, args.batch)
        batches = list(data.batches())
        if args.engine == "ddp":
            from torch.distributed._composable import replicate

            replicate(student, broadcast_buffers=False)
        elif args.engine == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in student.layers:
                fully_shard(layer)
            fully_shard(student)
        sync = DataParallel(world, student, data, "kl", 1, {})
        params = list(student.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        times = []
        for step in range(args.train_steps):
            world.barrier()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            part, weight = sync.share(batches[step % len(batches)], 0)
            assert part is not None
            value = distill_loss(student, teacher, part) * weight
            if args.engine in ("ddp", "fsdp"):
                value = value * world.size  # both average the ranks' gradients
            value.backward()
            if args.engine == "allreduce":
                sync.sync(params, float(value), 0.0)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            times.append(time.perf_counter() - t0)
        state = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach()
            for k, v in student.state_dict().items()
        }
        if world.is_main:
            flat = torch.cat([v.flatten().double() for v in state.values()])
            print(
                json.dumps(
                    {
                        "engine": args.engine,
                        "procs": world.size,
                        "step_s": round(statistics.median(times[1:]), 3),
                        "weights_sum": float(flat.sum()),
                        "weights_sq": float(flat.square().sum()),
                    }
                ),
                flush=True,
            )
    finally:
        shutdown()


def launch(args: argparse.Namespace, n: int, flag: str, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={n}", str(Path(__file__).resolve()), flag, *extra]
    for k in ("threads", "layers", "batch", "window", "train_steps"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))


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
    p.add_argument("--train", action="store_true", help="time data-parallel training steps")
    p.add_argument("--engines", action="store_true", help="DDP vs FSDP2 vs one all-reduce")
    p.add_argument("--engine-procs", type=int, default=2)
    p.add_argument("--batch", type=int, default=6, help="--train: windows per global batch")
    p.add_argument("--window", type=int, default=64, help="--train: tokens per window")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.train_worker:
        train_worker(args)
        return
    if args.engine:
        engine_worker(args)
        return
    if args.train or args.engines:
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        if args.engines:
            found = []
            for engine in ("allreduce", "ddp", "fsdp"):
                found.append(launch(args, args.engine_procs, "--engine", engine))
                print(json.dumps(found[-1]), flush=True)
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            print(
                "\n| engine | processes | s per step | vs all-reduce | weights sum, sum of squares |"
            )
            print("|---|---|---|---|---|")
            for r in found:
                print(
                    f"| {r['engine']} | {r['procs']} | {r['step_s']} | "
                    f"{r['step_s'] / found[0]['step_s']:.2f}x | "
                    f"{r['weights_sum']:.6f}, {r['weights_sq']:.6f} |"
                )
            return
        rows = []
        for n in args.procs:
            rows.append(launch(args, n, "--train-worker"))
            print(json.dumps(rows[-1]), flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print(
            "\n| processes | s per step | time vs 1 process | all-reduce sent per rank per step |"
        )
        print("|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['procs']} | {r['step_s']} | {r['step_s'] / rows[0]['step_s']:.2f}x | "
                f"{r['allreduce_mb_per_rank']} MB |"
            )
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
