"""The report of `headcount importance`: Michel's gradient importance of every head and KV group,
with the single-head ablation and keep-one-head tables when they were run.

Folder: ``importance.csv`` (one row per head), ``importance.json``, ``figures/*.png`` and a
self-contained ``index.html``, written atomically (`headcount.report.write.write_folder`).
Legend: L layers, H_l query heads, G_l KV heads of layer l.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from headcount.prune import Ablation, Importance
from headcount.report.figures import heatmap, ragged
from headcount.report.html import _e, figures_html, page_end, page_start, sortable_table
from headcount.report.summary import fmt_head
from headcount.report.write import prepare_target, write_folder

ABOUT = (
    "Importance is Michel, Levy and Neubig (2019)'s score: a gate multiplies each head's output, "
    "and I<sub>h</sub> = E<sub>x</sub> |dL(x)/d&xi;<sub>h</sub>| at &xi; = 1, the first-order "
    "estimate of the loss change when the head goes (one example per window of text). A KV "
    "group's score is the gradient of one gate shared by the group's query heads, "
    "E<sub>x</sub> |&sum;<sub>h in g</sub> dL/d&xi;<sub>h</sub>|. With normalisation each layer's "
    "scores are divided by their L2 norm (Michel's section 4.1), so heads compare within a layer "
    "and across layers on the same footing."
)
ABOUT_ABLATION = (
    "Ablation (Michel's Table 1): the loss with one head removed, minus the loss of the full "
    "model. Keep-only (Table 2): the loss when one head is the only head left in its layer, "
    "minus the full model's; the best head per layer is the one with the smallest change."
)


@dataclass
class ImportanceReport:
    """What `write_importance_report` writes: the scores, the grouping, optional ablation."""

    model: str
    importance: Importance
    kv_groups: list[list[int]]  # [l][h]: the KV head of query head h of layer l
    ablation: Ablation | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head: layer, head, kv_head, importance, group_importance (and the
        ablation columns)."""
        out = []
        for layer, scores in enumerate(self.importance.heads):
            for h in range(scores.numel()):
                g = self.kv_groups[layer][h]
                r: dict[str, Any] = {
                    "layer": layer,
                    "head": h,
                    "kv_head": g,
                    "importance": float(scores[h]),
                    "group_importance": float(self.importance.groups[layer][g]),
                }
                if self.ablation is not None:
                    r["ablation_delta"] = float(self.ablation.delta[layer][h])
                    if self.ablation.only is not None:
                        r["keep_only_delta"] = float(self.ablation.only[layer][h])
                out.append(r)
        return out

    def ranked(self) -> list[tuple[int, int, float]]:
        """Every head as ``(layer, head, importance)``, most important first."""
        heads = [
            (layer, h, float(s[h]))
            for layer, s in enumerate(self.importance.heads)
            for h in range(s.numel())
        ]
        return sorted(heads, key=lambda x: (-x[2], x[0], x[1]))


def summary_lines(r: ImportanceReport, limit: int = 5) -> list[str]:
    """The top and bottom heads, and (when ablated) the best single head of each layer."""
    imp = r.importance
    ranked = r.ranked()
    lines = [
        f"{r.model}: {len(imp.heads)} layers, {len(ranked)} heads, "
        f"{sum(g.numel() for g in imp.groups)} KV heads; {imp.objective} over {imp.n_tokens} "
        f"tokens in {imp.n_examples} example(s); "
        + ("normalised per layer" if imp.normalized else "not normalised"),
        "most important: " + ", ".join(f"{fmt_head(l_, h)} {v:.3f}" for l_, h, v in ranked[:limit]),
        "least important: "
        + ", ".join(f"{fmt_head(l_, h)} {v:.3f}" for l_, h, v in ranked[::-1][:limit]),
    ]
    if r.ablation is not None:
        a = r.ablation
        worst = max(
            ((layer, h, float(d[h])) for layer, d in enumerate(a.delta) for h in range(d.numel())),
            key=lambda x: x[2],
        )
        lines.append(
            f"full-model loss {a.base:.4f}; removing one head costs at most "
            f"{worst[2]:+.4f} ({fmt_head(worst[0], worst[1])})"
        )
        if a.only is not None:
            best = "; ".join(
                f"L{layer}: H{h} {d:+.3f}" for layer, (h, d) in enumerate(a.best_only())
            )
            lines.append(f"best single head per layer (loss change with only it): {best}")
    return lines


# --------------------------------------------------------------------------------- tables
def write_importance_csv(r: ImportanceReport, path: Path) -> None:
    rows = r.rows()
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})


def to_json(r: ImportanceReport) -> dict[str, Any]:
    imp = r.importance
    out: dict[str, Any] = {
        "model": r.model,
        "objective": imp.objective,
        "normalized": imp.normalized,
        "n_examples": imp.n_examples,
        "n_tokens": imp.n_tokens,
        "heads_per_layer": [int(s.numel()) for s in imp.heads],
        "kv_heads_per_layer": [int(g.numel()) for g in imp.groups],
        "meta": r.meta,
        "heads": r.rows(),
        "groups": [
            {
                "layer": layer,
                "kv_head": g,
                "importance": float(gs[g]),
                "heads": [h for h, k in enumerate(r.kv_groups[layer]) if k == g],
            }
            for layer, gs in enumerate(imp.groups)
            for g in range(gs.numel())
        ],
        "ablation": None,
    }
    if r.ablation is not None:
        a = r.ablation
        out["ablation"] = {
            "base_loss": a.base,
            "best_single_head": None
            if a.only is None
            else [
                {"layer": layer, "head": h, "delta": d}
                for layer, (h, d) in enumerate(a.best_only())
            ],
        }
    return out


# -------------------------------------------------------------------------------- figures
def _limit(t: Tensor) -> float:
    finite = t[~t.isnan()].abs()
    return float(finite.max()) if finite.numel() and float(finite.max()) > 0 else 1.0


def importance_figures(r: ImportanceReport, folder: Path) -> list[tuple[str, str]]:
    """Write the figures into ``folder``; returns ``(file name, caption)`` in page order."""
    imp = r.importance
    out = []
    heatmap(imp.table("head"), "importance per head", folder / "importance.png", r.kv_groups)
    out.append(("importance.png", "Importance of each head (white lines separate KV groups)."))
    heatmap(
        imp.table("group"), "importance per KV group", folder / "groups.png", [], xlabel="KV head"
    )
    out.append(("groups.png", "Importance of each KV group (its query heads together)."))
    if r.ablation is not None:
        d = ragged(r.ablation.delta)
        heatmap(
            d,
            "loss change without the head",
            folder / "ablation.png",
            r.kv_groups,
            diverging=True,
            limit=_limit(d),
        )
        out.append(("ablation.png", "Loss change when that head alone is removed (red: worse)."))
        if r.ablation.only is not None:
            o = ragged(r.ablation.only)
            heatmap(
                o,
                "loss change with only that head in its layer",
                folder / "keep_only.png",
                r.kv_groups,
                diverging=True,
                limit=_limit(o),
            )
            out.append(
                ("keep_only.png", "Loss change when that head is the only one left in its layer.")
            )
    return out


# ----------------------------------------------------------------------------------- page
def render_importance(r: ImportanceReport, figures: list[tuple[str, str]], folder: Path) -> str:
    """The self-contained index.html (figures inlined)."""
    parts = [
        page_start(f"headcount importance: {r.model}"),
        f"<h1>Which heads matter: {_e(r.model or 'model')}</h1>",
        "<pre>" + _e("\n".join(summary_lines(r))) + "</pre>",
        f"<p>{ABOUT}</p>",
    ]
    if r.ablation is not None:
        parts.append(f"<p>{ABOUT_ABLATION}</p>")
    parts.append("<h2>Figures</h2>")
    parts += figures_html(figures, folder)
    parts.append("<h2>Every head</h2>" + sortable_table(r.rows()))
    meta = ", ".join(f"{k}={_e(v)}" for k, v in r.meta.items())
    parts.append(f"<h2>Run</h2><p><small>{meta}</small></p>")
    parts.append(page_end())
    return "\n".join(parts)


def write_importance_report(
    r: ImportanceReport, out_dir: str | Path, *, force: bool = False
) -> Path:
    """Write ``importance.csv``, ``importance.json``, ``figures/*.png`` and ``index.html`` into
    ``out_dir`` atomically; returns the path of ``index.html``."""
    out = prepare_target(out_dir, force=force)

    def fill(tmp: Path) -> None:
        write_importance_csv(r, tmp / "importance.csv")
        (tmp / "importance.json").write_text(
            json.dumps(to_json(r), indent=1) + "\n", encoding="utf-8"
        )
        figs = tmp / "figures"
        figs.mkdir()
        figures = importance_figures(r, figs)
        (tmp / "index.html").write_text(render_importance(r, figures, figs), encoding="utf-8")

    write_folder(out, fill, "importance")
    return out / "index.html"
