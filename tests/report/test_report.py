"""The report folder: files, atomic writes, clear errors, and the page in headless Chromium."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from headcount.heads import AnalysisConfig, HeadAnalysis, analyze, read_conllu
from headcount.report import ReportError, write_report
from headcount.report import write as write_mod

from ..heads.conftest import TinyDecoder
from .browser import load_page, screenshot

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 3


@pytest.fixture(scope="module")
def analysis() -> HeadAnalysis:
    import torch

    torch.manual_seed(0)
    model = TinyDecoder().eval()
    sents = read_conllu(str(Path(__file__).parents[2] / "src/headcount/data/sample.conllu"))[:8]
    return analyze(
        model, TEXT, sentences=sents, config=AnalysisConfig(induction_len=10), name="tiny"
    )


def test_report_files(analysis: HeadAnalysis, tmp_path: Path) -> None:
    index = write_report(analysis, tmp_path / "rep")
    out = index.parent
    assert {p.name for p in out.iterdir()} >= {"index.html", "scores.csv", "scores.json", "figures"}
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 8 and {"layer", "head", "kv_group", "induction", "role"} <= set(rows[0])
    data = json.loads((out / "scores.json").read_text())
    assert data["thresholds"]["induction"] == {"score": "induction", "min": 0.3}
    assert len(data["heads"]) == 8
    assert (out / "figures" / "roles.png").stat().st_size > 1000
    html = index.read_text()
    assert "https://" not in html and "http://" not in html and "data:image/png;base64," in html
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_never_overwrites_user_files(analysis: HeadAnalysis, tmp_path: Path) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not empty"):
        write_report(analysis, user)
    assert (user / "notes.txt").read_text() == "keep me"
    rep = tmp_path / "rep"
    write_report(analysis, rep)
    with pytest.raises(ReportError, match="--force"):
        write_report(analysis, rep)
    write_report(analysis, rep, force=True)  # an earlier report may be replaced on request
    assert (rep / "index.html").exists()


def test_unwritable_even_for_root(analysis: HeadAnalysis) -> None:
    with pytest.raises(ReportError, match="cannot"):
        write_report(analysis, "/proc/headcount-report-test")


def test_unwritable_path_is_a_clear_error(analysis: HeadAnalysis, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReportError):
        write_report(analysis, blocker / "rep")  # a file where a folder should be


def test_failure_leaves_nothing_half_written(
    analysis: HeadAnalysis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> str:
        raise RuntimeError("figure failed")

    monkeypatch.setattr(write_mod, "render_index", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        write_report(analysis, tmp_path / "rep")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.browser
def test_report_page_in_headless_chromium(analysis: HeadAnalysis, tmp_path: Path) -> None:
    index = write_report(analysis, tmp_path / "rep")
    status, console, dom = load_page(index, height=2000)
    assert console == [], console
    assert status["images"] > 5 and status["loaded"] == status["images"]
    assert status["rows"] == 8 and "L0.H" in dom
    screenshot(index, "report.png", height=2000)


def test_local_and_global_layers_are_marked(analysis: HeadAnalysis, tmp_path: Path) -> None:
    """A model with sliding-window layers (Gemma 3): the summary, scores.csv/json, the layer
    table and the figures say which layers are local and which global."""
    import dataclasses

    from headcount.report import summary_lines

    assert analysis.windows == [None, None]  # the tiny model attends globally
    assert analysis.attention_kind(0) == "global" and analysis.rows()[0]["window"] is None
    windowed = dataclasses.replace(analysis, windows=[8, None])
    assert "local (sliding window 8): 1 layers; global: L1" in summary_lines(windowed)
    index = write_report(windowed, tmp_path / "rep")
    rows = list(csv.DictReader((index.parent / "scores.csv").open()))
    assert [(r["layer"], r["attention"], r["window"]) for r in rows[::4]] == [
        ("0", "local", "8"),
        ("1", "global", ""),
    ]
    data = json.loads((index.parent / "scores.json").read_text())
    assert [(d["attention"], d["window"], d["kv_heads"]) for d in data["layers"]] == [
        ("local", 8, 2),
        ("global", None, 2),
    ]
    html = index.read_text()
    assert "<h2>Local and global layers</h2>" in html and "<b>global</b>" in html
    plain = write_report(analysis, tmp_path / "plain")
    assert "Local and global layers" not in plain.read_text()
