"""`headcount convert`: the saved checkpoint is `headcount.convert` of the source (same logits) or
that model uptrained as `headcount.uptrain` would (same weights), every headcount command reads
it, convert.json's numbers match ones computed here, an interrupted uptraining resumes to the
weights of an uninterrupted run, and bad input is one line with exit code 2 that touches nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import headcount
import headcount.cli.convert as cli_convert
from headcount.cli.importance import encode_prefix, objective_for
from headcount.cli.main import main
from headcount.convert import convert, uptrain

from . import test_prune_cli as prune_cli
from .test_importance_cli import TEXT, assert_self_contained
from .test_prune_cli import digest

FAST = ["--tokens", "512", "--window", "32", "--eval-tokens", "64"]
UPTRAIN = ["--uptrain-tokens", "640", "--checkpoint-every", "2", "--lr", "3e-3", "--warmup", "2"]
X = torch.randint(0, 262, (2, 40), generator=torch.Generator().manual_seed(3))


def run(capsys: pytest.CaptureFixture[str], model: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["convert", str(model), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report" / "convert.json").read_text(encoding="utf-8"))


def checkpoints(out: Path) -> Path:
    return out.with_name(out.name + ".uptrain")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def calibration_text() -> str:
    return headcount.corpus("shakespeare", split="calibration")  # no Gutenberg header


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize(
    ("kv", "method", "extra"),
    [
        ("1", "mean", []),
        ("2,2,1", "first", []),
        ("3,1,1", "random", ["--seed", "5"]),
        ("1", "fit", ["--fit-tokens", "128"]),
    ],
)
def test_saved_model_is_the_library_conversion(
    kv: str,
    method: str,
    extra: list[str],
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "converted"
    argv = ["--kv-heads", kv, "--method", method, *extra, *FAST, "-o", str(out)]
    code, stdout, err = run(capsys, decoder_dir, *argv)
    assert code == 0, err
    assert str(out) in stdout and "KV heads" in stdout
    full = headcount.load(decoder_dir)
    assert isinstance(full, headcount.Decoder)
    counts = [int(k) for k in kv.split(",")] * (3 if "," not in kv else 1)
    calibration = (
        encode_prefix(full.tokenizer, calibration_text(), 128) if method == "fit" else None
    )
    seed = int(extra[1]) if extra and extra[0] == "--seed" else 0
    expected = convert(
        full, counts if "," in kv else counts[0], method,  # type: ignore[arg-type]
        calibration=calibration, seed=seed, window=32,
    )  # fmt: skip
    saved = headcount.load(out)
    assert isinstance(saved, headcount.Decoder)
    assert list(saved.config.n_kv_heads) == counts  # type: ignore[arg-type]
    with torch.no_grad():
        torch.testing.assert_close(saved(X).logits, expected(X).logits, rtol=1e-5, atol=1e-5)

    data = report(out)
    assert (data["method"], data["uptraining"]) == (method, None)
    assert data["kv_heads_per_layer"] == {"before": [2, 4, 1], "after": counts}
    assert data["heads_per_layer"] == [6, 4, 3]
    params = {
        "before": sum(p.numel() for p in full.parameters()),
        "after": sum(p.numel() for p in saved.parameters()),
    }
    assert data["parameters"] == params and params["after"] < params["before"]
    D = full.config.head_dim
    per_token = {"before": 7 * 2 * D * 2, "after": sum(counts) * 2 * D * 2}  # K+V, float16
    assert data["kv_cache_bytes_per_token"] == {"dtype": "float16", **per_token}
    assert data["kv_cache_bytes_at_context"] == {
        "dtype": "float16",
        "context": 8192,
        "batch": 1,
        **{k: 8192 * v for k, v in per_token.items()},
    }
    eval_ids = full.tokenizer.encode(headcount.corpus("shakespeare", play="macbeth")[:2000])[:64]
    q = data["quality"]
    ppl = headcount.perplexity(full, eval_ids, window=64, stride=64).perplexity
    assert q["original"] == pytest.approx(ppl)
    ppl = headcount.perplexity(expected, eval_ids, window=64, stride=64).perplexity
    assert q["converted"] == pytest.approx(ppl, rel=1e-5)
    assert q["uptrained"] is None and "perplexity" in q["metric"] and "macbeth" in q["metric"]
    assert_self_contained_or_figureless(out / "report" / "index.html")
    assert list((out / "report" / "figures").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no temporary left


def assert_self_contained_or_figureless(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "<img " not in html and "<table" in html


def test_every_command_reads_the_result(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mqa"
    assert run(capsys, decoder_dir, "--kv-heads", "1", *FAST, "-o", str(out))[0] == 0
    assert main(["kv", str(out), "--context", "64", "--json"]) == 0
    (saved,) = [v for v in json.loads(capsys.readouterr().out)["variants"] if v["published"]]
    assert saved["bytes_per_token"] == report(out)["kv_cache_bytes_per_token"]["after"]
    assert main(["run", str(out), "To be", "--raw", "-n", "3"]) == 0
    assert main(["view", str(out), "To be or not to be", "-o", str(tmp_path / "v.html")]) == 0
    code = main(
        ["analyze", str(out), "--tokens", "64", "--chunk", "32", "--no-syntax",
         "-o", str(tmp_path / "analysis")]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "analysis" / "index.html").is_file()


# ----------------------------------------------------------------------------- uptraining
def test_uptrained_model_is_the_library_uptraining(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mqa"
    code, stdout, err = run(capsys, decoder_dir, "--kv-heads", "1", *UPTRAIN, *FAST, "-o", str(out))
    assert code == 0, err
    assert "uptraining: 5 steps, 640 tokens" in stdout
    assert "tok/s" in err and "ETA" in err and "loss" in err  # the progress bar
    assert not checkpoints(out).exists()  # the checkpoint goes once the result is saved

    full = headcount.load(decoder_dir)
    student = convert(full, 1, "mean")
    objective = objective_for(full, calibration_text(), 512, 32, batch_size=4)
    res = uptrain(student, objective, teacher=full, tokens=640, lr=3e-3, warmup=2)
    saved = headcount.load(out)
    assert_same_weights(saved, student)

    data = report(out)
    up = data["uptraining"]
    assert (up["steps"], up["tokens"], up["stopped_by"]) == (5, 640, "tokens")
    assert up["losses"] == pytest.approx(res.losses, rel=1e-6)
    assert up["tokens_seen"] == [128 * (i + 1) for i in range(5)]
    assert up["budget"] == {"tokens": 640} and up["loss"] == "kl" and up["lr"] == 3e-3
    assert up["resumed_from"] is None and 0 < up["seconds"] < 60
    eval_ids = full.tokenizer.encode(headcount.corpus("shakespeare", play="macbeth")[:2000])[:64]
    ppl = headcount.perplexity(student, eval_ids, window=64, stride=64).perplexity
    assert data["quality"]["uptrained"] == pytest.approx(ppl, rel=1e-5)
    assert (out / "report" / "figures" / "uptrain.png").is_file()
    assert_self_contained(out / "report" / "index.html")


def test_uptraining_minutes_with_cross_entropy_on_attention(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gqa"
    code, _, err = run(
        capsys, decoder_dir, "--kv-heads", "2,2,1", "--uptrain-minutes", "0.01",
        "--loss", "ce", "--params", "attention", *FAST, "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    up = report(out)["uptraining"]
    assert up["budget"] == {"minutes": 0.01} and up["stopped_by"] == "minutes"
    assert up["loss"] == "ce" and up["params"] == "attention" and up["steps"] >= 1
    full, saved = headcount.load(decoder_dir), headcount.load(out)
    # attention only: everything else is the source's
    for k, v in saved.state_dict().items():
        if ".attn." not in k:
            torch.testing.assert_close(v, full.state_dict()[k], rtol=0, atol=0)


def test_encoder(encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "encoder"
    code, _, err = run(
        capsys, encoder_dir, "--kv-heads", "2", "--text", str(text), "--uptrain-tokens", "200",
        "--batch-size", "4", "--eval-tokens", "200", "-o", str(out),
    )  # fmt: skip
    assert code == 0, err
    saved = headcount.load(out)
    assert isinstance(saved, headcount.Encoder)
    assert list(saved.config.n_kv_heads) == [2, 2]  # type: ignore[arg-type]
    data = report(out)
    q = data["quality"]
    assert "cosine to the original model" in q["metric"] and q["original"] == pytest.approx(1.0)
    assert -1 <= q["converted"] <= 1 and -1 <= q["uptrained"] <= 1
    assert data["uptraining"]["steps"] >= 1 and data["kv_heads_per_layer"]["before"] == [4, 4]


# ----------------------------------------------------------------------------- resume
class Interrupt:
    """Stands in for `UptrainBar`: Ctrl-C after optimizer step ``at``."""

    at = 3

    def __init__(self, tokens: int | None, minutes: float | None) -> None:
        pass

    def __call__(self, step: int, loss: float, tokens: int, elapsed: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def test_interrupted_uptraining_resumes_to_the_same_weights(
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["--kv-heads", "1", "--method", "random", "--seed", "2", *UPTRAIN, *FAST]
    whole = tmp_path / "whole"
    assert run(capsys, decoder_dir, *argv, "-o", str(whole))[0] == 0

    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(cli_convert, "UptrainBar", Interrupt)
        code, _, err = run(capsys, decoder_dir, *argv, "-o", str(out))
    assert code == 130
    assert "checkpoint is kept" in err and "--resume" in err and "Traceback" not in err
    assert not out.exists()
    assert sorted(p.name for p in checkpoints(out).iterdir()) == [
        "convert-run.json",
        "uptrain.pt",
    ]

    # without --resume the checkpoint is neither continued nor overwritten
    kept = digest(checkpoints(out))
    code, _, err = run(capsys, decoder_dir, *argv, "-o", str(out))
    assert_refused(code, err, "pass --resume to continue it, or --force")
    # a run with other options is refused (the record of the run in DIR.uptrain/ differs)
    changed = {"--method": "mean", "--lr": "1e-3"}
    for flag, value in changed.items():
        other = list(argv)
        other[other.index(flag) + 1] = value
        code, _, err = run(capsys, decoder_dir, *other, "--resume", "-o", str(out))
        assert_refused(code, err, "was written by a different run")
        assert flag.removeprefix("--") in err
    assert digest(checkpoints(out)) == kept and not out.exists()

    code, stdout, err = run(capsys, decoder_dir, *argv, "--resume", "-o", str(out))
    assert code == 0, err
    assert "resumed at step 2" in stdout
    assert_same_weights(headcount.load(out), headcount.load(whole))
    a, b = report(out)["uptraining"], report(whole)["uptraining"]
    assert a["resumed_from"] == 2 and b["resumed_from"] is None
    assert a["losses"] == b["losses"] and a["steps"] == b["steps"] == 5
    assert not checkpoints(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed", "whole"]


def test_interrupted_before_the_first_checkpoint(
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_convert, "UptrainBar", Interrupt)
    out = tmp_path / "mqa"
    code, _, err = run(
        capsys, decoder_dir, "--kv-heads", "1", "--uptrain-tokens", "640", *FAST, "-o", str(out)
    )
    assert code == 130 and "nothing to resume" in err
    assert list(tmp_path.iterdir()) == []


def test_force_starts_afresh_over_a_checkpoint(
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "mqa"
    argv = ["--kv-heads", "1", *UPTRAIN, *FAST, "-o", str(out)]
    with monkeypatch.context() as m:
        m.setattr(cli_convert, "UptrainBar", Interrupt)
        assert run(capsys, decoder_dir, *argv)[0] == 130
    code, _, err = run(capsys, decoder_dir, *argv, "--force")
    assert code == 0, err
    assert report(out)["uptraining"]["resumed_from"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mqa"]


# ----------------------------------------------------------------------------- bad input
BAD = {
    "kv heads do not divide": (["--kv-heads", "4"], "n_kv_heads=4 does not divide"),
    "kv heads exceed": (["--kv-heads", "7"], "n_kv_heads=7 exceeds the layer's n_heads=6"),
    "kv heads per layer exceed": (["--kv-heads", "1,1,6"], "layer 2: n_kv_heads=6 exceeds"),
    "kv heads list too short": (["--kv-heads", "1,1"], "has 2 entries but the model has 3"),
    "kv heads zero": (["--kv-heads", "0"], "--kv-heads must be a positive integer"),
    "kv heads not a number": (["--kv-heads", "two"], "--kv-heads must be a positive integer"),
    "unknown method": (["--kv-heads", "1", "--method", "magic"], "unknown --method 'magic'"),
    "no tokens": (["--kv-heads", "1", "--uptrain-tokens", "0"], "--uptrain-tokens must be > 0"),
    "negative minutes": (
        ["--kv-heads", "1", "--uptrain-minutes", "-1"],
        "--uptrain-minutes must be > 0",
    ),
    "no minutes": (["--kv-heads", "1", "--uptrain-minutes", "0"], "--uptrain-minutes must be > 0"),
    "both budgets": (
        ["--kv-heads", "1", "--uptrain-minutes", "1", "--uptrain-tokens", "100"],
        "not both",
    ),
    "resume without a budget": (["--kv-heads", "1", "--resume"], "--resume continues"),
    "resume without a checkpoint": (
        ["--kv-heads", "1", "--uptrain-tokens", "100", "--resume"],
        "no uptraining checkpoint",
    ),
    "unknown loss": (["--kv-heads", "1", "--loss", "mse"], "unknown --loss 'mse'"),
    "unknown params": (["--kv-heads", "1", "--params", "mlp"], "unknown --params 'mlp'"),
    "eval play in the training text": (
        ["--kv-heads", "1", "--eval-play", "othello"],
        "part of the training text",
    ),
    "window longer than the context": (
        ["--kv-heads", "1", "--uptrain-tokens", "100", "--window", "100"],
        "longer than the model's context",
    ),
}


@pytest.mark.parametrize(("argv", "message"), list(BAD.values()), ids=list(BAD))
def test_bad_input(
    argv: list[str],
    message: str,
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused in one line, exit code 2; no output folder, no checkpoint folder, source intact."""
    source = digest(decoder_dir)
    fast = FAST if "--window" not in argv else FAST[:2] + FAST[4:]
    assert_refused(*run(capsys, decoder_dir, *argv, *fast, "-o", str(tmp_path / "c"))[::2], message)
    assert list(tmp_path.iterdir()) == []
    assert digest(decoder_dir) == source


def assert_refused(code: int, err: str, message: str) -> None:
    prune_cli.assert_refused(code, err, message, command="convert")


def test_output_apart_from_source(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = digest(decoder_dir.parent)
    places = {"is": decoder_dir, "lies inside": decoder_dir / "sub", "contains": decoder_dir.parent}
    for where, out in places.items():
        argv = ["--kv-heads", "1", *FAST, "-o", str(out), "--force"]
        assert_refused(*run(capsys, decoder_dir, *argv)[::2], f"{where} the model's source")
    assert digest(decoder_dir.parent) == source and not (decoder_dir / "sub").exists()
    # nor may the checkpoint folder beside the output, DIR.uptrain/, be the source
    model = shutil.copytree(decoder_dir, tmp_path / "m.uptrain")
    argv = ["--kv-heads", "1", "--uptrain-tokens", "64", *FAST, "-o", str(tmp_path / "m")]
    assert_refused(*run(capsys, model, *argv)[::2], "is the model's source")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.uptrain"]


def test_occupied_folder_and_force(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in ([], ["--force"]):
        code, _, err = run(capsys, decoder_dir, "--kv-heads", "1", *FAST, "-o", str(mine), *force)
        assert_refused(code, err, "not empty")
        assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "converted"
    assert run(capsys, decoder_dir, "--kv-heads", "1", *FAST, "-o", str(out))[0] == 0
    code, _, err = run(capsys, decoder_dir, "--kv-heads", "2,2,1", *FAST, "-o", str(out))
    assert_refused(code, err, "--force")
    assert report(out)["kv_heads_per_layer"]["after"] == [1, 1, 1]
    code, _, err = run(capsys, decoder_dir, "--kv-heads", "2,2,1", *FAST, "-o", str(out), "--force")
    assert code == 0, err
    assert report(out)["kv_heads_per_layer"]["after"] == [2, 2, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "mine"]


def test_help_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "mean|first|random|fit" in text and "kl|ce|kl+ce" in text and "DIR.uptrain/" in text
