"""The kernels' build and its switches, in child processes: two processes building into one fresh
cache at once both load the same library; the AVX2 variant (forced by HEADCOUNT_KERNELS=avx2)
and the stock torch path (HEADCOUNT_KERNELS=0) give the default variant's logits on SmolLM2, with
the default int16 activations of Q4_1 weights and with float ones (HEADCOUNT_PACKED_ACT=float)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import headcount
from headcount import kernels
from tests.kernels.conftest import needs_kernels, run_child

pytestmark = [pytest.mark.slow]

REPORT = (
    "import json; from headcount import kernels as k; "
    "print(json.dumps([k.available(), k.variant(), str(k.build_dir()), k.unavailable_reason()]))"
)

# logits of packed SmolLM2 on 8 tokens (every linear through the packed GEMV: M = 8) and on 24
# tokens (prefill: dequantised weights and the float GEMM)
LOGITS = """
import sys, torch, headcount
from headcount import kernels
m = headcount.load("smollm2")
ids = m.tokenizer.encode("To be, or not to be, that is the question: whether 'tis nobler in the mind")
with torch.inference_mode():
    out = {"decode": m(torch.tensor([ids[:8]])).logits, "prefill": m(torch.tensor([ids[:24]])).logits}
out["variant"] = kernels.variant()
out["layout"] = m.layers[0].mlp.down.weight.layouts[0]
torch.save(out, sys.argv[1] if len(sys.argv) > 1 else "{path}")
"""


@pytest.fixture(scope="module")
def avx2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache that two processes built the AVX2 variant into at the same time."""
    if "avx2" not in kernels.cpu_flags():
        pytest.skip("the CPU has no AVX2")
    cache = tmp_path_factory.mktemp("hc-cache")
    env = {"HEADCOUNT_CACHE": str(cache), "HEADCOUNT_KERNELS": "avx2"}
    cmd = [sys.executable, "-c", REPORT]
    full = {**os.environ, **env}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in outs]
    assert all(r[0] and r[1] == "avx2" for r in reports), reports
    assert reports[0][2] == reports[1][2]  # the same folder ...
    libs = list(cache.glob("kernels/avx2-*/headcount_kernels_avx2.so"))
    assert len(libs) == 1 and Path(reports[0][2]) == libs[0].parent  # ... built once
    assert (libs[0].parent / "built").is_file()
    return cache


def test_two_processes_build_one_library(avx2_cache: Path) -> None:
    # a third process finds it built and loads it without building
    out = run_child(REPORT, HEADCOUNT_CACHE=str(avx2_cache), HEADCOUNT_KERNELS="avx2")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[:2] == [True, "avx2"]


def _logits(tmp_path: Path, name: str, **env: str) -> dict[str, object]:
    path = tmp_path / f"{name}.pt"
    out = run_child(LOGITS.replace("{path}", str(path)), **env)
    assert out.returncode == 0, out.stderr[-2000:]
    return torch.load(path)


@needs_kernels
@pytest.mark.model
def test_variants_and_the_stock_path_give_the_same_logits(avx2_cache: Path, tmp_path: Path) -> None:
    dense = headcount.load("smollm2", dtype=torch.float32)  # gguf's dequantisation, fp32
    ids = dense.tokenizer.encode(
        "To be, or not to be, that is the question: whether 'tis nobler in the mind"
    )
    with torch.inference_mode():
        ref = {
            "decode": dense(torch.tensor([ids[:8]])).logits,
            "prefill": dense(torch.tensor([ids[:24]])).logits,
        }
    runs = {
        "default": _logits(tmp_path, "default"),
        "avx2": _logits(
            tmp_path, "avx2", HEADCOUNT_CACHE=str(avx2_cache), HEADCOUNT_KERNELS="avx2"
        ),
        "default float": _logits(tmp_path, "default-float", HEADCOUNT_PACKED_ACT="float"),
        "avx2 float": _logits(
            tmp_path,
            "avx2-float",
            HEADCOUNT_CACHE=str(avx2_cache),
            HEADCOUNT_KERNELS="avx2",
            HEADCOUNT_PACKED_ACT="float",
        ),
        "stock": _logits(tmp_path, "stock", HEADCOUNT_KERNELS="0"),
    }
    assert runs["default"]["variant"] == runs["default float"]["variant"] == kernels.variant()
    assert runs["avx2"]["variant"] == runs["avx2 float"]["variant"] == "avx2"
    assert runs["stock"]["variant"] is None
    layouts = {name: run["layout"] for name, run in runs.items()}
    assert layouts == {"default": "Q4_1x", "avx2": "Q4_1x"} | {
        n: "Q4_1" for n in ("default float", "avx2 float", "stock")
    }
    for name, run in runs.items():
        for key in ("decode", "prefill"):
            got = run[key]
            assert isinstance(got, torch.Tensor)
            if key == "decode" and name in ("default", "avx2"):
                # Q4_1 GEMVs with int16 activations (csrc/q4x.cpp): x rounded per 32 values, so
                # logits move by the rounding (~0.01 of values up to ~30), not by float noise
                torch.testing.assert_close(got, ref[key], rtol=1e-3, atol=5e-2, msg=name)
            else:  # float32 sums in another order: equal within float tolerance, not bit for bit
                torch.testing.assert_close(got, ref[key], rtol=1e-4, atol=2e-3, msg=f"{name} {key}")
            assert torch.equal(got.argmax(-1), ref[key].argmax(-1)), f"{name} {key}"
