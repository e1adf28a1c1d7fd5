"""Plot the curves `pruning_curves.py` wrote: quality against the fraction of heads (or KV-cache
bytes) pruned, one line per method, random order as mean with its min-max band over seeds.

    python experiments/plot_pruning.py experiments/results/pruning_smollm2_head.json [...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"importance": "C0", "iterative": "C1", "gates": "C2", "random": "C7"}


def plot(path: Path) -> Path:
    data = json.loads(Path(path).read_text())
    meta = data["meta"]
    decoder = "perplexity" in meta["metric"]
    by_group = meta["unit"] == "group"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, dict[float, float]] = {}
    xs_bytes: dict[str, dict[float, float]] = {}
    for key, v in data.items():
        if "@" not in key or "recover" in key:
            continue
        name, frac = key.split("@")
        series.setdefault(name, {})[float(frac)] = v["value"]
        xs_bytes.setdefault(name, {})[float(frac)] = v["kv_bytes_per_token"]

    def x_of(name: str, f: float) -> float:
        return xs_bytes[name][f] / 1024 if by_group else 100 * f

    randoms = [n for n in series if n.startswith("random/")]
    if randoms:
        fr = sorted(set.intersection(*(set(series[n]) for n in randoms)))
        vals = [[series[n][f] for n in randoms] for f in fr]
        x = [x_of(randoms[0], f) for f in fr]
        ax.plot(
            x,
            [statistics.mean(v) for v in vals],
            "o--",
            color=COLORS["random"],
            label=f"random order (mean of {len(randoms)} seeds, band: min-max)",
        )
        ax.fill_between(
            x, [min(v) for v in vals], [max(v) for v in vals], color=COLORS["random"], alpha=0.2
        )
    for name, pts in series.items():
        if name.startswith("random/"):
            continue
        fr = sorted(pts)
        ax.plot(
            [x_of(name, f) for f in fr],
            [pts[f] for f in fr],
            "o-",
            color=COLORS.get(name),
            label=name,
        )
    rec = {k: v for k, v in data.items() if "+recover" in k}
    by_method: dict[str, list[tuple[float, float]]] = {}
    for key, v in rec.items():
        name, frac = key.split("@")
        by_method.setdefault(name, []).append((float(frac), v["value"]))
    for name, pts in by_method.items():
        pts.sort()
        base = name.split("+")[0]
        ax.plot(
            [x_of(base, f) for f, _ in pts],
            [y for _, y in pts],
            "s-",
            color="C3",
            label=f"{name} (distilled)",
        )
    ax.axhline(data["full"], color="k", lw=0.8, ls=":", label=f"unpruned ({data['full']:.3g})")
    if decoder:
        ax.set_yscale("log")
    ax.set_xlabel("KV-cache KiB per token (fp16)" if by_group else "% of query heads removed")
    if by_group:
        ax.invert_xaxis()
    ax.set_ylabel(meta["metric"].split(",")[0])
    ax.set_title(
        f"{meta['model']}: pruning {meta['unit']}s; scored on {meta['score']}; {meta['metric'].split(', ', 1)[-1]}",
        fontsize=8,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path).with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(plot(Path(p)))
