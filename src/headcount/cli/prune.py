"""`headcount prune`: remove a fraction of a model's heads, optionally recover by distillation,
measure held-out quality before and after, and save the pruned checkpoint with its report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from headcount.cli.importance import add_text_options
from headcount.cli.main import finite, int_in

UNITS = ("head", "group")
DEFAULT_EVAL_PLAY = "macbeth"
DEFAULT_EVAL_TOKENS = 2048
EVAL_WINDOW = 512


def register(sub: argparse._SubParsersAction) -> None:
    from headcount.prune import METHODS

    p = sub.add_parser(
        "prune",
        help="remove a fraction of the heads, recover, evaluate, save the pruned checkpoint",
        description="Rank the heads (or KV groups) of MODEL, physically remove the lowest "
        "FRACTION, optionally recover by distillation toward the unpruned model, evaluate on a "
        "held-out play (decoders: perplexity; encoders: embedding cosine to the unpruned model) "
        "and write DIR: a saved model that headcount.load and every headcount command read, with "
        "DIR/report/ (prune.json, figures, index.html).",
    )
    p.add_argument("model", help="model name or path, e.g. smollm2")
    p.add_argument(
        "--fraction",
        type=finite,
        required=True,
        metavar="F",
        help="share of the units to remove, in [0, 1); every layer keeps one",
    )
    p.add_argument(
        "--by",
        default="importance",
        metavar="|".join(METHODS),
        help="ranking: Michel's importance once (default), iterative re-scoring every --step, "
        "learned L0 gates (Voita et al.), or random",
    )
    p.add_argument(
        "--unit",
        default="head",
        metavar="|".join(UNITS),
        help="remove query heads (default) or whole KV groups (which also shrinks the KV cache)",
    )
    add_text_options(p)
    p.add_argument(
        "--step", type=finite, default=0.1, help="iterative: share removed per round (default 0.1)"
    )
    p.add_argument(
        "--lam", type=finite, default=0.01, help="gates: weight of the L0 penalty (default 0.01)"
    )
    p.add_argument(
        "--gate-steps", type=int_in(0), default=200, help="gates: training steps (default 200)"
    )
    p.add_argument(
        "--seed",
        type=int_in(0, 2**63 - 1),
        default=0,
        help="random order, gate noise, recovery order (default 0)",
    )
    p.add_argument(
        "--recover-minutes",
        type=finite,
        metavar="M",
        help="distil the pruned model toward the unpruned one on the text for M minutes",
    )
    add_eval_options(p, "scoring")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder of the pruned model")
    p.add_argument(
        "--force", action="store_true", help="replace an earlier saved model in that folder"
    )
    p.set_defaults(func=run)


def add_eval_options(p: argparse.ArgumentParser, use: str) -> None:
    """--eval-play / --eval-tokens: the held-out text `Quality` measures on."""
    p.add_argument(
        "--eval-play",
        default=DEFAULT_EVAL_PLAY,
        metavar="P",
        help=f"held-out play for quality (default {DEFAULT_EVAL_PLAY}); never the {use} text",
    )
    p.add_argument(
        "--eval-tokens",
        type=int_in(0),
        default=DEFAULT_EVAL_TOKENS,
        metavar="N",
        help=f"tokens of the eval play (default {DEFAULT_EVAL_TOKENS})",
    )


def _play_key(name: str) -> str:
    """A play name as the corpus files name it (``"Julius Caesar"`` -> ``"julius_caesar"``)."""
    return name.lower().replace(" ", "_").removesuffix(".txt").removesuffix("_gut")


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before loading anything; `UsageError` otherwise."""
    from headcount.cli.importance import check_text_options
    from headcount.cli.main import UsageError
    from headcount.prune import METHODS

    if not 0.0 <= args.fraction < 1.0:  # the same words as check_fraction, before the load
        raise UsageError(f"fraction must be in [0, 1), got {args.fraction!r}")
    if args.by not in METHODS:
        raise UsageError(f"unknown --by {args.by!r}; choose from {', '.join(METHODS)}")
    if args.unit not in UNITS:
        raise UsageError(f"unknown --unit {args.unit!r}; choose from {', '.join(UNITS)}")
    if args.recover_minutes is not None and not args.recover_minutes > 0:
        raise UsageError(f"--recover-minutes must be > 0, got {args.recover_minutes}")
    if not 0 < args.step < 1:
        raise UsageError(f"--step must be in (0, 1), got {args.step}")
    if not args.lam >= 0 or args.gate_steps < 1:
        raise UsageError(
            f"--lam must be >= 0 and --gate-steps >= 1, got {args.lam} and {args.gate_steps}"
        )
    if args.eval_tokens < 2:
        raise UsageError(f"--eval-tokens must be >= 2, got {args.eval_tokens}")
    check_text_options(args)
    check_eval_play(args, "scoring")


def check_eval_play(args: argparse.Namespace, use: str) -> None:
    """`UsageError` when --eval-play is part of the text (--text/--play) used for ``use``."""
    from headcount.cli.main import UsageError

    if args.text is None:
        from headcount.loaders.corpus import plays

        scoring = {_play_key(args.play)} if args.play else set(plays("calibration"))
        if _play_key(args.eval_play) in scoring:
            what = f"--play {args.play}" if args.play else "the calibration plays (the default)"
            raise UsageError(
                f"--eval-play {args.eval_play} is part of the {use} text, {what}; evaluate on "
                f"a held-out play (hamlet, macbeth, tempest) or use another --play for {use}"
            )


class RecoveryBar:
    """A tqdm bar over the recovery's minutes, with the step and loss."""

    def __init__(self, minutes: float) -> None:
        from tqdm import tqdm

        self.total = minutes * 60.0
        self.bar = tqdm(
            total=round(self.total),
            desc="recover",
            unit="s",
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",
        )

    def __call__(self, step: int, loss: float, elapsed: float) -> None:
        self.bar.n = min(round(elapsed), self.bar.total)
        self.bar.set_postfix_str(f"step {step}, loss {loss:.4f}")

    def close(self) -> None:
        self.bar.n = self.bar.total
        self.bar.close()


class Quality:
    """Held-out quality. Decoders: perplexity on the first tokens of the eval play (lower is
    better). Encoders: mean cosine of sentence embeddings of its lines to ``model``'s, the
    ``reference`` model (named so in the metric)."""

    def __init__(
        self, model: Any, text: str, tokens: int, play: str, reference: str = "unpruned"
    ) -> None:
        from headcount import Decoder
        from headcount.prune import sentence_pairs

        self.decoder = isinstance(model, Decoder)
        if self.decoder:
            from headcount.cli.importance import encode_prefix

            self.ids = encode_prefix(model.tokenizer, text, tokens)
            self.window = min(EVAL_WINDOW, model.max_len)
            self.name = f"perplexity on {len(self.ids):,} tokens of {play} (lower is better)"
        else:
            lines, used = [], 0
            for line, _ in sentence_pairs(text):
                if used >= tokens:
                    break
                lines.append(line)
                used += len(model.tokenizer.encode(line))
            self.lines = lines
            self.reference = model.embed(lines)  # (N, C) of the unpruned model
            self.name = (
                f"embedding cosine to the {reference} model on {len(lines)} lines of {play} "
                "(higher is better)"
            )

    def __call__(self, model: Any, bars: Any, stage: str) -> float:
        from headcount import perplexity
        from headcount.prune import embedding_cosine

        if self.decoder:
            return perplexity(
                model,
                self.ids,
                window=self.window,
                stride=self.window,
                progress=lambda d, n: bars(stage, d, n),
            ).perplexity
        return embedding_cosine(model, self.reference, self.lines)


def run(args: argparse.Namespace) -> int:
    import torch

    from headcount import load
    from headcount.cli.analyze import Bars
    from headcount.cli.convert import on_main
    from headcount.cli.importance import objective_for, read_text, text_name
    from headcount.distributed import World
    from headcount.loaders.registry import resolve
    from headcount.loaders.saved import META
    from headcount.prune import check_fraction, recover, remove_heads, schedule
    from headcount.report.pruning import prune_report, summary_lines, write_pruned
    from headcount.report.write import check_apart, prepare_target

    check_args(args)
    world = getattr(args, "world", None) or World()  # torchrun: every rank recovers, rank 0 writes
    out = args.output.expanduser().absolute()
    check_apart(out, resolve(args.model))
    if out.exists():  # fail fast on an occupied folder (creates nothing)
        on_main(
            world, lambda: prepare_target(out, force=args.force, marker=META, what="saved model")
        )
    text = read_text(args)
    eval_text = read_text(args, play=args.eval_play)
    if world.is_main:
        print(f"loading {args.model} ...", file=sys.stderr)
    # dense float32: training needs it, and the result is saved dequantised anyway
    model = load(args.model, dtype=torch.float32)
    for source in (model.source, model.tokenizer.source if model.has_tokenizer else ""):
        if source:
            check_apart(out, source)
    check_fraction(model, args.fraction, args.unit)
    objective = objective_for(model, text, args.tokens, args.window, gates=args.by == "gates")
    on_main(world, lambda: prepare_target(out, force=args.force, marker=META, what="saved model"))

    def ranking(progress: Any) -> Any:
        return schedule(
            model,
            objective,
            [args.fraction],
            method=args.by,
            unit=args.unit,
            step=args.step,
            seed=args.seed,
            lam=args.lam,
            gate_steps=args.gate_steps,
            progress=progress,
        )

    if not world.is_main:  # the same ranking on every rank; recovery data-parallel
        pruned = remove_heads(model, ranking(None).masks[float(args.fraction)])
        if args.recover_minutes is not None:
            recover(
                pruned, model, objective, minutes=args.recover_minutes, seed=args.seed, world=world
            )
        return 0
    quality = Quality(model, eval_text, args.eval_tokens, args.eval_play)

    t0 = time.perf_counter()
    bars = Bars()
    rec_bar = None
    try:
        full_q = quality(model, bars, "eval full")
        sched = ranking(bars)
        keep = sched.masks[float(args.fraction)]
        pruned = remove_heads(model, keep)
        pruned_q = quality(pruned, bars, "eval pruned")
        recovery, recovered_q = None, None
        if args.recover_minutes is not None:
            rec_bar = RecoveryBar(args.recover_minutes)
            recovery = recover(
                pruned,
                model,
                objective,
                minutes=args.recover_minutes,
                seed=args.seed,
                progress=rec_bar,
                world=world,
            )
            rec_bar.close()
            recovered_q = quality(pruned, bars, "eval recovered")
    finally:
        bars.close()
        if rec_bar is not None:
            rec_bar.bar.close()

    scores, scores_name = None, ""
    if sched.importance is not None:
        scores, scores_name = sched.importance.heads, "importance"
    elif sched.gates is not None:
        scores, scores_name = sched.gates.scores, "gate log-alpha"
    report = prune_report(
        model,
        pruned,
        keep,
        model=str(args.model),
        method=args.by,
        unit=args.unit,
        fraction=float(args.fraction),
        metric=quality.name,
        quality={"full": full_q, "pruned": pruned_q, "recovered": recovered_q},
        recovery=recovery,
        recovery_minutes=args.recover_minutes,
        scores=scores,
        scores_name=scores_name,
        meta={
            k: v
            for k, v in {
                "text": text_name(args),
                "tokens": objective.n_tokens,
                "objective": objective.name,
                "window": args.window if quality.decoder else None,
                "step": args.step if args.by == "iterative" else None,
                "lam": args.lam if args.by == "gates" else None,
                "gate_steps": args.gate_steps if args.by == "gates" else None,
                "seed": args.seed,
                "eval_play": args.eval_play,
                "seconds": round(time.perf_counter() - t0, 1),
            }.items()
            if v is not None
        },
    )
    folder = write_pruned(pruned, report, out, force=args.force)
    print("\n".join(summary_lines(report)))
    print(f"pruned model: {folder}  (headcount.load({str(folder)!r}))")
    print(f"report: {folder / 'report' / 'index.html'}")
    return 0
