"""`headcount importance`: the report's numbers are the library's on the same ids, the folder is
complete and self-contained, bad input is one line with exit code 2."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

import headcount
from headcount.cli.main import main
from headcount.prune import Contrastive, LanguageModeling, ablate, head_importance, sentence_pairs

TEXT = (
    "Tomorrow, and tomorrow, and tomorrow,\n"
    "Creeps in this petty pace from day to day,\n"
    "To the last syllable of recorded time;\n"
    "And all our yesterdays have lighted fools\n"
    "The way to dusty death. Out, out, brief candle!\n"
    "Life's but a walking shadow, a poor player,\n"
    "That struts and frets his hour upon the stage,\n"
    "And then is heard no more. It is a tale\n"
)


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "importance.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_self_contained(page: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and not re.search(r"<script[^>]+src=", html)
    srcs = re.findall(r"src='([^']*)'", html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_decoder_report_is_the_library_result(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "imp"
    argv = ["importance", str(decoder_dir), "--text", str(text), "--tokens", "64"]
    code = main([*argv, "--window", "32", "--ablation", "-o", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "most important" in stdout and "best single head per layer" in stdout

    model = headcount.load(decoder_dir)
    ids = model.tokenizer.encode(TEXT)[:64]
    objective = LanguageModeling(ids, window=32)
    imp = head_importance(model, objective)
    abl = ablate(model, objective)
    rows = read_rows(out)
    layers = model.attention_layers()
    assert [(int(r["layer"]), int(r["head"])) for r in rows] == [
        (i, h) for i, a in enumerate(layers) for h in range(a.n_heads)
    ]
    for r in rows:
        i, h = int(r["layer"]), int(r["head"])
        assert int(r["kv_head"]) == layers[i].kv_head_of(h)
    col = {k: torch.tensor([float(r[k]) for r in rows], dtype=torch.float64) for k in rows[0]}
    torch.testing.assert_close(col["importance"], torch.cat(imp.heads), rtol=1e-7, atol=0)
    groups = torch.stack([imp.groups[int(r["layer"])][int(r["kv_head"])] for r in rows])
    torch.testing.assert_close(col["group_importance"], groups, rtol=1e-7, atol=0)
    torch.testing.assert_close(col["ablation_delta"], torch.cat(abl.delta), rtol=1e-6, atol=1e-9)
    assert abl.only is not None
    torch.testing.assert_close(col["keep_only_delta"], torch.cat(abl.only), rtol=1e-6, atol=1e-9)

    data = json.loads((out / "importance.json").read_text(encoding="utf-8"))
    assert data["heads_per_layer"] == [6, 4, 3] and data["kv_heads_per_layer"] == [2, 4, 1]
    assert data["n_tokens"] == 64 and data["n_examples"] == 2 and data["normalized"] is True
    assert data["ablation"]["best_single_head"] == [
        {"layer": i, "head": h, "delta": d} for i, (h, d) in enumerate(abl.best_only())
    ]
    figures = {p.name for p in (out / "figures").iterdir()}
    assert figures == {"importance.png", "groups.png", "ablation.png", "keep_only.png"}
    assert_self_contained(out / "index.html")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_encoder_scores_sentence_pairs(
    encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "imp"
    code = main(
        ["importance", str(encoder_dir), "--text", str(text), "--no-normalize", "-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    model = headcount.load(encoder_dir)
    assert isinstance(model, headcount.Encoder)
    imp = head_importance(model, Contrastive(model, sentence_pairs(TEXT)), normalize=False)
    rows = read_rows(out)
    assert "ablation_delta" not in rows[0] and len(rows) == 8
    torch.testing.assert_close(
        torch.tensor([float(r["importance"]) for r in rows], dtype=torch.float64),
        torch.cat(imp.heads),
        rtol=1e-7,
        atol=0,
    )
    assert set(p.name for p in (out / "figures").iterdir()) == {"importance.png", "groups.png"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokens", "1"], "--tokens"),
        (["--window", "1000"], "context"),
        (["--play", "no such play"], "no play"),
    ],
)
def test_bad_input_is_one_line(
    decoder_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "imp"
    code = main(["importance", str(decoder_dir), *extra, "-o", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and not out.exists()


def test_refuses_a_user_folder(
    decoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    code = main(["importance", str(decoder_dir), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
