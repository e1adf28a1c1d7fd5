"""`analyze`: score every head of a model over real text, streaming layer by layer.

Legend: B batch, H query heads, T positions of a chunk, L layers, V vocabulary, C model dim.

The model contract used here is small: ``model.attention_layers()`` (the `Attention` modules in
layer order), ``model(input_ids (B, T))`` with ``.logits``, ``model.tokenizer`` (``encode``,
``decode``), ``model.max_len``, and for the copying score ``model.embed_tokens`` /
``model.lm_head`` (or ``get_input_embeddings()`` / ``get_output_embeddings()``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from headcount.distributed.process import World
from headcount.heads.errors import ConlluError, TextError
from headcount.heads.induction import (
    induction_batch,
    induction_candidates,
    ov_copying,
    unembed_embed,
)
from headcount.heads.roles import assign_roles
from headcount.heads.scorers import ChunkContext, uniform_chance
from headcount.heads.stream import ScoreAccumulator, capture_weights
from headcount.heads.syntax import DIRECTIONS, Sentence, align, sentence_context, syntactic_hits
from headcount.nn.attention import Attention

TEXT_SCORES = (
    "previous_token",
    "current_token",
    "first_token",
    "distance",
    "entropy",
    "duplicate_token",
    "rare_token",
)
# The fewest scored queries (over the whole text) for a text score to mean anything: below this a
# score is undefined (NaN, named in ``meta["undefined"]``) and no head gets a role from it. A text
# too short for the position scores is refused (`TextError`): nothing about it could be said.
MIN_QUERIES: dict[str, int] = {
    "previous_token": 16,
    "current_token": 16,
    "first_token": 16,
    "distance": 16,
    "entropy": 16,
    "duplicate_token": 8,  # queries whose token occurred earlier in the chunk
    "rare_token": 8,  # queries with an earlier token in their sentence
}
# Which heads get an attention-pattern thumbnail: kind -> score that ranks them.
THUMBNAIL_KINDS = {
    "previous-token": "previous_token",
    "induction": "induction",
    "sink": "first_token",
    "duplicate-token": "duplicate_token",
    "current-token": "current_token",
    "broad": "entropy",
}
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class AnalysisConfig:
    """Knobs of `analyze`. ``chunk_len``: positions per forward pass (start token included),
    capped at the model's context; ``max_tokens``: text tokens to read (None = all)."""

    chunk_len: int = 512
    max_tokens: int | None = 4096
    induction_seqs: int = 10
    induction_len: int = 25
    induction_repeats: int = 4
    seed: int = 0
    min_relation_count: int = 5
    thumbnails_per_kind: int = 2
    thumbnail_len: int = 40

    def __post_init__(self) -> None:
        if self.chunk_len < 2:
            raise ValueError(f"chunk_len must be >= 2, got {self.chunk_len}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")


@dataclass
class Pattern:
    """One head's attention pattern on a short input, for a thumbnail."""

    kind: str
    layer: int
    head: int
    score: float
    tokens: list[str]
    weights: Tensor  # (T, T)


@dataclass
class HeadAnalysis:
    """Everything `analyze` found. Tables are ``(L, H_max)`` float64, NaN where a layer has fewer
    heads. ``syntax`` holds one table per relation kind counted at least ``min_relation_count``
    times (e.g. ``"nsubj:dep>gov"``), with ``syntax_counts`` arcs and the previous-word
    baseline ``syntax_baseline``."""

    model: str
    heads_per_layer: list[int]
    kv_groups: list[list[int]]
    scores: dict[str, Tensor]
    roles: list[list[str]]
    syntax: dict[str, Tensor] = field(default_factory=dict)
    syntax_counts: dict[str, int] = field(default_factory=dict)
    syntax_baseline: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    patterns: list[Pattern] = field(default_factory=list)
    windows: list[int | None] = field(default_factory=list)  # [l] sliding window, None: global

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (None: it attends to every earlier position)."""
        return self.windows[layer] if layer < len(self.windows) else None

    def attention_kind(self, layer: int) -> str:
        """``"local"`` for a sliding-window layer, ``"global"`` for a full-attention one."""
        return "global" if self.window(layer) is None else "local"

    def rows(self) -> list[dict[str, Any]]:
        """One dict per head: layer, head, kv_group, attention (local/global), window, every
        score, role."""
        out = []
        for layer, H in enumerate(self.heads_per_layer):
            for h in range(H):
                r: dict[str, Any] = {
                    "layer": layer,
                    "head": h,
                    "kv_group": self.kv_groups[layer][h],
                    "attention": self.attention_kind(layer),
                    "window": self.window(layer),
                }
                for name, t in self.scores.items():
                    r[name] = float(t[layer, h])
                for kind, t in self.syntax.items():
                    r[syntax_column(kind)] = float(t[layer, h])
                r["role"] = self.roles[layer][h]
                out.append(r)
        return out

    def top(self, name: str, k: int = 3) -> list[tuple[int, int, float]]:
        """The ``k`` heads with the highest score ``name``: ``(layer, head, score)``."""
        t = self.scores[name].nan_to_num(nan=-math.inf)
        vals, idx = t.flatten().topk(min(k, t.numel()))
        H = t.shape[1]
        return [
            (int(i) // H, int(i) % H, float(v))
            for v, i in zip(vals, idx, strict=True)
            if v > -math.inf
        ]


def syntax_column(kind: str) -> str:
    """Table column of a relation kind: ``nsubj:dep>gov`` -> ``syn_nsubj_d2g``."""
    rel, direction = kind.split(":")
    return f"syn_{rel}_{'d2g' if direction == DIRECTIONS[0] else 'g2d'}"


# ------------------------------------------------------------------------ model access
def _layers(model: Any) -> list[Attention]:
    layers = list(model.attention_layers())
    if not layers:
        raise ValueError("the model has no attention layers")
    return layers


def _forward(model: Any, ids: Tensor) -> None:
    with torch.no_grad():
        model(ids)


def start_token(model: Any) -> int | None:
    """The id the model expects at the start of a text, if it has one."""
    for owner, name in (
        (getattr(model, "tokenizer", None), "bos_id"),
        (getattr(model, "tokenizer", None), "bos_token_id"),
        (getattr(model, "config", None), "bos_token_id"),
    ):
        v = getattr(owner, name, None) if owner is not None else None
        if isinstance(v, int) and v >= 0:
            return v
    return None


def embeddings(model: Any) -> tuple[Tensor, Tensor] | None:
    """``(W_E (V, C), W_U (C, V))`` of the model, or None when it does not expose them.

    Looks for ``embed_tokens`` or ``embed`` (an ``nn.Embedding``) and ``output_weight`` (a
    ``(V, C)`` tensor, tied or not) or ``lm_head``.
    """
    emb = getattr(model, "embed_tokens", None) or getattr(model, "embed", None)
    we = getattr(emb, "weight", None)
    wu = getattr(model, "output_weight", None)
    if not isinstance(wu, Tensor):
        wu = getattr(getattr(model, "lm_head", None), "weight", None)
    if not isinstance(we, Tensor) or not isinstance(wu, Tensor) or we.shape != wu.shape:
        return None
    return we.detach(), wu.detach().T


def _norm_weight(module: Any, size: int) -> Tensor | None:
    w = getattr(module, "weight", None)
    return w.detach() if isinstance(w, Tensor) and w.shape == (size,) else None


def norm_scales(model: Any, n_layers: int, size: int) -> tuple[list[Tensor | None], Tensor | None]:
    """The weights of the norm before each attention (``layers[i].attn_norm``) and of the final
    norm (``norm``), to fold into the OV circuit; None where the model has none."""
    blocks = getattr(model, "layers", None)
    ins: list[Tensor | None] = [None] * n_layers
    if blocks is not None and len(blocks) == n_layers:
        ins = [_norm_weight(getattr(b, "attn_norm", None), size) for b in blocks]
    return ins, _norm_weight(getattr(model, "norm", None), size)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (the analysis adds its own start token)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def token_offsets(tokenizer: Any) -> Callable[[str], list[tuple[int, int]]] | None:
    """``text -> [(start, end)]`` character spans of the tokens of `encode`, from a HuggingFace
    ``tokenizers`` backend (its offsets survive lowercasing and accent stripping); None for a
    tokenizer without one."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not callable(getattr(backend, "encode", None)):
        return None

    def spans(text: str) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in backend.encode(text, add_special_tokens=False).offsets]

    return spans


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Display string of each token (the tokenizer's own when it has one)."""
    for name in ("token_strings", "display_tokens", "tokens"):
        fn = getattr(tokenizer, name, None)
        if callable(fn):
            try:
                out = fn(list(ids))
            except TypeError:
                continue
            if isinstance(out, list) and len(out) == len(ids):
                return [str(s) for s in out]
    cache: dict[int, str] = {}
    return [cache.setdefault(i, tokenizer.decode([i])) for i in ids]


def _segments(strings: Sequence[str]) -> list[int]:
    """Sentence number of each token: a sentence ends after a token that ends in . ! ? or holds
    a line break."""
    seg, out = 0, []
    for s in strings:
        out.append(seg)
        t = s.rstrip(" ")
        if "\n" in s or (t and t[-1] in ".!?"):
            seg += 1
    return out


# ------------------------------------------------------------------------ the analysis
def analyze(
    model: Any,
    text: str,
    *,
    sentences: Sequence[Sentence] | None = None,
    config: AnalysisConfig | None = None,
    progress: Progress | None = None,
    name: str = "",
    world: World | None = None,
) -> HeadAnalysis:
    """Score every head of ``model`` over ``text``: position, locality, duplicate and rare-token
    scores on the text in chunks, induction on repeated random tokens, the OV copying score,
    and (with ``sentences`` from `read_conllu`) syntactic relations. ``progress(stage, done,
    total)`` is called as the passes advance. Raises `TextError` for an empty text.

    ``world`` (from `headcount.distributed.init`): each rank scores its share of the chunks,
    induction sequences and sentence batches; the per-head sums and counts are added over the
    ranks before any mean is taken, so every rank returns the single-process scores (to float
    rounding); only rank 0 draws the thumbnails."""
    cfg = config or AnalysisConfig()
    world = world or World()
    report = progress or (lambda stage, done, total: None)
    tok = model.tokenizer
    layers = _layers(model)
    heads = [a.n_heads for a in layers]
    groups = [[a.kv_head_of(h) for h in range(a.n_heads)] for a in layers]
    t0 = time.perf_counter()

    if not text or not text.strip():
        raise TextError("the text to analyse is empty")
    ids = encode(tok, text)
    if cfg.max_tokens is not None:
        ids = ids[: cfg.max_tokens]
    start = start_token(model)
    prefix = [] if start is None else [start]
    if len(prefix) + len(ids) < 2:
        raise TextError(
            f"the text has {len(ids)} token(s); at least {MIN_QUERIES['previous_token']} "
            "are needed to score heads"
        )
    max_len = int(getattr(model, "max_len", cfg.chunk_len) or cfg.chunk_len)
    chunk_len = max(2, min(cfg.chunk_len, max_len))
    body = chunk_len - len(prefix)
    chunks = [ids[k : k + body] for k in range(0, len(ids), body)]
    if len(chunks) > 1 and len(prefix) + len(chunks[-1]) < 2:
        chunks.pop()  # a lone trailing token has nothing to attend to
    queries = sum(len(prefix) + len(c) - 1 for c in chunks)  # scored by the position scores
    if queries < MIN_QUERIES["previous_token"]:
        raise TextError(
            f"the text has {len(ids)} token(s), {queries} scored position(s): too short to score "
            f"heads; the position scores need at least {MIN_QUERIES['previous_token']} "
            "(a longer text, or a sentence or two more)"
        )
    vocab = max(max(ids), start or 0) + 1
    emb = embeddings(model)
    if emb is not None:
        vocab = max(vocab, emb[0].shape[0])
    counts = torch.bincount(torch.tensor(ids), minlength=vocab).double()
    strings = token_strings(tok, ids)
    segs = _segments(strings)

    # 1. the text, chunk by chunk: every layer reduced as the forward pass goes
    acc = ScoreAccumulator(heads, TEXT_SCORES)
    mine = world.part(len(chunks))  # all of them in one process
    with capture_weights(layers, acc.update):
        for done, k in enumerate(mine):
            chunk, pos = chunks[k], k * body
            seg = segs[pos : pos + len(chunk)]
            x = torch.tensor([prefix + chunk])  # (1, T)
            seg_t = (
                torch.tensor([[seg[0] - 1] * len(prefix) + seg]) if prefix else torch.tensor([seg])
            )
            acc.context = ChunkContext(x, frequencies=counts, segments=seg_t)
            _forward(model, x)
            report("text", done + 1, len(mine))
    acc.all_sum(world)
    scores = acc.means()
    undefined = _undefined(acc, scores)

    # 2. induction on repeated random tokens
    specials = tuple(s for s in (start,) if s is not None)
    cand = induction_candidates(counts, exclude=specials)
    cand_source = "corpus"
    if cand.numel() < cfg.induction_len:
        lo, hi = vocab // 4, 3 * vocab // 4
        cand = torch.tensor([i for i in range(lo, hi) if i not in specials])
        cand_source = f"vocabulary ids {lo}..{hi - 1} (the text has too few distinct tokens)"
    ind_start = start if start is not None else int(torch.argmax(counts))
    # fit the sequences into the model's context: fewer repeats first, then shorter sequences
    length, repeats = cfg.induction_len, cfg.induction_repeats
    repeats = max(2, min(repeats, (max_len - 1) // length))
    length = min(length, (max_len - 1) // repeats)
    ind_tokens, targets = induction_batch(
        cand, ind_start, n_seqs=cfg.induction_seqs, length=length, repeats=repeats, seed=cfg.seed
    )
    ind = ScoreAccumulator(heads, ["induction"])
    rows = world.part(ind_tokens.shape[0])
    report("induction", 0, 1)
    if len(rows):
        pick = (targets[0] >= rows.start) & (targets[0] < rows.stop)
        mine_targets = (targets[0][pick] - rows.start, targets[1][pick], targets[2][pick])
        x = ind_tokens[rows.start : rows.stop]  # (N_rank, 1 + repeats * length)
        ind.context = ChunkContext(x, induction_targets=mine_targets)
        with capture_weights(layers, ind.update):
            _forward(model, x)
    ind.all_sum(world)
    report("induction", 1, 1)
    scores["induction"] = ind.means()["induction"]

    # 3. the OV copying score
    if emb is not None:
        ins, out_scale = norm_scales(model, len(layers), emb[0].shape[1])
        EU = unembed_embed(*emb, out_scale)
        cop = torch.full_like(scores["induction"], math.nan)
        with torch.no_grad():
            for layer, a in enumerate(layers):
                c = ov_copying(
                    emb[0],
                    emb[1],
                    a.W_V,
                    a.W_O,
                    in_scale=ins[layer],
                    EU=EU,
                    group_sizes=a.group_sizes,
                )
                cop[layer, : a.n_heads] = c.double()
        scores["copying"] = cop

    # 4. syntactic relations
    syntax: dict[str, Tensor] = {}
    syn_counts: dict[str, int] = {}
    syn_base: dict[str, float] = {}
    skipped = 0
    if sentences:
        syntax, syn_counts, syn_base, skipped = _syntax(
            model, layers, heads, sentences, prefix, cfg, report, world
        )

    # chance levels of a head attending uniformly
    first_q = torch.arange(1, chunk_len)
    chance = {
        "induction": uniform_chance(targets[1]),
        "previous_token": uniform_chance(first_q),
        "first_token": uniform_chance(first_q),
    }
    roles = assign_roles(scores, heads, syntax, syn_counts, syn_base)
    result = HeadAnalysis(
        model=name,
        heads_per_layer=heads,
        kv_groups=groups,
        scores=scores,
        roles=roles,
        syntax=syntax,
        syntax_counts=syn_counts,
        syntax_baseline=syn_base,
        chance=chance,
        windows=[a.window for a in layers],
        meta={
            "text_tokens": len(ids),
            "chunks": len(chunks),
            "chunk_len": chunk_len,
            "start_token": start,
            "induction": {
                "sequences": cfg.induction_seqs,
                "length": length,
                "repeats": repeats,
                "candidates": int(cand.numel()),
                "candidate_source": cand_source,
            },
            "sentences": len(sentences or ()) - skipped,
            "sentences_too_long": skipped,
            "copying": emb is not None,
            "undefined": undefined,
        },
    )
    if world.is_main:
        result.patterns = _thumbnails(model, layers, result, ids, ind_tokens[0], prefix, cfg)
    result.meta["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _undefined(acc: ScoreAccumulator, scores: dict[str, Tensor]) -> dict[str, str]:
    """Set to NaN every text score counted over fewer than `MIN_QUERIES` queries; returns
    ``{score: why}`` for them (the counts are the same for every head)."""
    out = {}
    for name, least in MIN_QUERIES.items():
        if name not in scores:
            continue
        n = int(max((float(c.max()) for c in acc.counts[name] if c.numel()), default=0.0))
        if n < least:
            scores[name] = torch.full_like(scores[name], math.nan)
            out[name] = f"undefined: {n} scored queries in the text, at least {least} needed"
    return out


def _syntax(
    model: Any,
    layers: list[Attention],
    heads: list[int],
    sentences: Sequence[Sentence],
    prefix: list[int],
    cfg: AnalysisConfig,
    report: Progress,
    world: World,
) -> tuple[dict[str, Tensor], dict[str, int], dict[str, float], int]:
    tok = model.tokenizer
    kinds: dict[str, int] = {}
    items = []
    skipped = 0
    spans = token_offsets(tok)
    for s in sentences:
        ids, word_tokens = align(s, lambda t: encode(tok, t), tok.decode, spans)
        n = len(prefix) + len(ids)
        if n > int(getattr(model, "max_len", n) or n):
            skipped += 1  # longer than the context: left out, and counted in the report
            continue
        items.append((ids, sentence_context(s, word_tokens, n, kinds, offset=len(prefix))))
    if not kinds:
        raise ConlluError(
            f"none of the {len(sentences)} CoNLL-U sentences has a dependency arc to score "
            f"({skipped} longer than the model's context)"
        )
    E = len(kinds)
    hits = [torch.zeros(H, E, dtype=torch.float64) for H in heads]
    counts = torch.zeros(E, dtype=torch.float64)
    base = torch.zeros(E, dtype=torch.float64)
    batch: list[tuple[int, Any]] = []  # (length, context) of each row of the current batch

    def update(layer: int, w: Tensor) -> None:
        for b, (n, ctx) in enumerate(batch):
            # right padding: a causal row never sees the padding after it
            h, _ = syntactic_hits(w[b : b + 1, :, :n, :n], ctx, E)
            hits[layer] += h.double()

    size = 16
    pad = prefix[0] if prefix else 0
    starts = range(0, len(items), size)
    mine = [starts[b] for b in world.part(len(starts))]  # batches of this rank
    with capture_weights(layers, update):
        for k in mine:
            group = items[k : k + size]
            rows = [prefix + ids for ids, _ in group]
            T = max(len(r) for r in rows)
            x = torch.tensor([r + [pad] * (T - len(r)) for r in rows])  # (B, T)
            batch[:] = [(len(r), ctx) for r, (_, ctx) in zip(rows, group, strict=True)]
            _forward(model, x)
            for _, ctx in group:
                ones = torch.ones(ctx.kinds.numel(), dtype=torch.float64)
                counts.index_add_(0, ctx.kinds, ones)
                base.index_add_(0, ctx.kinds, ctx.baseline_hits.double())
            report("syntax", min(k + size, len(items)), len(items))
    world.all_sum([*hits, counts, base])  # sums and counts, before any division
    L, Hm = len(heads), max(heads)
    tables, n_arcs, baseline = {}, {}, {}
    for kind, e in sorted(kinds.items()):
        if counts[e] < cfg.min_relation_count:
            continue
        t = torch.full((L, Hm), math.nan, dtype=torch.float64)
        for layer, hl in enumerate(hits):
            t[layer, : hl.shape[0]] = hl[:, e] / counts[e]
        tables[kind], n_arcs[kind] = t, int(counts[e])
        baseline[kind] = float(base[e] / counts[e])
    return tables, n_arcs, baseline, skipped


def _thumbnails(
    model: Any,
    layers: list[Attention],
    result: HeadAnalysis,
    ids: list[int],
    ind_seq: Tensor,
    prefix: list[int],
    cfg: AnalysisConfig,
) -> list[Pattern]:
    """Attention patterns of the strongest heads of each kind, on a short input."""
    tok = model.tokenizer
    want: dict[int, list[tuple[str, int, float]]] = {}
    for kind, name in THUMBNAIL_KINDS.items():
        if name not in result.scores:
            continue
        for layer, h, v in result.top(name, cfg.thumbnails_per_kind):
            want.setdefault(layer, []).append((kind, h, v))
    if not want:
        return []
    text_ids = torch.tensor([prefix + ids[: cfg.thumbnail_len - len(prefix)]])
    n_ind = min(ind_seq.numel(), 1 + 2 * result.meta["induction"]["length"])
    inputs = {"text": text_ids, "induction": ind_seq[None, :n_ind]}
    out: list[Pattern] = []
    for which, x in inputs.items():
        strings = token_strings(tok, x[0].tolist())
        grabbed: dict[int, Tensor] = {}

        def grab(layer: int, w: Tensor, grabbed: dict[int, Tensor] = grabbed) -> None:
            if layer in want:
                grabbed[layer] = w[0].float().clone()  # (H, T, T), only the wanted layers

        with capture_weights(layers, grab):
            _forward(model, x)
        for layer, entries in sorted(want.items()):
            for kind, h, v in entries:
                if (kind == "induction") == (which == "induction"):
                    out.append(Pattern(kind, layer, h, v, strings, grabbed[layer][h]))
    order = list(THUMBNAIL_KINDS)
    out.sort(key=lambda p: (order.index(p.kind), -p.score))
    return out
