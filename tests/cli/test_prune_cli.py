"""`headcount prune`: the saved checkpoint is the masked model made smaller (same logits, the head
counts the mask implies), every headcount command reads it, prune.json's numbers match ones
computed here by hand, and bad input is one line with exit code 2 that touches nothing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import headcount
from headcount.cli.importance import encode_prefix
from headcount.cli.main import main
from headcount.prune import LanguageModeling, apply_mask, schedule

from .test_importance_cli import TEXT, assert_self_contained

FAST = ["--tokens", "64", "--window", "32", "--eval-tokens", "64"]


def prune(capsys: pytest.CaptureFixture[str], model: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["prune", str(model), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report" / "prune.json").read_text(encoding="utf-8"))


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def decoder_params(cfg: headcount.DecoderConfig) -> int:
    """Parameters of a Llama-layout decoder with Q/K/V biases, from its config alone."""
    C, D, V, F = cfg.d_model, cfg.head_dim, cfg.vocab_size, cfg.d_ff
    total = V * C * (1 if cfg.tie_embeddings else 2) + C  # embeddings, head, final norm
    for H, G in zip(cfg.n_heads, cfg.n_kv_heads, strict=True):  # type: ignore[arg-type]
        total += 2 * C  # the two norms
        total += (H + 2 * G) * D * (C + 1) + H * D * C  # qkv_proj with biases, o_proj
        total += 3 * C * F  # SwiGLU
    return total


def test_pruned_checkpoint_is_the_masked_model(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    code, stdout, err = prune(capsys, decoder_dir, "--fraction", "0.4", *FAST, "-o", str(out))
    assert code == 0, err
    assert "removed 5 of 13 query heads" in stdout and str(out) in stdout
    full = headcount.load(decoder_dir)
    assert isinstance(full, headcount.Decoder)
    data = report(out)
    keep = [
        torch.tensor([h in kept for h in range(a.n_heads)])
        for a, kept in zip(full.attention_layers(), data["heads_kept"], strict=True)
    ]
    # the mask is the library's importance ranking on the same text
    text = headcount.corpus("shakespeare", split="calibration")  # no Gutenberg header to strip
    assert "*** START OF" not in text[:5000]
    ids = encode_prefix(full.tokenizer, text, 64)
    assert ids == full.tokenizer.encode(text[:5000])[:64]
    objective = LanguageModeling(ids, window=32)
    expected = schedule(full, objective, [0.4], method="importance").masks[0.4]
    assert [m.tolist() for m in keep] == [m.tolist() for m in expected]

    pruned = headcount.load(out)
    assert isinstance(pruned, headcount.Decoder)
    assert list(pruned.config.n_heads) == [int(m.sum()) for m in keep] == [3, 3, 2]
    kv_after = [
        len({a.kv_head_of(h) for h in range(a.n_heads) if m[h]})
        for a, m in zip(full.attention_layers(), keep, strict=True)
    ]
    assert list(pruned.config.n_kv_heads) == kv_after
    x = torch.randint(
        0, full.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3)
    )
    apply_mask(full, keep)
    with torch.no_grad():
        masked = full(x).logits
        torch.testing.assert_close(pruned(x).logits, masked, rtol=1e-5, atol=1e-5)
    apply_mask(full, None)

    before, after = decoder_params(full.config), decoder_params(pruned.config)
    assert data["parameters"] == {"before": before, "after": after}
    assert sum(p.numel() for p in pruned.parameters()) == after
    D = full.config.head_dim
    assert data["kv_cache_bytes_per_token"] == {
        "dtype": "float16",
        "before": sum(full.config.n_kv_heads) * 2 * D * 2,  # type: ignore[arg-type]
        "after": sum(kv_after) * 2 * D * 2,
    }
    assert data["heads_per_layer"] == {"before": [6, 4, 3], "after": [3, 3, 2]}
    assert (data["fraction"], data["method"], data["unit"]) == (0.4, "importance", "head")
    macbeth = headcount.corpus("shakespeare", play="macbeth")
    eval_ids = full.tokenizer.encode(macbeth[:2000])[:64]
    q = data["quality"]
    assert q["full"] == pytest.approx(
        headcount.perplexity(full, eval_ids, window=64, stride=64).perplexity
    )
    assert q["pruned"] == pytest.approx(
        headcount.perplexity(pruned, eval_ids, window=64, stride=64).perplexity, rel=1e-5
    )
    assert q["recovered"] is None and data["recovery"] is None
    assert "perplexity" in q["metric"] and "macbeth" in q["metric"]
    assert_self_contained(out / "report" / "index.html")
    assert {p.name for p in (out / "report" / "figures").iterdir()} == {"heads.png", "scores.png"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    code, kv_out, _ = prune_kv(capsys, out)
    assert code == 0
    (saved,) = [v for v in json.loads(kv_out)["variants"] if v["published"]]
    assert saved["bytes_per_token"] == data["kv_cache_bytes_per_token"]["after"]


def prune_kv(capsys: pytest.CaptureFixture[str], folder: Path) -> tuple[int, str, str]:
    code = main(["kv", str(folder), "--context", "64", "--json"])
    out, err = capsys.readouterr()
    return code, out, err


def test_groups_with_recovery(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    code, stdout, err = prune(
        capsys,
        decoder_dir,
        "--fraction", "0.4", "--unit", "group", "--by", "random", "--seed", "1",
        "--recover-minutes", "0.02",
        *FAST,
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    data = report(out)
    assert sum(data["kv_heads_per_layer"]["after"]) == 7 - 3  # round(0.4 * 7) groups
    rec = data["recovery"]
    assert rec["steps"] >= 1 and len(rec["losses"]) == rec["steps"] and rec["minutes"] == 0.02
    assert rec["tokens"] == 32 * rec["steps"] and 0 < rec["seconds"] < 60
    assert data["quality"]["recovered"] is not None and "recovery:" in stdout
    assert (out / "report" / "figures" / "recovery.png").is_file()
    pruned = headcount.load(out)
    assert list(pruned.config.n_kv_heads) == data["kv_heads_per_layer"]["after"]
    # a whole group goes with its query heads: every kept group is complete
    full = headcount.load(decoder_dir)
    for a, kept in zip(full.attention_layers(), data["heads_kept"], strict=True):
        groups = {a.kv_head_of(h) for h in kept}
        assert kept == [h for h in range(a.n_heads) if a.kv_head_of(h) in groups]


@pytest.mark.parametrize(
    "extra", [["--by", "iterative", "--step", "0.2"], ["--by", "gates", "--gate-steps", "3"]]
)
def test_other_rankings(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    out = tmp_path / "pruned"
    code, _, err = prune(capsys, decoder_dir, "--fraction", "0.3", *extra, *FAST, "-o", str(out))
    assert code == 0, err
    data = report(out)
    assert data["method"] == extra[1] and sum(data["heads_per_layer"]["after"]) == 13 - 4
    assert list(headcount.load(out).config.n_heads) == data["heads_per_layer"]["after"]


@pytest.mark.parametrize("by", ["importance", "gates"])
def test_encoder(
    by: str, encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "pruned"
    code, _, err = prune(
        capsys, encoder_dir, "--fraction", "0.25", "--by", by, "--gate-steps", "3",
        "--text", str(text), "--eval-tokens", "200", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    data = report(out)
    objective = "contrastive" if by == "importance" else "cosine to the unpruned"
    assert objective in data["meta"]["objective"]
    pruned = headcount.load(out)
    assert isinstance(pruned, headcount.Encoder)
    assert (
        list(pruned.config.n_heads) == data["heads_per_layer"]["after"]
        and sum(data["heads_per_layer"]["after"]) == 6
    )
    q = data["quality"]
    assert "cosine" in q["metric"] and q["full"] == pytest.approx(1.0)
    assert -1 <= q["pruned"] <= 1


def test_force_replaces_an_earlier_prune(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned"
    assert (
        prune(capsys, decoder_dir, "--fraction", "0.2", "--by", "random", *FAST, "-o", str(out))[0]
        == 0
    )
    code, _, err = prune(
        capsys, decoder_dir, "--fraction", "0.3", "--by", "random", *FAST, "-o", str(out)
    )
    assert code == 2 and "--force" in err and report(out)["fraction"] == 0.2
    code, _, err = prune(
        capsys, decoder_dir, "--fraction", "0.3", "--by", "random", *FAST, "-o", str(out), "--force"
    )
    assert code == 0, err
    assert report(out)["fraction"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


# ----------------------------------------------------------------------------- bad input
BAD = {
    "fraction 1": (["--fraction", "1"], "fraction must be in [0, 1)"),
    "negative fraction": (["--fraction", "-0.1"], "fraction must be in [0, 1)"),
    "fraction empties a layer": (["--fraction", "0.9"], "would empty a layer"),
    "groups empty a layer": (["--fraction", "0.7", "--unit", "group"], "would empty a layer"),
    "unknown --by": (["--fraction", "0.2", "--by", "magic"], "unknown --by 'magic'"),
    "unknown --unit": (["--fraction", "0.2", "--unit", "layer"], "unknown --unit 'layer'"),
    "recover 0 minutes": (["--fraction", "0.2", "--recover-minutes", "0"], "--recover-minutes"),
    "recover < 0 minutes": (["--fraction", "0.2", "--recover-minutes", "-1"], "--recover-minutes"),
    "eval play = play": (
        ["--fraction", "0.2", "--play", "macbeth", "--eval-play", "Macbeth"],
        "part of the scoring text",
    ),
    "eval play in calibration": (
        ["--fraction", "0.2", "--eval-play", "othello"],
        "part of the scoring text",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(
    case: str, decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, message = BAD[case]
    source = digest(decoder_dir)
    out = tmp_path / "pruned"
    code, _, err = prune(capsys, decoder_dir, *argv, *FAST, "-o", str(out))
    assert_refused(code, err, message)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert digest(decoder_dir) == source


def assert_refused(code: int, err: str, message: str, command: str = "prune") -> None:
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith(f"headcount {command}: error: ") and message in errors[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["is", "lies inside", "contains"])
def test_output_apart_from_source(
    where: str, decoder_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = {"is": decoder_dir, "lies inside": decoder_dir / "sub", "contains": decoder_dir.parent}[
        where
    ]
    source = digest(decoder_dir.parent)
    code, _, err = prune(capsys, decoder_dir, "--fraction", "0.2", *FAST, "-o", str(out), "--force")
    assert_refused(code, err, f"{where} the model's source")
    assert digest(decoder_dir.parent) == source and not (decoder_dir / "sub").exists()


def test_occupied_folder(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):
        code, _, err = prune(
            capsys, decoder_dir, "--fraction", "0.2", *FAST, "-o", str(out), *force
        )
        assert_refused(code, err, "not empty")
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
        assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_help_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "importance|iterative|gates|random" in text and "head|group" in text


def test_failure_leaves_no_half_written_checkpoint(
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import headcount.report.pruning as pruning

    out = tmp_path / "pruned"
    argv = ["--fraction", "0.2", "--by", "random", *FAST, "-o", str(out)]
    assert prune(capsys, decoder_dir, *argv)[0] == 0
    earlier = digest(out)

    def boom(*args: object) -> str:
        raise RuntimeError("report failed")

    monkeypatch.setattr(pruning, "render_prune", boom)
    with pytest.raises(RuntimeError, match="report failed"):
        prune(capsys, decoder_dir, *argv, "--force")
    assert digest(out) == earlier  # the earlier save is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temporary left
    with pytest.raises(RuntimeError, match="report failed"):
        prune(capsys, decoder_dir, *argv[:-1], str(tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
