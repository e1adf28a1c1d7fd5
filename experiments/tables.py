"""Markdown tables from the JSON that `pruning_curves.py` writes (the numbers in EXPERIMENTS.md).

python experiments/tables.py experiments/results/pruning_smollm2_head.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SMALL = [True]  # cosine-like metrics (<= 1) get 4 decimals, perplexities 1


def fmt(v: float) -> str:
    if SMALL[0]:
        return f"{v:.4f}"
    return f"{v:.1f}" if v < 1000 else f"{v:,.0f}"


def table(path: Path) -> str:
    d = json.loads(path.read_text())
    meta = d["meta"]
    SMALL[0] = d["full"] <= 1.0
    pts: dict[str, dict[float, dict]] = {}
    for k, v in d.items():
        if "@" in k and "recover" not in k:
            name, f = k.split("@")
            pts.setdefault(name, {})[float(f)] = v
    fracs = sorted({f for p in pts.values() for f in p})
    cols = [n for n in ("importance", "iterative", "gates") if n in pts]
    randoms = sorted(n for n in pts if n.startswith("random/"))
    unit = meta["unit"]
    kv = unit == "group"  # with whole groups removed the KV cache size depends on the count only
    head = f"| {unit}s removed | query heads kept |" + (" KV B/token (fp16) |" if kv else "")
    head += " " + " | ".join(cols)
    if randoms:
        head += f" | random (mean ± sd, {len(randoms)} seeds) | random min-max"
    head += " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for f in fracs:
        any_pt = next(p[f] for p in pts.values() if f in p)
        kept = any_pt["heads"]
        row = f"| {f:.0%} | {kept} | " + (f"{any_pt['kv_bytes_per_token']:,} | " if kv else "")
        row += " | ".join(fmt(pts[c][f]["value"]) if f in pts[c] else "" for c in cols)
        if randoms:
            vals = [pts[r][f]["value"] for r in randoms if f in pts[r]]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row += (
                f" | {fmt(statistics.mean(vals))} ± {fmt(sd)} | {fmt(min(vals))}-{fmt(max(vals))}"
            )
        lines.append(row + " |")
    if not kv:
        lines.append("")
        lines.append("(query heads kept: the same for every method at a fraction)")
    rec = {k: v for k, v in d.items() if "+recover" in k}
    if rec:
        lines += [
            "",
            "| pruned point | recovery | steps | tokens | before | after | params (of full) |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in sorted(rec, key=lambda k: (k.split("@")[0], float(k.split("@")[1]))):
            v = rec[k]
            name, f = k.split("@")
            method, budget = name.split("+recover")
            lines.append(
                f"| {method} @ {float(f):.0%} | {budget} ({v['seconds'] / 60:.1f} min) | {v['steps']} | "
                f"{v['tokens']:,} | {fmt(v['before'])} | {fmt(v['value'])} | "
                f"{v['params'] / 1e6:.1f}M ({v['params'] / v['params_full']:.1%}) |"
            )
    return (
        f"{meta['model']}, unit {unit}: {meta['metric']}; scored on {meta['score']} "
        f"({meta['objective']}); unpruned {fmt(d['full'])}\n\n" + "\n".join(lines)
    )


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(table(Path(p)))
        print()
