"""The output of `headcount prune`: the pruned checkpoint (``model.save``) with a report inside.

``DIR/`` is a saved model that ``headcount.load(DIR)`` reads; ``DIR/report/`` holds
``prune.json`` (what was removed, parameters and KV-cache bytes before and after, quality of the
full, pruned and recovered model, the recovery run), ``figures/*.png`` and a self-contained
``index.html``. The whole folder is written atomically (`headcount.report.write.write_checkpoint`).
Legend: L layers, H_l query heads, G_l KV heads of layer l, D head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from headcount.memory import kv_cache_bytes
from headcount.models.base import TextModel
from headcount.prune import KeepMask, Recovery
from headcount.report.figures import heatmap, keep_map, loss_curve, ragged
from headcount.report.html import _e, figures_html, page_end, page_start, sortable_table
from headcount.report.write import write_checkpoint_report

KV_DTYPE = "float16"  # KV-cache bytes are priced as `headcount kv` prices them by default


def parameters(model: TextModel) -> int:
    """Parameters of ``model`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def kv_bytes_per_token(model: TextModel, dtype: str = KV_DTYPE) -> int:
    """K and V bytes one position adds to the cache, summed over the layers."""
    D = model.config.head_dim
    return sum(kv_cache_bytes(1, a.n_kv_heads, D, 1, dtype=dtype) for a in model.attention_layers())


@dataclass
class PruneReport:
    """A pruning run: which heads of the source model stay, and what that changed."""

    model: str
    method: str
    unit: str
    fraction: float
    keep: list[list[bool]]  # [l][h] over the source model's query heads
    kv_groups: list[list[int]]  # [l][h]: the source KV head of query head h
    params: tuple[int, int]  # before, after
    kv_bytes: tuple[int, int]  # per token, before, after (KV_DTYPE)
    metric: str  # what quality measures, e.g. "perplexity on 2,048 tokens of macbeth"
    quality: dict[str, float | None]  # full, pruned, recovered
    recovery: Recovery | None = None
    recovery_minutes: float | None = None
    scores: list[Tensor] | None = None  # (H_l,) per layer: what ranked the heads, if anything
    scores_name: str = "importance"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_kept(self) -> list[list[int]]:
        """Per layer, the source KV heads that still serve a kept query head."""
        return [
            sorted({g for g, k in zip(groups, keep, strict=True) if k})
            for groups, keep in zip(self.kv_groups, self.keep, strict=True)
        ]

    def layers(self) -> list[dict[str, Any]]:
        """One dict per layer: heads and KV heads before and after, which stay."""
        out = []
        for layer, (keep, groups) in enumerate(zip(self.keep, self.kv_groups, strict=True)):
            kv = self.kv_kept[layer]
            out.append(
                {
                    "layer": layer,
                    "heads_before": len(keep),
                    "heads_after": sum(keep),
                    "kv_heads_before": len(set(groups)),
                    "kv_heads_after": len(kv),
                    "heads_kept": " ".join(str(h) for h, k in enumerate(keep) if k),
                    "kv_heads_kept": " ".join(str(g) for g in kv),
                }
            )
        return out


def prune_report(
    full: TextModel,
    pruned: TextModel,
    keep: KeepMask,
    *,
    model: str,
    method: str,
    unit: str,
    fraction: float,
    metric: str,
    quality: dict[str, float | None],
    recovery: Recovery | None = None,
    recovery_minutes: float | None = None,
    scores: list[Tensor] | None = None,
    scores_name: str = "importance",
    meta: dict[str, Any] | None = None,
) -> PruneReport:
    """Gather the numbers of a run: ``full`` is the source model, ``pruned`` its pruned copy,
    ``keep`` the keep-mask over ``full``'s heads that `remove_heads` applied."""
    layers = full.attention_layers()
    groups = [[a.kv_head_of(h) for h in range(a.n_heads)] for a in layers]
    return PruneReport(
        model=model,
        method=method,
        unit=unit,
        fraction=fraction,
        keep=[[bool(v) for v in m.tolist()] for m in keep],
        kv_groups=groups,
        params=(parameters(full), parameters(pruned)),
        kv_bytes=(kv_bytes_per_token(full), kv_bytes_per_token(pruned)),
        metric=metric,
        quality=quality,
        recovery=recovery,
        recovery_minutes=recovery_minutes,
        scores=scores,
        scores_name=scores_name,
        meta=dict(meta or {}),
    )


def _pct(after: float | None, before: float | None) -> str:
    if after is None or before is None or not before or math.isnan(after) or math.isnan(before):
        return ""
    return f"{100 * (after - before) / before:+.1f}%"


def _q(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4f}"


def summary_lines(r: PruneReport) -> list[str]:
    """What was removed, what it saved, and what it cost in quality."""
    heads = (sum(len(k) for k in r.keep), sum(sum(k) for k in r.keep))
    kv = (sum(len(set(g)) for g in r.kv_groups), sum(len(k) for k in r.kv_kept))
    lines = [
        f"{r.model}: removed {heads[0] - heads[1]} of {heads[0]} query heads and "
        f"{kv[0] - kv[1]} of {kv[0]} KV heads (fraction {r.fraction:g} of the {r.unit}s, "
        f"by {r.method})",
        "heads per layer: " + " ".join(str(sum(k)) for k in r.keep),
        f"parameters {r.params[0]:,} -> {r.params[1]:,} ({_pct(r.params[1], r.params[0])}); "
        f"KV cache {r.kv_bytes[0]:,} -> {r.kv_bytes[1]:,} bytes/token in {KV_DTYPE} "
        f"({_pct(r.kv_bytes[1], r.kv_bytes[0])})",
        f"{r.metric}: full {_q(r.quality.get('full'))}, pruned {_q(r.quality.get('pruned'))}"
        + (
            f", recovered {_q(r.quality.get('recovered'))}"
            if r.quality.get("recovered") is not None
            else ""
        ),
    ]
    if r.recovery is not None:
        rec = r.recovery
        first, last = (rec.losses[0], rec.losses[-1]) if rec.losses else (math.nan, math.nan)
        lines.append(
            f"recovery: {rec.steps} steps, {rec.tokens:,} tokens, {rec.seconds:.0f} s; "
            f"distillation loss {first:.4f} -> {last:.4f}"
        )
    return lines


def to_json(r: PruneReport) -> dict[str, Any]:
    rec = r.recovery
    return {
        "model": r.model,
        "fraction": r.fraction,
        "method": r.method,
        "unit": r.unit,
        "heads_per_layer": {"before": [len(k) for k in r.keep], "after": [sum(k) for k in r.keep]},
        "kv_heads_per_layer": {
            "before": [len(set(g)) for g in r.kv_groups],
            "after": [len(k) for k in r.kv_kept],
        },
        "heads_kept": [[h for h, k in enumerate(keep) if k] for keep in r.keep],
        "kv_heads_kept": r.kv_kept,
        "parameters": {"before": r.params[0], "after": r.params[1]},
        "kv_cache_bytes_per_token": {
            "dtype": KV_DTYPE,
            "before": r.kv_bytes[0],
            "after": r.kv_bytes[1],
        },
        "quality": {"metric": r.metric, **r.quality},
        "recovery": None
        if rec is None
        else {
            "minutes": r.recovery_minutes,
            "steps": rec.steps,
            "tokens": rec.tokens,
            "seconds": rec.seconds,
            "losses": rec.losses,
        },
        "meta": r.meta,
    }


def prune_figures(r: PruneReport, folder: Path) -> list[tuple[str, str]]:
    """Write the figures into ``folder``; returns ``(file name, caption)`` in page order."""
    out = []
    keep_map(r.keep, r.kv_groups, folder / "heads.png", "kept and removed heads")
    out.append(("heads.png", "Heads kept (green) and removed (grey, x); lines separate KV groups."))
    if r.recovery is not None and r.recovery.losses:
        loss_curve(r.recovery.losses, folder / "recovery.png", "recovery by distillation")
        out.append(("recovery.png", "Distillation loss toward the unpruned model, per step."))
    if r.scores is not None:
        heatmap(ragged(r.scores), r.scores_name, folder / "scores.png", r.kv_groups)
        out.append(("scores.png", f"The {r.scores_name} that ranked the heads (full model)."))
    return out


def render_prune(r: PruneReport, figures: list[tuple[str, str]], folder: Path) -> str:
    """The self-contained index.html (figures inlined)."""
    q = r.quality
    rows = [
        ("parameters", f"{r.params[0]:,}", f"{r.params[1]:,}", _pct(r.params[1], r.params[0])),
        (
            f"KV cache, bytes/token ({KV_DTYPE})",
            f"{r.kv_bytes[0]:,}",
            f"{r.kv_bytes[1]:,}",
            _pct(r.kv_bytes[1], r.kv_bytes[0]),
        ),
        (
            f"{r.metric}",
            _q(q.get("full")),
            _q(q.get("pruned"))
            + (f" (recovered {_q(q['recovered'])})" if q.get("recovered") is not None else ""),
            _pct(q.get("pruned"), q.get("full"))
            + (
                f" ({_pct(q['recovered'], q.get('full'))})"
                if q.get("recovered") is not None
                else ""
            ),
        ),
    ]
    parts = [
        page_start(f"headcount prune: {r.model}"),
        f"<h1>Pruned: {_e(r.model or 'model')}</h1>",
        "<pre>" + _e("\n".join(summary_lines(r))) + "</pre>",
        "<p>This folder is the pruned model: <code>headcount.load</code> reads it, and "
        "<code>headcount analyze/view/run/kv</code> take its path. A KV head goes only with the "
        "last of its query heads, so heads removed one by one shrink the KV cache only when a "
        "whole group goes.</p>",
        "<table><tr><th class='l'></th><th>before</th><th>after</th><th>change</th></tr>",
    ]
    parts += [
        f"<tr><td class='l'>{_e(a)}</td><td>{_e(b)}</td><td>{_e(c)}</td><td>{_e(d)}</td></tr>"
        for a, b, c, d in rows
    ]
    parts.append("</table><h2>Figures</h2>")
    parts += figures_html(figures, folder)
    parts.append(
        "<h2>Every layer</h2>"
        + sortable_table(r.layers(), text_columns=("heads_kept", "kv_heads_kept"))
    )
    meta = ", ".join(f"{k}={_e(str(v))}" for k, v in r.meta.items())
    parts.append(f"<h2>Run</h2><p><small>{meta}</small></p>")
    parts.append(page_end())
    return "\n".join(parts)


def write_pruned(
    pruned: TextModel, r: PruneReport, out_dir: str | Path, *, force: bool = False
) -> Path:
    """Save ``pruned`` to ``out_dir`` with ``report/`` (prune.json, figures, index.html) inside,
    atomically; returns the folder. ``out_dir`` may be new, empty or (``force``) an earlier save."""
    return write_checkpoint_report(
        pruned,
        out_dir,
        name="prune",
        data=to_json(r),
        figures=lambda folder: prune_figures(r, folder),
        render=lambda figures, folder: render_prune(r, figures, folder),
        force=force,
    )
