"""`torchrun -m headcount analyze|importance`: the report rank 0 writes equals the one-process
report; the other ranks print and write nothing; other commands refuse to run under torchrun."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headcount import load
from headcount.cli.main import main
from tests.distributed.launch import ROOT, base_env
from tests.distributed.workers import TEXT
from tests.models.test_save import VOCAB, bpe_tokenizer
from tests.prune.conftest import tiny_decoder


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_decoder(vocab_size=VOCAB, bos_token_id=0, eos_token_ids=(1,))
    model.set_tokenizer(bpe_tokenizer())
    return model.save(tmp_path_factory.mktemp("decoder") / "tiny")


def torchrun(n: int, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={n}", "-m", "headcount", *argv]
    return subprocess.run(
        cmd, cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=240
    )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_same_table(a: list[dict[str, str]], b: list[dict[str, str]], tol: float) -> None:
    assert len(a) == len(b) and a[0].keys() == b[0].keys()
    for ra, rb in zip(a, b, strict=True):
        for k, va in ra.items():
            try:
                x, y = float(va), float(rb[k])
            except ValueError:
                assert va == rb[k], k
                continue
            assert x == pytest.approx(y, rel=tol, abs=tol, nan_ok=True), (k, ra, rb)


@pytest.mark.parametrize(
    ("command", "table", "extra"),
    [
        ("importance", "importance.csv", ["--tokens", "96", "--window", "16"]),
        ("analyze", "scores.csv", ["--tokens", "40", "--chunk", "16", "--no-syntax"]),
    ],
)
def test_torchrun_report_equals_one_process(
    decoder_dir: Path, tmp_path: Path, command: str, table: str, extra: list[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    argv = [command, str(decoder_dir), "--text", str(text), *extra]
    done = torchrun(2, *argv, "-o", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1  # rank 0 only
    assert main([*argv, "-o", str(tmp_path / "one")]) == 0
    assert_same_table(rows(tmp_path / "two" / table), rows(tmp_path / "one" / table), 1e-5)


def test_other_commands_refuse_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["kv", "smollm2"]) == 2
    assert "only analyze, importance" in capsys.readouterr().err


def test_torchrun_convert_uptrains_to_the_one_process_weights(
    decoder_dir: Path, tmp_path: Path
) -> None:
    """2 processes share each batch of 3 windows (2 rows and 1; the last batch of 1 row is rank
    0's alone), checkpoint every 2 steps, and rank 0 writes the model and report."""
    argv = ["convert", str(decoder_dir), "--kv-heads", "1", "--tokens", "512", "--window", "32"]
    argv += ["--batch-size", "3", "--uptrain-tokens", "480", "--checkpoint-every", "2"]
    argv += ["--lr", "3e-3", "--warmup", "2", "--eval-tokens", "64"]
    done = torchrun(2, *argv, "-o", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1 and done.stderr.count("loading ") == 1  # rank 0
    assert main([*argv, "-o", str(tmp_path / "one")]) == 0
    two, one = load(tmp_path / "two"), load(tmp_path / "one")
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k], v, rtol=1e-4, atol=1e-6, msg=k)
    losses = [
        json.loads((tmp_path / d / "report" / "convert.json").read_text())["uptraining"]["losses"]
        for d in ("two", "one")
    ]
    assert len(losses[0]) == len(losses[1]) >= 4
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # float32, other sum orders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # checkpoints removed


def test_torchrun_prune_recovers_on_every_rank_and_rank_0_writes(
    decoder_dir: Path, tmp_path: Path
) -> None:
    """Recovery by minutes follows rank 0's clock, so both ranks stop after the same step (a
    rank that stopped earlier would leave the other waiting until the timeout); the heads
    removed are those one process removes."""
    argv = ["prune", str(decoder_dir), "--fraction", "0.4", "--by", "random", "--seed", "1"]
    argv += ["--tokens", "512", "--window", "32", "--eval-tokens", "64"]
    done = torchrun(2, *argv, "--recover-minutes", "0.05", "-o", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1 and done.stdout.count("recovery:") == 1
    rec = json.loads((tmp_path / "two" / "report" / "prune.json").read_text())
    assert rec["recovery"]["steps"] >= 1 and rec["meta"]["seed"] == 1
    assert main([*argv, "-o", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "report" / "prune.json").read_text())
    assert rec["heads_kept"] == one["heads_kept"]
    assert load(tmp_path / "two").config.n_heads == load(tmp_path / "one").config.n_heads
