"""Batch-1 CPU kernels as torch operators: float32/bfloat16/int8 and packed GGUF weights.

A decode step at batch 1 is a chain of matrix-vector products: its speed is the rate at which
the weights stream from memory. These kernels read each weight row once, dequantise it in
registers (bfloat16, int8 with a per-row scale, or the GGUF blocks Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, Q4_K and Q6_K kept packed) and accumulate in float32, splitting the rows across torch's threads.

The C++ sources are in ``csrc/`` (``ops.cpp`` registers ``torch.ops.headcount.gemv``,
``gemv_q``, ``dequant_q`` and the decode step's fused ops ``rms_norm``, ``silu_mul`` and
``decode_attention`` with CPU and Meta implementations, so they show in the profiler and trace
under ``torch.compile``; the same functions are the extension module's own Python entry points,
`direct`, which the decode path calls; ``gemv.cpp``, ``quant_gemv.cpp``, ``x16.cpp``,
``norm.cpp``, ``pointwise.cpp`` and ``attention.cpp`` hold the kernels, written once against a
16-float vector type in ``simd.h``). They are built on first use with
``torch.utils.cpp_extension.load`` in one of two variants picked from the CPU's flags:

- ``avx512``: AVX-512 F/BW/VL/DQ (plus AVX512-BF16 ``vdpbf16ps`` for bfloat16 × bfloat16
  when the CPU has it);
- ``avx2``: AVX2 + FMA + F16C.

``HEADCOUNT_KERNELS=avx2`` forces the AVX2 variant, ``HEADCOUNT_KERNELS=0`` disables the
kernels (callers then use stock torch ops: same results up to float rounding). The build goes to
``$HEADCOUNT_CACHE/kernels`` (default ``~/.cache/headcount/kernels``), in a folder named by a
hash of the sources, the compiler version, the variant's flags, the CPU features and the torch
version; an exclusive ``fcntl`` lock on that folder makes concurrent processes build it once.
Only one variant is loaded per process (the operators have one name).

Legend: M rows of the input (1 when decoding), N output features, K input features.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from headcount.errors import ConfigError

__all__ = [
    "MAX_ROWS",
    "Q4_1X",
    "Q8_0X",
    "QTYPES",
    "available",
    "build_dir",
    "dequantize_packed",
    "gemv",
    "gemv_int8",
    "gemv_packed",
    "packed_op",
    "unavailable_reason",
    "variant",
]

# headcount's own layouts: Q4_1 and Q8_0 blocks regrouped for int16 dot products (csrc/x16.cpp).
# GGUF Q4_1 / Q8_0 weights are kept this way when the kernels are available, unless
# HEADCOUNT_PACKED_ACT says float or int8 (the exact float32 products, or llama.cpp's int8
# scheme, on the GGUF layout).
Q4_1X, Q8_0X = 1003, 1008
GGUF_TYPE = {Q4_1X: 3, Q8_0X: 8}  # the GGUF type a headcount layout holds the values of
REGROUPED = {3: Q4_1X, 8: Q8_0X}

MAX_ROWS = 8  # inputs with more rows (prefill) are better served by a GEMM on dense weights
# ggml type code -> (name, values per block, bytes per block) of the packed formats
QTYPES: dict[int, tuple[str, int, int]] = {
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    14: ("Q6_K", 256, 210),
    Q4_1X: ("Q4_1x", 32, 20),
    Q8_0X: ("Q8_0x", 32, 34),
}

CSRC = Path(__file__).with_name("csrc")
SOURCES = (
    "ops.cpp",
    "gemv.cpp",
    "quant_gemv.cpp",
    "x16.cpp",
    "norm.cpp",
    "attention.cpp",
    "pointwise.cpp",
)
HEADERS = ("kernels.h", "simd.h")
_COMMON_FLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]

# How a packed GEMV treats its input (HEADCOUNT_PACKED_ACT, read when weights are loaded):
# - "int16" (default): GGUF Q4_1 / Q8_0 weights are regrouped into Q4_1X / Q8_0X and each 32
#   input values are rounded to int16 (integer dot products, about a third of the instructions
#   per block of decoding to float; relative error <= 2^-16 of a block's largest input); other
#   types take "float";
# - "float": every type decodes blocks to float32 and sums the dequantised weights' exact products;
# - "int8": Q4_0 / Q4_1 / Q8_0 round each 32 inputs to int8 (llama.cpp's scheme): it raised
#   SmolLM2's held-out perplexity by 1.43% (Hamlet 8x512, benchmarks/packed_perplexity.py).
PACKED_ACTIVATIONS = ("int16", "float", "int8")
INT8_ACTIVATION_TYPES = frozenset({2, 3, 8})


ACTIVATIONS = os.environ.get("HEADCOUNT_PACKED_ACT", "int16").strip().lower() or "int16"
INT8_ACTIVATIONS = ACTIVATIONS == "int8"

_variant: str | None = None
_direct: Any = None  # the built extension module (see `direct`)
_reason: str | None = None
_dir: Path | None = None
_tried = False


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _variant_flags(name: str, flags: set[str]) -> list[str] | None:
    """Compiler flags of variant ``name`` on a CPU with ``flags``; None if the CPU lacks it."""
    if name == "avx2":
        need = {"avx2", "fma", "f16c"}
        return ["-mavx2", "-mfma", "-mf16c"] if need <= flags else None
    if name == "avx512":
        if not {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"} <= flags:
            return None
        extra = ["-mavx512bf16"] if "avx512_bf16" in flags else []
        extra += ["-mavx512vnni"] if "avx512_vnni" in flags else []
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", *extra]
    return None


def _choose() -> tuple[str, list[str]] | str:
    """(variant, flags) to build, or why there is none."""
    setting = os.environ.get("HEADCOUNT_KERNELS", "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return "disabled by HEADCOUNT_KERNELS=0"
    flags = cpu_flags()
    if not flags:  # no /proc/cpuinfo: trust torch's own detection
        cap = torch.backends.cpu.get_cpu_capability()
        flags = {"avx2", "fma", "f16c"} if cap in ("AVX2", "AVX512") else set()
        if cap == "AVX512":
            flags |= {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
    if setting in ("avx2", "avx512"):
        order = [setting]
    elif setting in ("auto", "1", "on", "true", "yes", ""):
        order = ["avx512", "avx2"]
    else:
        return f"HEADCOUNT_KERNELS={setting!r} is not one of 0, auto, avx2, avx512"
    for name in order:
        vflags = _variant_flags(name, flags)
        if vflags is not None:
            return name, vflags
    return f"the CPU lacks {' / '.join(order)} (flags: AVX2 {'avx2' in flags}, AVX-512 {'avx512f' in flags})"


def cache_root() -> Path:
    """``$HEADCOUNT_CACHE/kernels``, default ``~/.cache/headcount/kernels``."""
    root = os.environ.get("HEADCOUNT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "headcount") / "kernels"


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    exe = shutil.which(cxx) or shutil.which("g++")
    if exe is None:
        raise RuntimeError(f"no C++ compiler ({cxx}/g++) on PATH")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0] if out.stdout else exe


def _key(name: str, vflags: list[str]) -> str:
    h = hashlib.sha256()
    for f in (*SOURCES, *HEADERS):
        h.update((CSRC / f).read_bytes())
    features = sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "f16c")))
    for part in (name, *vflags, *_COMMON_FLAGS, _compiler_version(), torch.__version__, *features):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _build(name: str, vflags: list[str]) -> Path:
    """Build (once, under a file lock) and load variant ``name``; returns its folder."""
    from torch.utils.cpp_extension import load

    global _direct
    folder = cache_root() / f"{name}-{_key(name, vflags)}"
    folder.mkdir(parents=True, exist_ok=True)
    lib_name = f"headcount_kernels_{name}"
    lib, done = folder / f"{lib_name}.so", folder / "built"
    with open(folder / "headcount.lock", "w") as lock:  # (cpp_extension uses "lock" itself)
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait, then load its library
        try:
            if not (done.is_file() and lib.is_file()):
                module = load(
                    name=lib_name,
                    sources=[str(CSRC / s) for s in SOURCES],
                    extra_cflags=[*_COMMON_FLAGS, *vflags],
                    extra_ldflags=["-fopenmp"],
                    build_directory=str(folder),
                    is_python_module=True,  # the torch ops, and `direct` entry points
                    verbose=False,
                )
                done.write_text(f"{name} {' '.join(vflags)}\n")
            else:  # importing the extension module registers the torch ops too
                spec = importlib.util.spec_from_file_location(lib_name, lib)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _direct = module
    return folder


def _load() -> str | None:
    global _variant, _reason, _dir, _tried
    if not _tried:
        _tried = True
        choice = _choose()
        if isinstance(choice, str):
            _reason = choice
        else:
            try:
                _dir = _build(*choice)
                _variant = choice[0]
            except Exception as e:  # any build failure means: use the stock path
                msg = str(e).strip().splitlines()
                _reason = (
                    f"could not build the kernels: {type(e).__name__}: {' '.join(msg[-3:])[:500]}"
                )
    return _variant


# dtypes of the decode step's fused ops (rms_norm, silu_mul, decode_attention)
FUSED_DTYPES = (torch.float32, torch.bfloat16)


def fusable(x: Tensor, weight: Tensor | None = None) -> bool:
    """True when a fused decode op (``rms_norm``, ``silu_mul``, ``decode_attention``) may take
    ``x`` (and ``weight``): CPU tensors of one dtype in `FUSED_DTYPES`, nothing that autograd
    must record (the ops have no backward), and the kernels loaded. The modules fall back to
    torch's ops otherwise."""
    return (
        x.dtype in FUSED_DTYPES
        and x.device.type == "cpu"
        and (weight is None or weight.dtype == x.dtype)
        and not (
            torch.is_grad_enabled()
            and (x.requires_grad or (weight is not None and weight.requires_grad))
        )
        and available()
    )


def direct() -> Any:
    """The namespace a decode step calls the kernels through: the extension's own Python entry
    points (the functions behind ``torch.ops.headcount.*``, without the dispatcher's boxed call
    from Python: about 1 µs a call instead of 4-5; they show in the profiler under the same op
    names), or ``torch.ops.headcount`` itself while ``torch.compile`` traces (it knows the ops,
    not the module). Call only when `available()`."""
    if _direct is None or torch.compiler.is_compiling():
        return torch.ops.headcount
    return _direct


def available() -> bool:
    """True when the compiled kernels can be used (built on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why `available()` is False (None when it is True)."""
    _load()
    return _reason


def variant() -> str | None:
    """The loaded variant, ``"avx512"`` or ``"avx2"`` (None without kernels)."""
    return _load()


def build_dir() -> Path | None:
    """The cache folder holding the loaded library."""
    _load()
    return _dir


def _require() -> None:
    if _variant is None and _load() is None:
        raise RuntimeError(f"the headcount kernels are unavailable: {_reason}")


def _check(x: Tensor, w: Tensor) -> None:
    _require()
    if x.device.type != "cpu" or w.device.type != "cpu":
        raise ValueError("the headcount kernels run on CPU tensors only")
    if w.ndim != 2 or not w.is_contiguous() or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"need a contiguous (N, K) weight and (..., K) input, got {tuple(w.shape)} and {tuple(x.shape)}"
        )


def _rows(x: Tensor, K: int) -> Tensor:
    x2 = x.reshape(-1, K)
    if x2.dtype not in (torch.float32, torch.bfloat16):
        x2 = x2.float()
    return x2


def _out(y: Tensor, x: Tensor) -> Tensor:
    y = y.view(*x.shape[:-1], y.shape[-1])
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def gemv(x: Tensor, w: Tensor) -> Tensor:
    """``x (..., K) @ w.T`` for a float32 or bfloat16 weight ``w (N, K)``; output in ``x.dtype``.

    Accumulates in float32 (bfloat16 weights are widened exactly; bfloat16 × bfloat16 uses
    AVX512-BF16 dot products where present). Call only when `available()`.
    """
    _check(x, w)
    if w.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"gemv takes float32 or bfloat16 weights, got {w.dtype}")
    return _out(torch.ops.headcount.gemv(_rows(x, w.shape[1]), w, None), x)


def gemv_int8(x: Tensor, q: Tensor, scales: Tensor) -> Tensor:
    """``x (..., K) @ (q * scales[:, None]).T`` for int8 ``q (N, K)`` and float32 ``scales (N,)``."""
    _check(x, q)
    if q.dtype != torch.int8 or scales.dtype != torch.float32 or scales.shape != (q.shape[0],):
        raise ValueError("gemv_int8 takes int8 q (N, K) and float32 scales (N,)")
    y = torch.ops.headcount.gemv(_rows(x, q.shape[1]), q, scales.contiguous())
    return _out(y, x)


def _check_packed(blocks: Tensor, qtype: int, k: int) -> None:
    _require()
    if qtype not in QTYPES:
        raise ValueError(f"unknown packed type code {qtype}; known: {sorted(QTYPES)}")
    name, block, size = QTYPES[qtype]
    if k % block or blocks.dtype != torch.uint8 or blocks.ndim != 2:
        raise ValueError(f"{name} rows must be uint8 (N, K/{block}*{size}) with K % {block} == 0")
    if blocks.shape[1] != k // block * size or not blocks.is_contiguous():
        raise ValueError(
            f"{name} rows of K={k} are {k // block * size} contiguous bytes, got {tuple(blocks.shape)}"
        )


def packed_op(qtype: int, int8_activations: bool | None = None) -> Any:
    """The operator a packed GEMV of ``qtype`` uses: ``headcount::gemv_q8a`` (int8 activations)
    for Q4_0/Q4_1/Q8_0 when ``int8_activations`` (default `INT8_ACTIVATIONS`), else
    ``headcount::gemv_q`` (float32 activations, the dequantised weights' exact products)."""
    int8 = INT8_ACTIVATIONS if int8_activations is None else int8_activations
    if int8 and qtype in INT8_ACTIVATION_TYPES:
        return direct().gemv_q8a
    return direct().gemv_q


def gemv_packed(
    x: Tensor, blocks: Tensor, qtype: int, k: int, int8_activations: bool | None = None
) -> Tensor:
    """``x (..., K) @ W.T`` for ``W (N, K)`` held as GGUF blocks ``blocks (N, row bytes)`` of
    ggml type ``qtype`` (see `QTYPES`); output in ``x.dtype``. ``int8_activations``: see
    `packed_op`. Call only when `available()`."""
    _check_packed(blocks, qtype, k)
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features, the packed weight takes {k}")
    return _out(packed_op(qtype, int8_activations)(_rows(x, k), blocks, qtype, k), x)


def dequantize_packed(blocks: Tensor, qtype: int, k: int, out: Tensor | None = None) -> Tensor:
    """GGUF blocks ``(N, row bytes)`` -> float32 ``(N, K)``, into ``out`` when given (reused)."""
    _check_packed(blocks, qtype, k)
    if out is None:
        out = torch.empty(blocks.shape[0], k, dtype=torch.float32)
    torch.ops.headcount.dequant_q(blocks, qtype, k, out)
    return out


def kernel_layout(blocks: Tensor, qtype: int, k: int) -> tuple[int, Tensor]:
    """``(qtype, blocks)`` as the loaded kernels read them best: GGUF Q4_1 / Q8_0 rows regrouped
    into `Q4_1X` / `Q8_0X` (the same bytes, see ``csrc/x16.cpp``) when `ACTIVATIONS` is
    ``"int16"``; anything else as given."""
    if ACTIVATIONS not in PACKED_ACTIVATIONS:
        raise ConfigError(
            f"HEADCOUNT_PACKED_ACT={ACTIVATIONS!r} is not one of {', '.join(PACKED_ACTIVATIONS)}"
        )
    if qtype in REGROUPED and ACTIVATIONS == "int16" and available():
        _check_packed(blocks, qtype, k)
        return REGROUPED[qtype], torch.ops.headcount.regroup(blocks, qtype, k)
    return qtype, blocks
