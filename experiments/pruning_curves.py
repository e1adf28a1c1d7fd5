"""Quality against the fraction of heads pruned, for every pruning order, on held-out text.

Score (importance, gates, recovery) on one play, evaluate on another:

* decoders (SmolLM2): perplexity on ``--eval-tokens`` tokens of ``--eval-play`` (windows of 512),
* encoders (MiniLM): mean cosine of the sentence embeddings of the eval play's lines to the
  unpruned model's.

Every point is written to ``--out`` (JSON, atomically) as soon as it is measured, and a rerun
skips the points already there, so the script can be stopped and resumed. ``--plot`` draws the
curves to a PNG beside the JSON.

    python experiments/pruning_curves.py --model smollm2 --methods importance,iterative,gates,random
    python experiments/pruning_curves.py --model smollm2 --unit group --methods importance,random
    python experiments/pruning_curves.py --model smollm2 --recover importance:0.3:15
    python experiments/pruning_curves.py --model minilm --methods importance,iterative,gates,random
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import Results, log, play

import headcount
from headcount.prune import (
    Contrastive,
    EmbeddingDistillation,
    LanguageModeling,
    apply_mask,
    embedding_cosine,
    recover,
    remove_heads,
    schedule,
    sentence_pairs,
)
from headcount.prune.masks import kept_groups

FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def kv_bytes_per_token(model: Any, keep: list[torch.Tensor]) -> int:
    """KV-cache bytes per token in fp16 for the groups ``keep`` leaves."""
    D = model.config.head_dim
    groups = sum(
        int(kept_groups(a, m).sum()) for a, m in zip(model.attention_layers(), keep, strict=True)
    )
    return groups * 2 * D * 2


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--score-play", default="othello")
    ap.add_argument("--score-tokens", type=int, default=4096)
    ap.add_argument("--eval-play", default="macbeth")
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512, help="importance/gate window (tokens)")
    ap.add_argument("--methods", default="importance,iterative,gates,random")
    ap.add_argument("--unit", default="head", choices=("head", "group"))
    ap.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    ap.add_argument("--seeds", default="0,1,2", help="random-order seeds")
    ap.add_argument("--lam", type=float, default=0.01, help="L0 weight of the gates")
    ap.add_argument("--gate-steps", type=int, default=120)
    ap.add_argument("--gate-window", type=int, default=256)
    ap.add_argument(
        "--recover",
        action="append",
        default=[],
        help="METHOD:FRACTION:MINUTES - recover that point by distillation (repeatable)",
    )
    ap.add_argument("--recover-lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path(__file__).parent / "results" / f"pruning_{args.model}_{args.unit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = Results(out)
    fractions = [float(f) for f in args.fractions.split(",")]

    model = headcount.load(args.model, dtype=torch.float32)
    tok = model.tokenizer
    decoder = isinstance(model, headcount.Decoder)
    t0 = time.perf_counter()
    if decoder:
        ids = tok.encode(play(args.score_play))[: args.score_tokens]
        eval_ids = tok.encode(play(args.eval_play))[: args.eval_tokens]
        objective = LanguageModeling(ids, window=args.window)
        gate_obj = LanguageModeling(ids, window=args.gate_window, batch_size=1)

        def metric(m: Any) -> float:
            return headcount.perplexity(m, eval_ids).perplexity

        metric_name = f"perplexity, {len(eval_ids)} tokens of {args.eval_play}"
    else:
        pairs = sentence_pairs(play(args.score_play))[: args.score_tokens // 16]
        objective = Contrastive(model, pairs, batch_size=16)
        # gates train on keeping the embeddings (stochastic gates make that loss non-zero)
        gate_obj = EmbeddingDistillation(model, [a for a, _ in pairs], batch_size=16)
        sentences = [a for a, _ in sentence_pairs(play(args.eval_play))][:512]
        ref = model.embed(sentences)

        def metric(m: Any) -> float:
            return embedding_cosine(m, ref, sentences)

        metric_name = (
            f"embedding cosine to the unpruned model, {len(sentences)} lines of {args.eval_play}"
        )
    res.put(
        "meta",
        {
            "model": args.model,
            "unit": args.unit,
            "metric": metric_name,
            "score": f"{objective.n_tokens} tokens of {args.score_play}",
            "objective": objective.name,
            "threads": args.threads,
            "command": " ".join(sys.argv),
        },
    )
    if not res.has("full"):
        res.put("full", metric(model))
    log(f"full model: {res.data['full']:.4f} ({metric_name})")

    def run(method: str, seed: int = 0) -> None:
        key = f"{method}" if method != "random" else f"random/{seed}"
        todo = [f for f in fractions if not res.has(f"{key}@{f}")]
        if not todo:
            return
        ts = time.perf_counter()
        sched = schedule(
            model,
            gate_obj if method == "gates" else objective,
            todo,
            method=method,  # type: ignore[arg-type]
            unit=args.unit,
            seed=seed,
            lam=args.lam,
            gate_steps=args.gate_steps,
            progress=lambda stage, d, n: (
                log(f"{key}: {stage} {d}/{n}") if d == n or d % 20 == 0 else None
            ),
        )
        log(f"{key}: schedule in {time.perf_counter() - ts:.0f} s")
        if sched.importance is not None and not res.has(f"{key}/importance"):
            res.put(f"{key}/importance", [h.tolist() for h in sched.importance.heads])
        for f in todo:
            keep = sched.masks[f]
            apply_mask(model, keep)
            value = metric(model)
            apply_mask(model, None)
            point = {
                "value": value,
                "heads": int(sum(int(m.sum()) for m in keep)),
                "kv_bytes_per_token": kv_bytes_per_token(model, keep),
                "schedule_seconds": time.perf_counter() - ts,
                "keep": [m.int().tolist() for m in keep],
            }
            res.put(f"{key}@{f}", point)
            log(f"{key} @ {f:.1f}: {value:.4f} ({point['heads']} heads)")

    for method in args.methods.split(","):
        if not method:
            continue
        if method == "random":
            for s in (int(x) for x in args.seeds.split(",")):
                run("random", s)
        else:
            run(method)

    for spec in args.recover:
        method, frac, minutes = spec.split(":")
        key = f"{method}+recover{minutes}m@{float(frac)}"
        if res.has(key):
            continue
        keep = [
            torch.tensor(k, dtype=torch.bool) for k in res.data[f"{method}@{float(frac)}"]["keep"]
        ]
        student = remove_heads(model, keep)
        before = metric(student)
        rec = recover(
            student,
            model,
            objective,
            minutes=float(minutes),
            lr=args.recover_lr,
            progress=lambda s, loss, el, key=key: (
                log(f"recover {key}: step {s} loss {loss:.4f} {el:.0f}s") if s % 10 == 0 else None
            ),
        )
        after = metric(student)
        res.put(
            key,
            {
                "before": before,
                "value": after,
                "steps": rec.steps,
                "tokens": rec.tokens,
                "seconds": rec.seconds,
                "losses": rec.losses,
                "params": sum(p.numel() for p in student.parameters()),
                "params_full": sum(p.numel() for p in model.parameters()),
            },
        )
        log(
            f"{key}: {before:.3f} -> {after:.3f} in {rec.seconds / 60:.1f} min, {rec.tokens} tokens"
        )
    log(f"done in {time.perf_counter() - t0:.0f} s -> {out}")
    if args.plot:
        from plot_pruning import plot

        plot(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
