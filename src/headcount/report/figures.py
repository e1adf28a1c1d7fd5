"""Matplotlib figures (PNG): a layer x head heatmap per score, the role map and attention-pattern
thumbnails of a head analysis; the kept/removed head map and the loss curve of a pruning run.
Built with the object API on an Agg canvas: no pyplot state, no display needed."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from headcount.heads.analysis import HeadAnalysis, Pattern
from headcount.heads.roles import MIXED, THRESHOLDS

ROLE_COLOURS = {
    "induction": "#d62728",
    "previous-token": "#1f77b4",
    "duplicate-token": "#9467bd",
    "rare-token": "#8c564b",
    "current-token": "#17becf",
    "sink": "#7f7f7f",
    "broad": "#bcbd22",
    "syntactic": "#2ca02c",
    MIXED: "#f2f2f2",
}


def ragged(rows: list[Tensor]) -> Tensor:
    """Per-layer vectors as one ``(L, max)`` float64 table, NaN where a layer has fewer entries."""
    out = torch.full((len(rows), max(r.numel() for r in rows)), math.nan, dtype=torch.float64)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.detach().double().cpu()
    return out


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _size(L: int, H: int) -> tuple[float, float]:
    return (1.6 + 0.38 * H, 1.2 + 0.24 * L)


def _group_lines(ax: Axes, groups: list[list[int]], color: str = "white") -> None:
    """Vertical lines between KV groups: through every layer when all layers group their heads
    alike, else one segment per layer (``groups[l][h]``: the KV head of head h of layer l)."""
    if not groups:
        return
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    same = all(g == groups[0] for g in groups)
    for layer, g in enumerate(groups[:1] if same else groups):
        for h in range(1, len(g)):
            if g[h] != g[h - 1]:
                if same:
                    ax.axvline(h - 0.5, color=color, lw=1.5)
                else:
                    ax.plot([h - 0.5, h - 0.5], [layer - 0.5, layer + 0.5], color=color, lw=1.5)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)


def _layer_ticks(ax: Axes, L: int, kinds: list[str] | None) -> None:
    """Layer numbers on the y axis; with ``kinds`` (``"local"``/``"global"`` per layer) every
    layer is labelled and global layers are marked ``G`` in bold."""
    if not kinds or "local" not in kinds:
        ax.set_yticks(range(0, L, max(1, L // 15)))
        return
    ax.set_yticks(range(L))
    ax.set_yticklabels([f"{i} G" if k == "global" else str(i) for i, k in enumerate(kinds)])
    for label, k in zip(ax.get_yticklabels(), kinds, strict=True):
        if k == "global":
            label.set_fontweight("bold")
    ax.set_ylabel("layer (G: global, others: sliding window)")


def heatmap(
    table: Tensor,
    title: str,
    path: Path,
    groups: list[list[int]],
    *,
    diverging: bool = False,
    limit: float = 1.0,
    xlabel: str = "head",
    kinds: list[str] | None = None,
) -> None:
    """``table (L, H)``: one cell per head, KV groups separated by white lines; NaN cells blank.
    ``diverging``: a red-blue scale over [-limit, limit]. ``kinds``: ``"local"``/``"global"``
    per layer, marked on the layer axis."""
    L, H = table.shape
    fig = Figure(figsize=_size(L, H))
    ax = fig.add_subplot()
    data = table.float().numpy()
    if diverging:
        im = ax.imshow(data, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    else:
        finite = data[~(data != data)]
        vmax = float(finite.max()) if finite.size else 1.0
        vmin = min(0.0, float(finite.min())) if finite.size else 0.0
        im = ax.imshow(
            data, cmap="viridis", vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1, aspect="auto"
        )
    _group_lines(ax, groups, color="#444" if diverging else "white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    _layer_ticks(ax, L, kinds)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    _save(fig, path)


def role_map(a: HeadAnalysis, path: Path) -> None:
    """Each head coloured by its role."""
    names = list(ROLE_COLOURS)
    L, H = len(a.heads_per_layer), max(a.heads_per_layer)
    grid = [[math.nan] * H for _ in range(L)]
    for layer, row in enumerate(a.roles):
        for h, role in enumerate(row):
            grid[layer][h] = names.index(role.split(" ")[0])
    fig = Figure(figsize=(_size(L, H)[0] + 2.2, _size(L, H)[1]))
    ax = fig.add_subplot()
    ax.imshow(
        grid,
        cmap=ListedColormap(list(ROLE_COLOURS.values())),
        vmin=-0.5,
        vmax=len(names) - 0.5,
        aspect="auto",
    )
    _group_lines(ax, a.kv_groups)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    _layer_ticks(ax, L, _kinds(a))
    ax.set_title("role of each head", fontsize=10)
    used = {r.split(" ")[0] for row in a.roles for r in row}
    handles = [
        Patch(facecolor=ROLE_COLOURS[n], edgecolor="#999", label=n) for n in names if n in used
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False
    )
    _save(fig, path)


def thumbnails(patterns: list[Pattern], path: Path, per_row: int = 4) -> None:
    """A grid of attention patterns (query rows, key columns) of the strongest heads."""
    n = len(patterns)
    rows = max(1, -(-n // per_row))
    fig = Figure(figsize=(3.0 * min(n, per_row), 3.1 * rows))
    for k, p in enumerate(patterns):
        ax = fig.add_subplot(rows, per_row, k + 1)
        ax.imshow(p.weights.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{p.kind}\nL{p.layer}.H{p.head} ({p.score:.2f})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
    _save(fig, path)


def _kinds(a: HeadAnalysis) -> list[str]:
    return [a.attention_kind(i) for i in range(len(a.heads_per_layer))]


def all_figures(a: HeadAnalysis, folder: Path) -> list[tuple[str, str]]:
    """Write every figure into ``folder``; returns ``(file name, caption)`` in page order."""
    out = []
    kinds = _kinds(a)
    role_map(a, folder / "roles.png")
    out.append(("roles.png", "Role of each head (thresholds below)."))
    for name, t in a.scores.items():
        fname = f"heatmap_{name}.png"
        heatmap(t, name, folder / fname, a.kv_groups, diverging=name == "copying", kinds=kinds)
        out.append((fname, f"{name} per layer and head"))
    for kind, t in a.syntax.items():
        fname = f"heatmap_syn_{kind.replace(':', '_').replace('>', '-')}.png"
        title = f"syntactic {kind} ({a.syntax_counts[kind]} arcs)"
        heatmap(t, title, folder / fname, a.kv_groups, kinds=kinds)
        out.append((fname, f"syntactic {kind}: share of arcs hit"))
    if a.patterns:
        thumbnails(a.patterns, folder / "patterns.png")
        out.append(
            (
                "patterns.png",
                "Attention patterns of the strongest heads of each kind (rows: queries).",
            )
        )
    assert set(THRESHOLDS) <= set(ROLE_COLOURS)
    return out


def keep_map(keep: list[list[bool]], groups: list[list[int]], path: Path, title: str) -> None:
    """Which heads a pruning run kept (``keep[l][h]``) and removed, KV groups separated by lines."""
    L, H = len(keep), max(len(k) for k in keep)
    grid = [[math.nan] * H for _ in range(L)]
    for layer, row in enumerate(keep):
        for h, kept in enumerate(row):
            grid[layer][h] = 1.0 if kept else 0.0
    fig = Figure(figsize=(_size(L, H)[0] + 1.6, _size(L, H)[1]))
    ax = fig.add_subplot()
    colours = {"removed": "#d9d9d9", "kept": "#2ca02c"}
    ax.imshow(grid, cmap=ListedColormap(list(colours.values())), vmin=-0.5, vmax=1.5, aspect="auto")
    if L * H <= 400:
        for layer, row in enumerate(keep):
            for h, kept in enumerate(row):
                if not kept:
                    ax.text(h, layer, "x", ha="center", va="center", fontsize=7, color="#666")
    _group_lines(ax, groups, color="black")
    ax.set_xlabel("head (lines separate KV groups)")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(0, L, max(1, L // 15)))
    ax.set_title(title, fontsize=10)
    handles = [Patch(facecolor=c, edgecolor="#999", label=n) for n, c in colours.items()]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False
    )
    _save(fig, path)


def loss_curve(losses: list[float], path: Path, title: str, ylabel: str = "loss") -> None:
    """Loss per step, with its running mean over a tenth of the steps."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.add_subplot()
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, color="#9ecae1", lw=1, label="per step")
    k = max(1, len(losses) // 10)
    if k > 1:
        run = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, run, color="#1f77b4", lw=2, label=f"mean of {k} steps")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    _save(fig, path)
