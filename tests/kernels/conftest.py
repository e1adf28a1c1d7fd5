"""Shared pieces of the kernel tests: real GGUF tensors and a child-process runner."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headcount import kernels


@lru_cache(maxsize=1)
def smollm2_tensors() -> dict[str, Any]:
    from headcount.loaders.gguf_reader import _open
    from headcount.loaders.registry import embedded_path

    return {t.name: t for t in _open(embedded_path("smollm2")).tensors}


@lru_cache(maxsize=1)
def gemma3_tensors() -> dict[str, Any]:
    from headcount.loaders.gguf_reader import BufferReader, read_parts
    from headcount.loaders.registry import embedded_parts

    parts, sha = embedded_parts("gemma3")
    return {t.name: t for t in BufferReader(read_parts(parts, sha, "gemma3"), "gemma3").tensors}


def rows_of(t: Any, n: int | None = None) -> tuple[np.ndarray, int, int]:
    """(uint8 rows, ggml type code, K) of a GGUF matrix, its first ``n`` rows."""
    data = np.asarray(t.data)
    if n is not None:
        data = data[:n]
    return np.array(data, dtype=np.uint8, copy=True), int(t.tensor_type), int(t.shape[0])


def run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c code`` with extra environment variables; the result (checked by the caller)."""
    full = {**os.environ, **env}
    root = str(Path(__file__).resolve().parents[2])
    full["PYTHONPATH"] = root + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=900
    )


needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason=f"compiled kernels unavailable: {kernels.unavailable_reason()}"
)
