"""`headcount importance`: Michel's gradient importance of every head (and, on request, the
single-head ablation tables) over a text, written as a report folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from headcount.cli.main import int_in

DEFAULT_TOKENS = 2048
DEFAULT_WINDOW = 256


def add_text_options(p: argparse.ArgumentParser, tokens: int = DEFAULT_TOKENS) -> None:
    """--text / --play / --tokens / --window, shared with `headcount prune`."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, metavar="FILE", help="UTF-8 text file to score on")
    src.add_argument(
        "--play",
        metavar="P",
        help="one Shakespeare play (default: the calibration plays, Gutenberg header stripped)",
    )
    p.add_argument(
        "--tokens", type=int_in(0), default=tokens, help=f"text tokens to read (default {tokens})"
    )
    p.add_argument(
        "--window",
        type=int_in(0),
        default=DEFAULT_WINDOW,
        help=f"decoders: tokens per example (default {DEFAULT_WINDOW}; at most the model's "
        "context). Encoders score (line, next line) pairs instead",
    )
    p.set_defaults(corpus="shakespeare")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "importance",
        help="how much each head matters (Michel et al. 2019): CSV, JSON, figures, HTML report",
        description="Score every attention head and KV group by Michel et al.'s gradient "
        "importance E|dL/d gate| over a text (decoders: next-token loss; encoders: a contrastive "
        "loss on consecutive lines) and write importance.csv, importance.json, figures/ and "
        "index.html into the output folder.",
    )
    p.add_argument(
        "model", nargs="?", default="smollm2", help="model name or path (default: smollm2)"
    )
    add_text_options(p)
    p.add_argument(
        "--no-normalize",
        action="store_true",
        help="keep raw scores (default: each layer divided by its L2 norm, as Michel et al.)",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also remove each head alone and keep each head alone in its layer (Michel's "
        "Tables 1 and 2): 2 x heads evaluations of the whole text, slow",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="report folder")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier headcount report in that folder"
    )
    p.set_defaults(func=run)


def check_text_options(args: argparse.Namespace) -> None:
    from headcount.cli.main import UsageError

    if args.tokens < 2 or args.window < 2:
        raise UsageError(f"--tokens and --window must be >= 2, got {args.tokens} and {args.window}")


def read_text(args: argparse.Namespace, play: str | None = None) -> str:
    """The scoring text (``play``: that play instead), or a one-line error."""
    from headcount.cli.analyze import load_text
    from headcount.cli.main import UsageError
    from headcount.heads import TextError

    ns = argparse.Namespace(
        text=None if play else args.text, corpus="shakespeare", play=play or args.play
    )
    try:
        text = load_text(ns)
    except ValueError as exc:  # an unknown play
        if isinstance(exc, TextError):
            raise
        raise UsageError(str(exc)) from exc
    if not text.strip():
        raise TextError(f"the text ({ns.text or ns.play or 'calibration plays'}) is empty")
    return text


def text_name(args: argparse.Namespace) -> str:
    if args.text is not None:
        return str(args.text)
    return f"shakespeare {args.play}" if args.play else "shakespeare calibration plays"


def encode_prefix(tokenizer: Any, text: str, n: int) -> list[int]:
    """``tokenizer.encode(text)[:n]`` without encoding all of a long text: prefixes of growing
    length are encoded until one gives a margin of 64 ids past ``n`` (a cut only changes the
    ids next to it)."""
    chars = 8 * n + 1024
    while True:
        ids = tokenizer.encode(text[:chars])
        if chars >= len(text) or len(ids) > n + 64:
            return list(ids[:n])
        chars *= 2


def objective_for(
    model: Any,
    text: str,
    tokens: int,
    window: int,
    *,
    gates: bool = False,
    batch_size: int | None = None,
) -> Any:
    """Decoders: `LanguageModeling` on the first ``tokens`` ids of ``text`` (``tokenizer.encode``)
    in windows of ``window``. Encoders: `Contrastive` on (line, next line) pairs of ``text``
    until their tokens reach ``tokens``; with ``gates``, `EmbeddingDistillation` on the first
    lines of those pairs (learned gates of an encoder keep its embeddings). ``batch_size``:
    examples per batch (default: each objective's own)."""
    from headcount import Decoder
    from headcount.cli.main import UsageError
    from headcount.prune import Contrastive, EmbeddingDistillation, LanguageModeling, sentence_pairs

    sized = {} if batch_size is None else {"batch_size": batch_size}
    if isinstance(model, Decoder):
        if window > model.max_len:
            raise UsageError(
                f"--window {window} is longer than the model's context {model.max_len}"
            )
        ids = encode_prefix(model.tokenizer, text, tokens)
        return LanguageModeling(ids, window=window, **sized)
    pairs, used = [], 0
    for a, b in sentence_pairs(text):
        if used >= tokens:
            break
        pairs.append((a, b))
        used += len(model.tokenizer.encode(a)) + len(model.tokenizer.encode(b))
    if gates:
        return EmbeddingDistillation(model, [a for a, _ in pairs], batch_size=batch_size or 16)
    return Contrastive(model, pairs, **sized)


def run(args: argparse.Namespace) -> int:
    from headcount import Decoder, load
    from headcount.cli.analyze import Bars, _digest
    from headcount.distributed import World
    from headcount.prune import ablate, head_importance
    from headcount.report.importance import (
        ImportanceReport,
        summary_lines,
        write_importance_report,
    )
    from headcount.report.write import prepare_target

    check_text_options(args)
    world = getattr(args, "world", None) or World()  # under torchrun: rank 0 writes
    if world.distributed and args.ablation:
        from headcount.cli.main import UsageError

        raise UsageError("--ablation runs in one process (not under torchrun)")
    world.on_main(lambda: prepare_target(args.output, force=args.force))  # before the slow part
    text = read_text(args)
    world.check_same("text", {"chars": len(text), "sha256": _digest(text)})
    if world.is_main:
        print(f"loading {args.model} ...", file=sys.stderr)
    model = load(args.model)
    objective = objective_for(model, text, args.tokens, args.window)
    t0 = time.perf_counter()
    bars = Bars()
    try:
        imp = head_importance(
            model,
            objective,
            normalize=not args.no_normalize,
            progress=(lambda d, n: bars("importance", d, n)) if world.is_main else None,
            world=world,
        )
        abl = (
            ablate(model, objective, progress=lambda d, n: bars("ablation", d, n))
            if args.ablation
            else None
        )
    finally:
        bars.close()
    if not world.is_main:
        return 0
    layers = model.attention_layers()
    report = ImportanceReport(
        model=str(args.model),
        importance=imp,
        kv_groups=[[a.kv_head_of(h) for h in range(a.n_heads)] for a in layers],
        ablation=abl,
        meta={
            "text": text_name(args),
            "tokens": imp.n_tokens,
            **({"window": args.window} if isinstance(model, Decoder) else {}),
            "objective": imp.objective,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    )
    index = write_importance_report(report, args.output, force=args.force)
    print("\n".join(summary_lines(report)))
    print(f"report: {index}  ({report.meta['seconds']} s)")
    return 0
