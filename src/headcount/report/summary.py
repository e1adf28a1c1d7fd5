"""Plain-text findings of a head analysis: which heads are previous-token, induction, sink heads."""

from __future__ import annotations

import math
from collections import Counter

from headcount.heads.analysis import HeadAnalysis
from headcount.heads.roles import THRESHOLDS

# The kinds the summary names, with the score that ranks them.
NAMED = (
    ("previous-token", "previous_token"),
    ("induction", "induction"),
    ("sink", "first_token"),
    ("duplicate-token", "duplicate_token"),
    ("current-token", "current_token"),
)


def found_heads(a: HeadAnalysis, kind: str) -> list[tuple[int, int, float]]:
    """Heads whose role is ``kind``, strongest first: ``(layer, head, score)``."""
    name = THRESHOLDS[kind][0]
    out = [
        (layer, h, float(a.scores[name][layer, h]))
        for layer, row in enumerate(a.roles)
        for h, role in enumerate(row)
        if role == kind
    ]
    return sorted(out, key=lambda x: -x[2])


def fmt_head(layer: int, head: int) -> str:
    return f"L{layer}.H{head}"


def layer_kinds_line(a: HeadAnalysis) -> str | None:
    """``local (sliding window 512): 15 layers; global: L5, L11, L17`` (None without windows)."""
    L = len(a.heads_per_layer)
    windows = sorted({w for w in (a.window(i) for i in range(L)) if w is not None})
    if not windows:
        return None
    local = [i for i in range(L) if a.attention_kind(i) == "local"]
    glob = [f"L{i}" for i in range(L) if a.attention_kind(i) == "global"]
    sizes = ", ".join(str(w) for w in windows)
    return (
        f"local (sliding window {sizes}): {len(local)} layers; "
        f"global: {', '.join(glob) if glob else 'none'}"
    )


def summary_lines(a: HeadAnalysis, limit: int = 5) -> list[str]:
    """A few lines naming the heads found, with their scores and the chance level."""
    n = sum(a.heads_per_layer)
    lines = [
        f"{a.model or 'model'}: {len(a.heads_per_layer)} layers, {n} heads, "
        f"{a.meta.get('text_tokens', '?')} text tokens in {a.meta.get('chunks', '?')} chunk(s)"
    ]
    local = layer_kinds_line(a)
    if local:
        lines.append(local)
    undefined = a.meta.get("undefined") or {}
    for kind, name in NAMED:
        if name not in a.scores:
            continue
        if name in undefined:
            lines.append(
                f"{kind} heads: not scored, the text is too short ({name} {undefined[name]})"
            )
            continue
        heads = found_heads(a, kind)
        thr = THRESHOLDS[kind][1]
        if heads:
            shown = ", ".join(f"{fmt_head(l_, h)} {v:.2f}" for l_, h, v in heads[:limit])
            more = f" (+{len(heads) - limit} more)" if len(heads) > limit else ""
            lines.append(f"{kind} heads ({len(heads)}, {name} >= {thr}): {shown}{more}")
        else:
            (l_, h, v), *_ = a.top(name, 1) or [(0, 0, math.nan)]
            lines.append(f"{kind} heads: none ({name} >= {thr}); best {fmt_head(l_, h)} {v:.2f}")
    ch = a.chance.get("induction")
    if ch is not None and "induction" in a.scores:
        t = a.scores["induction"]
        lines.append(
            f"induction chance level (uniform attention) {ch:.3f}; "
            f"median head {float(t.nanmedian()):.3f}, max {float(t.nan_to_num(-1).max()):.3f}"
        )
    roles = Counter(r for row in a.roles for r in row)
    lines.append("roles: " + ", ".join(f"{r} {c}" for r, c in roles.most_common()))
    return lines
