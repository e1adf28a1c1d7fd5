"""The output of `headcount convert`: the converted checkpoint (``model.save``) with a report inside.

``DIR/`` is a saved model that ``headcount.load(DIR)`` reads; ``DIR/report/`` holds
``convert.json`` (method, KV heads before and after per layer, parameters, KV-cache bytes per
token and at 8K context, held-out quality of the original, converted and uptrained model, the
uptraining run), ``figures/uptrain.png`` (the loss curve, when uptrained) and a self-contained
``index.html``. The whole folder is written atomically (`headcount.report.write.write_checkpoint`).
Legend: L layers, H_l query heads, G_l KV heads of layer l, D head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headcount.convert import UptrainResult
from headcount.memory import kv_cache_bytes
from headcount.models.base import TextModel
from headcount.report.figures import loss_curve
from headcount.report.html import _e, figures_html, page_end, page_start, sortable_table
from headcount.report.pruning import KV_DTYPE, _pct, _q, kv_bytes_per_token, parameters
from headcount.report.write import write_checkpoint_report

CONTEXT = 8192  # the context at which the report prices the whole KV cache


def kv_bytes_at(model: TextModel, seq_len: int = CONTEXT, dtype: str = KV_DTYPE) -> int:
    """Bytes of the K/V cache of one sequence of ``seq_len`` tokens, summed over the layers (a
    sliding-window layer holds at most its window)."""
    D = model.config.head_dim
    return sum(
        kv_cache_bytes(1, a.n_kv_heads, D, seq_len, dtype=dtype, window=a.window)
        for a in model.attention_layers()
    )


@dataclass
class ConvertReport:
    """A conversion run: the KV heads of every layer before and after, and what that changed."""

    model: str
    method: str
    heads: list[int]  # [l]: query heads (unchanged by conversion)
    kv_heads: tuple[list[int], list[int]]  # [l] before, after
    params: tuple[int, int]  # before, after
    kv_bytes: tuple[int, int]  # per token, before, after (KV_DTYPE)
    kv_bytes_context: tuple[int, int]  # one sequence of CONTEXT tokens, before, after
    metric: str  # what quality measures, e.g. "perplexity on 2,048 tokens of macbeth"
    quality: dict[str, float | None]  # original, converted, uptrained
    uptraining: UptrainResult | None = None
    training: dict[str, Any] = field(default_factory=dict)  # budget, loss, params, lr, ...
    meta: dict[str, Any] = field(default_factory=dict)

    def layers(self) -> list[dict[str, Any]]:
        """One dict per layer: query heads, KV heads before and after."""
        before, after = self.kv_heads
        return [
            {"layer": layer, "heads": H, "kv_heads_before": g0, "kv_heads_after": g1}
            for layer, (H, g0, g1) in enumerate(zip(self.heads, before, after, strict=True))
        ]


def convert_report(
    original: TextModel,
    converted: TextModel,
    *,
    model: str,
    method: str,
    metric: str,
    quality: dict[str, float | None],
    uptraining: UptrainResult | None = None,
    training: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> ConvertReport:
    """Gather the numbers of a run: ``original`` is the source model, ``converted`` the result
    (after uptraining, if any)."""
    return ConvertReport(
        model=model,
        method=method,
        heads=[a.n_heads for a in converted.attention_layers()],
        kv_heads=(
            [a.n_kv_heads for a in original.attention_layers()],
            [a.n_kv_heads for a in converted.attention_layers()],
        ),
        params=(parameters(original), parameters(converted)),
        kv_bytes=(kv_bytes_per_token(original), kv_bytes_per_token(converted)),
        kv_bytes_context=(kv_bytes_at(original), kv_bytes_at(converted)),
        metric=metric,
        quality=quality,
        uptraining=uptraining,
        training=dict(training or {}),
        meta=dict(meta or {}),
    )


def _variant(heads: list[int], kv: list[int]) -> str:
    if kv == heads:
        return "MHA"
    if set(kv) == {1}:
        return "MQA"
    return f"GQA-{kv[0]}" if len(set(kv)) == 1 else "GQA (per layer)"


def summary_lines(r: ConvertReport) -> list[str]:
    """What changed, what it saved, and what it cost in quality."""
    before, after = r.kv_heads
    q = r.quality
    lines = [
        f"{r.model}: {_variant(r.heads, before)} -> {_variant(r.heads, after)} by {r.method}: "
        f"{sum(before)} -> {sum(after)} KV heads for {sum(r.heads)} query heads",
        "KV heads per layer: " + " ".join(str(g) for g in after),
        f"parameters {r.params[0]:,} -> {r.params[1]:,} ({_pct(r.params[1], r.params[0])}); "
        f"KV cache {r.kv_bytes[0]:,} -> {r.kv_bytes[1]:,} bytes/token in {KV_DTYPE} "
        f"({_pct(r.kv_bytes[1], r.kv_bytes[0])}), {_mib(r.kv_bytes_context[0])} -> "
        f"{_mib(r.kv_bytes_context[1])} at {CONTEXT:,} tokens",
        f"{r.metric}: original {_q(q.get('original'))}, converted {_q(q.get('converted'))}"
        + (f", uptrained {_q(q['uptrained'])}" if q.get("uptrained") is not None else ""),
    ]
    u = r.uptraining
    if u is not None:
        first, last = (u.losses[0], u.losses[-1]) if u.losses else (math.nan, math.nan)
        resumed = "" if u.resumed_from is None else f" (resumed at step {u.resumed_from})"
        lines.append(
            f"uptraining: {u.steps} steps, {u.tokens:,} tokens, {u.seconds:.0f} s{resumed}; "
            f"{r.training.get('loss', 'loss')} {first:.4f} -> {last:.4f}"
        )
    return lines


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def to_json(r: ConvertReport) -> dict[str, Any]:
    u = r.uptraining
    return {
        "model": r.model,
        "method": r.method,
        "heads_per_layer": r.heads,
        "kv_heads_per_layer": {"before": r.kv_heads[0], "after": r.kv_heads[1]},
        "parameters": {"before": r.params[0], "after": r.params[1]},
        "kv_cache_bytes_per_token": {
            "dtype": KV_DTYPE,
            "before": r.kv_bytes[0],
            "after": r.kv_bytes[1],
        },
        "kv_cache_bytes_at_context": {
            "dtype": KV_DTYPE,
            "context": CONTEXT,
            "batch": 1,
            "before": r.kv_bytes_context[0],
            "after": r.kv_bytes_context[1],
        },
        "quality": {"metric": r.metric, **r.quality},
        "uptraining": None
        if u is None
        else {
            **r.training,
            "steps": u.steps,
            "tokens": u.tokens,
            "seconds": u.seconds,
            "stopped_by": u.stopped_by,
            "resumed_from": u.resumed_from,
            "losses": u.losses,
            "tokens_seen": u.tokens_seen,
        },
        "meta": r.meta,
    }


def convert_figures(r: ConvertReport, folder: Path) -> list[tuple[str, str]]:
    """Write the figures into ``folder``; returns ``(file name, caption)`` in page order."""
    u = r.uptraining
    if u is None or not u.losses:
        return []
    loss = r.training.get("loss", "loss")
    loss_curve(u.losses, folder / "uptrain.png", "uptraining", ylabel=f"{loss} loss")
    return [("uptrain.png", f"Uptraining loss ({loss}) per optimizer step.")]


def render_convert(r: ConvertReport, figures: list[tuple[str, str]], folder: Path) -> str:
    """The self-contained index.html (figures inlined)."""
    q = r.quality
    before, after = r.kv_heads
    rows = [
        ("KV heads (all layers)", f"{sum(before)}", f"{sum(after)}", _pct(sum(after), sum(before))),
        ("parameters", f"{r.params[0]:,}", f"{r.params[1]:,}", _pct(r.params[1], r.params[0])),
        (
            f"KV cache, bytes/token ({KV_DTYPE})",
            f"{r.kv_bytes[0]:,}",
            f"{r.kv_bytes[1]:,}",
            _pct(r.kv_bytes[1], r.kv_bytes[0]),
        ),
        (
            f"KV cache at {CONTEXT:,} tokens",
            _mib(r.kv_bytes_context[0]),
            _mib(r.kv_bytes_context[1]),
            _pct(r.kv_bytes_context[1], r.kv_bytes_context[0]),
        ),
        (
            f"{r.metric}, converted",
            _q(q.get("original")),
            _q(q.get("converted")),
            _pct(q.get("converted"), q.get("original")),
        ),
    ]
    if q.get("uptrained") is not None:
        rows.append(
            (
                f"{r.metric}, uptrained",
                _q(q.get("original")),
                _q(q.get("uptrained")),
                _pct(q.get("uptrained"), q.get("original")),
            )
        )
    parts = [
        page_start(f"headcount convert: {r.model}"),
        f"<h1>Converted: {_e(r.model or 'model')}</h1>",
        "<pre>" + _e("\n".join(summary_lines(r))) + "</pre>",
        "<p>This folder is the converted model: <code>headcount.load</code> reads it, and "
        "<code>headcount analyze/view/run/kv</code> take its path. Query head h of a layer reads "
        "KV head h // (H / G), contiguous groups as in Llama.</p>",
        "<table><tr><th class='l'></th><th>original</th><th>converted</th><th>change</th></tr>",
    ]
    parts += [
        f"<tr><td class='l'>{_e(a)}</td><td>{_e(b)}</td><td>{_e(c)}</td><td>{_e(d)}</td></tr>"
        for a, b, c, d in rows
    ]
    parts.append("</table>")
    if figures:
        parts.append("<h2>Uptraining</h2>")
        parts += figures_html(figures, folder)
    parts.append("<h2>Every layer</h2>" + sortable_table(r.layers()))
    run = {**r.training, **r.meta}
    meta = ", ".join(f"{k}={_e(str(v))}" for k, v in run.items())
    parts.append(f"<h2>Run</h2><p><small>{meta}</small></p>")
    parts.append(page_end())
    return "\n".join(parts)


def write_converted(
    converted: TextModel, r: ConvertReport, out_dir: str | Path, *, force: bool = False
) -> Path:
    """Save ``converted`` to ``out_dir`` with ``report/`` (convert.json, figures, index.html)
    inside, atomically; returns the folder. ``out_dir`` may be new, empty or (``force``) an
    earlier save."""
    return write_checkpoint_report(
        converted,
        out_dir,
        name="convert",
        data=to_json(r),
        figures=lambda folder: convert_figures(r, folder),
        render=lambda figures, folder: render_convert(r, figures, folder),
        force=force,
    )
