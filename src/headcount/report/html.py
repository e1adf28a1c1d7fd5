"""index.html of a head analysis: one self-contained page (figures inlined, no network), and the
pieces every report page shares (`page_start`, `figures_html`, `sortable_table`, `page_end`)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from headcount.heads.analysis import HeadAnalysis, syntax_column
from headcount.heads.roles import (
    SYNTACTIC_MARGIN,
    SYNTACTIC_MIN_ARCS,
    SYNTACTIC_THRESHOLD,
    THRESHOLDS,
)
from headcount.heads.scorers import DEFINITIONS
from headcount.report.summary import NAMED, fmt_head, found_heads, summary_lines

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px;border-bottom:1px solid #eee;text-align:right}
th{cursor:pointer;background:#f6f6f6;position:sticky;top:0}td.l,th.l{text-align:left}
figure{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:12px;color:#555;max-width:420px}
img{max-width:100%}.scroll{max-height:520px;overflow:auto;border:1px solid #ddd}
code{background:#f3f3f3;padding:0 3px}.found li{margin:2px 0}
"""

SORT_JS = """
(function(){
  var t=document.getElementById('heads');
  t.querySelectorAll('th').forEach(function(th,c){th.addEventListener('click',function(){
    var rows=Array.from(t.tBodies[0].rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
    rows.sort(function(a,b){var x=a.cells[c].dataset.v,y=b.cells[c].dataset.v;
      var nx=parseFloat(x),ny=parseFloat(y);
      var r=(isNaN(nx)||isNaN(ny))?String(x).localeCompare(String(y)):nx-ny;return asc?r:-r;});
    rows.forEach(function(r){t.tBodies[0].appendChild(r);});});});
  var imgs=document.images,ok=0;for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}
  document.getElementById('hc-status').textContent=JSON.stringify({images:imgs.length,loaded:ok,
    rows:t.tBodies[0].rows.length});
})();
"""


def _e(s: object) -> str:
    return html.escape(str(s))


def _num(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}"
    return _e(v)


def render_index(a: HeadAnalysis, figures: list[tuple[str, str]], folder: Path) -> str:
    """The page, with the PNGs of ``folder`` inlined as data URIs."""
    parts = [
        page_start(f"headcount report: {a.model}"),
        f"<h1>What each head does: {_e(a.model or 'model')}</h1>",
        "<pre>" + _e("\n".join(summary_lines(a))) + "</pre>",
        "<h2>Heads found</h2><ul class='found'>",
    ]
    for kind, name in NAMED:
        if name not in a.scores:
            continue
        heads = found_heads(a, kind)
        thr = THRESHOLDS[kind][1]
        if heads:
            items = ", ".join(f"<b>{fmt_head(l_, h)}</b> {v:.2f}" for l_, h, v in heads[:12])
            more = f" and {len(heads) - 12} more" if len(heads) > 12 else ""
            parts.append(
                f"<li>{kind} ({len(heads)} heads, <code>{name}</code> &ge; {thr}): {items}{more}</li>"
            )
        else:
            parts.append(f"<li>{kind}: none reach <code>{name}</code> &ge; {thr}</li>")
    if "induction" in a.scores and "copying" in a.scores:
        ind = found_heads(a, "induction")
        if ind:
            cps = ", ".join(
                f"{fmt_head(l_, h)} {float(a.scores['copying'][l_, h]):+.2f}"
                for l_, h, _ in ind[:12]
            )
            parts.append(f"<li>copying score of the induction heads: {cps}</li>")
    parts.append(
        f"<li>chance level of <code>induction</code> (uniform attention): "
        f"{a.chance.get('induction', math.nan):.3f}</li></ul>"
    )
    if a.syntax:
        parts.append(
            "<h2>Syntactic relations</h2><table><tr><th class='l'>relation</th><th>arcs</th>"
            "<th>best head</th><th>share hit</th><th>previous-word baseline</th></tr>"
        )
        for kind, t in a.syntax.items():
            flat = t.nan_to_num(-1).flatten()
            i = int(flat.argmax())
            H = t.shape[1]
            parts.append(
                f"<tr><td class='l'>{_e(kind)}</td><td>{a.syntax_counts[kind]}</td>"
                f"<td>{fmt_head(i // H, i % H)}</td><td>{float(flat[i]):.2f}</td>"
                f"<td>{a.syntax_baseline[kind]:.2f}</td></tr>"
            )
        parts.append("</table>")
    if any(a.window(i) is not None for i in range(len(a.heads_per_layer))):
        parts.append(_layers_table(a))
    parts.append("<h2>Figures</h2>")
    parts += figures_html(figures, folder)
    parts.append("<h2>How each score is defined</h2><dl>")
    for name in a.scores:
        parts.append(f"<dt><code>{name}</code></dt><dd>{_e(DEFINITIONS.get(name, ''))}</dd>")
    if a.syntax:
        parts.append(
            "<dt><code>syn_REL_d2g</code>, <code>syn_REL_g2d</code></dt><dd>after Voita et al. 2019, over "
            f"{a.meta.get('sentences', 0)} CoNLL-U sentences: for each arc of relation REL, the query is the "
            "last subword of the later word; d2g when the dependent comes after its governor, g2d when "
            "the governor comes after its dependent. A hit is when the earlier word with the most "
            "attention (summed over its subwords, the start token left out) is the other end of the "
            "arc. Relations with fewer arcs than the minimum are left out.</dd>"
        )
    parts.append(
        "</dl><h2>Roles and their thresholds</h2><p>A head passes a role when its score "
        "reaches the threshold; among the roles it passes, the one with the largest "
        "score / threshold ratio is its role; a head that passes none is <i>mixed</i>.</p><ul>"
    )
    for role, (name, thr) in THRESHOLDS.items():
        parts.append(f"<li>{role}: <code>{name}</code> &ge; {thr}</li>")
    parts.append(
        f"<li>syntactic REL: <code>syn_REL_*</code> &ge; {SYNTACTIC_THRESHOLD} and &ge; the "
        f"previous-word baseline + {SYNTACTIC_MARGIN}, for relations with at least "
        f"{SYNTACTIC_MIN_ARCS} arcs</li></ul>"
    )
    parts.append(_table(a))
    meta = ", ".join(f"{k}={_e(v)}" for k, v in a.meta.items())
    parts.append(f"<h2>Run</h2><p><small>{meta}</small></p>")
    parts.append(page_end())
    return "\n".join(parts)


def _layers_table(a: HeadAnalysis) -> str:
    """Local (sliding-window) and global layers, with their heads and KV heads."""
    rows = "".join(
        f"<tr><td>{i}</td><td class='l'>{'<b>global</b>' if a.window(i) is None else 'local'}</td>"
        f"<td>{'' if a.window(i) is None else a.window(i)}</td><td>{H}</td>"
        f"<td>{len(set(a.kv_groups[i]))}</td></tr>"
        for i, H in enumerate(a.heads_per_layer)
    )
    return (
        "<h2>Local and global layers</h2><p>A local layer attends to the last <i>window</i> "
        "positions only (sliding-window attention, a KV cache of at most that many positions); "
        "a global layer attends to every earlier position. Figures mark global layers "
        "<b>G</b>.</p><table><tr><th>layer</th><th class='l'>attention</th><th>window</th>"
        f"<th>heads</th><th>KV heads</th></tr>{rows}</table>"
    )


def _table(a: HeadAnalysis) -> str:
    rows = a.rows()
    assert all(syntax_column(k) in rows[0] for k in a.syntax)
    return "<h2>Every head</h2>" + sortable_table(rows, text_columns=("attention", "role"))


# ------------------------------------------------------------- pieces every report page uses
def page_start(title: str) -> str:
    """The page up to and including ``<body>``: charset, title and the shared style sheet."""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
    )


def page_end() -> str:
    """The status element the page tests read, the table-sorting script, the closing tags."""
    return f"<pre id='hc-status' hidden></pre><script>{SORT_JS}</script></body></html>"


def figures_html(figures: list[tuple[str, str]], folder: Path) -> list[str]:
    """One ``<figure>`` per ``(file name, caption)``, the PNG of ``folder`` inlined as a data URI."""
    out = []
    for fname, caption in figures:
        data = base64.b64encode((folder / fname).read_bytes()).decode("ascii")
        out.append(
            f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)} (<code>figures/{_e(fname)}</code>)</figcaption></figure>"
        )
    return out


def sortable_table(rows: Sequence[Mapping[str, Any]], text_columns: tuple[str, ...] = ()) -> str:
    """The one table of a page (``id='heads'``, which the sorting script and page tests find):
    a column per key of ``rows[0]``, numbers to 3 decimals, NaN blank; click a header to sort."""
    cols = list(rows[0])
    out = ["<p>Click a column to sort.</p><div class='scroll'><table id='heads'><thead><tr>"]
    out += [f"<th class='{'l' if c in text_columns else ''}'>{_e(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            dv = "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
            cls = " class='l'" if c in text_columns else ""
            cells.append(f"<td{cls} data-v='{_e(dv)}'>{_num(v)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)
