"""scores.csv and scores.json of a head analysis."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from headcount.heads.analysis import HeadAnalysis
from headcount.heads.roles import SYNTACTIC_THRESHOLD, THRESHOLDS


def _clean(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def write_csv(a: HeadAnalysis, path: Path) -> None:
    """One row per head: layer, head, kv_group, attention, window (empty: global), every score,
    role."""
    rows = a.rows()
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def to_json(a: HeadAnalysis) -> dict[str, Any]:
    """The analysis as plain JSON data (NaN -> null)."""
    return {
        "model": a.model,
        "heads_per_layer": a.heads_per_layer,
        "layers": [
            {
                "layer": i,
                "heads": H,
                "kv_heads": len(set(a.kv_groups[i])),
                "attention": a.attention_kind(i),
                "window": a.window(i),
            }
            for i, H in enumerate(a.heads_per_layer)
        ],
        "meta": a.meta,
        "chance": {k: _clean(v) for k, v in a.chance.items()},
        "thresholds": {
            **{role: {"score": s, "min": t} for role, (s, t) in THRESHOLDS.items()},
            "syntactic": {"score": "syn_*", "min": SYNTACTIC_THRESHOLD},
        },
        "syntax": {
            k: {"arcs": a.syntax_counts[k], "previous_word_baseline": a.syntax_baseline[k]}
            for k in a.syntax
        },
        "heads": [{k: _clean(v) for k, v in r.items()} for r in a.rows()],
    }


def write_json(a: HeadAnalysis, path: Path) -> None:
    path.write_text(json.dumps(to_json(a), indent=1) + "\n", encoding="utf-8")
