"""Start N ranks of a worker on loopback (gloo) as plain subprocesses, each with the environment
torchrun would give it, wait a bounded time, and leave no process behind.

Each rank runs ``python -m tests.distributed.workers NAME OUT ARGS...``; a worker writes its
result with ``torch.save`` to ``OUT/rank{r}.pt`` and reports errors on stderr.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Rank:
    rank: int
    returncode: int | None  # None: killed after the deadline
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]),
        HEADCOUNT_DIST_TIMEOUT="60",
    )
    env.update(extra)
    return env


def run_ranks(
    n: int,
    worker: str,
    out: Path,
    *args: str,
    start: Sequence[int] | None = None,
    deadline: float = 240.0,
    timeout: float = 60.0,
) -> list[Rank]:
    """Run ranks ``start`` (default all ``n``) of ``worker`` with WORLD_SIZE=n; every process is
    killed at ``deadline`` seconds if still running. Returns one `Rank` per started rank.
    ``timeout``: the process group's, generous by default: on a loaded machine the ranks may
    take many seconds to import torch and reach the rendezvous."""
    port = free_port()
    procs: list[tuple[int, subprocess.Popen[str]]] = []
    for r in start if start is not None else range(n):
        env = base_env(
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(n),
            LOCAL_WORLD_SIZE=str(n),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            HEADCOUNT_DIST_TIMEOUT=str(timeout),
        )
        cmd = [sys.executable, "-m", "tests.distributed.workers", worker, str(out), *args]
        procs.append(
            (
                r,
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    results = []
    end = time.monotonic() + deadline
    try:
        for r, p in procs:
            try:
                so, se = p.communicate(timeout=max(end - time.monotonic(), 0.1))
                results.append(Rank(r, p.returncode, so, se))
            except subprocess.TimeoutExpired:
                p.kill()
                so, se = p.communicate()
                results.append(Rank(r, None, so, se))
    finally:
        for _, p in procs:  # an error above: no rank outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def check_ok(ranks: list[Rank]) -> None:
    bad = [r for r in ranks if r.returncode != 0]
    assert not bad, "\n".join(f"rank {r.rank} rc={r.returncode}:\n{r.stderr[-3000:]}" for r in bad)
