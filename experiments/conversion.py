"""MHA -> GQA -> MQA conversion on real checkpoints: quality before and after uptraining, and the
quality / memory / speed trade-off (issue 9).

Text: training and calibration on the calibration plays (Shakespeare minus hamlet, macbeth,
tempest); quality on the held-out ``--eval-play`` (default macbeth), never trained on:

* decoders (SmolLM2): perplexity on the first ``--eval-tokens`` tokens, windows of 512;
* encoders (MiniLM): mean cosine of the sentence embeddings of the play's first 512 lines to
  the original model's (higher is better; 1.0 = unchanged).

Stages (each point is written to ``--out`` JSON atomically as soon as it is measured; a rerun
skips what is there, and an interrupted uptraining run resumes from its checkpoint under
``experiments/results/ckpt/``):

    python experiments/conversion.py before  --model smollm2 --kv 1
    python experiments/conversion.py before  --model minilm --kv 6,4,3,2,1
    python experiments/conversion.py uptrain --model smollm2 --kv 1 --methods base,fit,mean,first,random
    python experiments/conversion.py uptrain --model minilm --kv 4 --methods fit,mean,first,random
    python experiments/conversion.py speed   --model smollm2 --kv 1
    python experiments/conversion.py report  --model smollm2     # Markdown tables + PNG

``base`` is the unconverted model trained with the same recipe on the same tokens (training on
Shakespeare lowers its held-out perplexity too, so it is the fair baseline).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import Results, log, play

import headcount
from headcount.convert import METHODS, convert, uptrain
from headcount.loaders.corpus import plays
from headcount.memory import kv_cache_bytes
from headcount.prune import Contrastive, LanguageModeling, embedding_cosine, sentence_pairs

RESULTS = Path(__file__).parent / "results"
EVAL_WINDOW = 512


class Setup:
    """The model, its training / calibration / evaluation text and the quality metric."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model = headcount.load(args.model, dtype=torch.float32)
        self.decoder = isinstance(self.model, headcount.Decoder)
        tok = self.model.tokenizer
        train_plays = [p for p in plays("calibration") if p != args.eval_play]
        self.train_text = "\n".join(play(p) for p in train_plays)
        self.calibration_text = play(args.calibration_play)
        eval_text = play(args.eval_play)
        if self.decoder:
            self.eval_ids = tok.encode(eval_text)[: args.eval_tokens]
            self.metric = (
                f"perplexity on {len(self.eval_ids):,} tokens of {args.eval_play} "
                f"(windows of {EVAL_WINDOW}; lower is better)"
            )
        else:
            self.sentences = [a for a, _ in sentence_pairs(eval_text)][:512]
            self.reference = self.model.embed(self.sentences)
            self.metric = (
                f"embedding cosine to the original on {len(self.sentences)} lines of "
                f"{args.eval_play} (higher is better)"
            )

    def quality(self, model: Any) -> float:
        was = model.training
        model.eval()
        try:
            if self.decoder:
                return headcount.perplexity(
                    model, self.eval_ids, window=EVAL_WINDOW, stride=EVAL_WINDOW
                ).perplexity
            return embedding_cosine(model, self.reference, self.sentences)
        finally:
            model.train(was)

    def calibration(self) -> Any:
        if self.decoder:
            return self.model.tokenizer.encode(self.calibration_text)[: self.args.calib_tokens]
        return self.calibration_text[: self.args.calib_tokens * 5]  # ~5 characters a token

    def converted(self, kv: list[int] | int, method: str) -> Any:
        if method == "base":
            return copy.deepcopy(self.model)
        return convert(
            self.model,
            kv,
            method,
            calibration=self.calibration(),
            seed=self.args.seed,  # type: ignore[arg-type]
        )


def kv_arg(text: str) -> list[int | list[int]]:
    """``"4,1"`` -> [4, 1]; ``"3/3/1"`` (one count per layer) -> [[3, 3, 1]]."""
    out: list[int | list[int]] = []
    for part in text.split(","):
        out.append([int(x) for x in part.split("/")] if "/" in part else int(part))
    return out


def kv_name(kv: int | list[int]) -> str:
    return "/".join(map(str, kv)) if isinstance(kv, list) else str(kv)


# ------------------------------------------------------------------------------------ stages
def before(s: Setup, res: Results) -> None:
    key = "original"
    if res.get(key) is None:
        res.put(key, {"quality": s.quality(s.model), "metric": s.metric})
    log(f"original: {res.get(key)['quality']:.4f}")
    for kv in kv_arg(s.args.kv):
        for method in s.args.methods.split(","):
            key = f"before/{kv_name(kv)}/{method}"
            if res.get(key) is not None:
                log(f"{key}: {res.get(key)['quality']:.4f} (stored)")
                continue
            t0 = time.perf_counter()
            model = s.converted(kv, method)
            seconds = time.perf_counter() - t0
            q = s.quality(model)
            res.put(key, {"quality": q, "convert_seconds": round(seconds, 2)})
            log(f"{key}: {q:.4f} ({seconds:.1f} s to convert)")


def uptrain_stage(s: Setup, res: Results) -> None:
    a = s.args
    checkpoints = sorted({int(x) for x in a.eval_at.split(",") if x} | {a.tokens})
    if s.decoder:
        ids = s.model.tokenizer.encode(s.train_text)
        data: Any = LanguageModeling(ids, window=a.window, batch_size=a.batch_size)
    else:
        data = Contrastive(s.model, sentence_pairs(s.train_text), batch_size=a.batch_size)
    log(f"training text: {data.n_tokens:,} tokens ({data.name})")
    for kv in kv_arg(a.kv):
        for method in a.methods.split(","):
            if method == "base" and res.get(f"uptrain/{a.recipe_key}/base/base") is not None:
                continue
            name = "base" if method == "base" else kv_name(kv)
            key = f"uptrain/{a.recipe_key}/{name}/{method}"
            done = res.get(key)
            if done is not None and done.get("finished"):
                log(f"{key}: {done['points'][-1]} (stored)")
                continue
            run_one(s, res, data, key, s.converted(kv, method), done, checkpoints)


def run_one(
    s: Setup, res: Results, data: Any, key: str, model: Any, done: Any, checkpoints: list[int]
) -> None:
    """Uptrain ``model`` on ``data``; its quality at the token counts of ``checkpoints``."""
    points: list[list[float]] = [] if done is None else done["points"]
    if not points:
        points.append([0, s.quality(model), 0.0])
        res.put(key, {"points": points, "finished": False})
    log(f"{key}: start {points[0][1]:.4f}")
    pending = [c for c in checkpoints if c > points[-1][0]]
    evals = {"seconds": 0.0}

    def progress(step: int, loss: float, tokens: int, elapsed: float) -> None:
        if pending and tokens >= pending[0]:
            while pending and tokens >= pending[0]:
                pending.pop(0)
            t0 = time.perf_counter()
            q = s.quality(model)
            evals["seconds"] += time.perf_counter() - t0
            points.append([tokens, q, round((elapsed - evals["seconds"]) / 60, 2)])
            res.put(key, {"points": points, "finished": False})
            log(f"{key}: step {step} tokens {tokens:,} loss {loss:.4f} quality {q:.4f}")
        elif step % 10 == 0:
            log(f"{key}: step {step} tokens {tokens:,} loss {loss:.4f}")

    ckpt = RESULTS / "ckpt" / key.replace("/", "_")
    r = uptrain(
        model,
        data,
        teacher=s.model,
        tokens=s.args.tokens,
        loss=s.args.loss,
        params=s.args.params,
        lr=s.args.lr,
        warmup=s.args.warmup,
        checkpoint_dir=ckpt,
        checkpoint_every=s.args.checkpoint_every,
        resume=(ckpt / "uptrain.pt").exists(),
        seed=s.args.seed,
        progress=progress,
    )
    if points[-1][0] < r.tokens:
        points.append([r.tokens, s.quality(model), round((r.seconds - evals["seconds"]) / 60, 2)])
    res.put(
        key,
        {
            "points": points,
            "finished": True,
            "steps": r.steps,
            "tokens": r.tokens,
            "minutes": round((r.seconds - evals["seconds"]) / 60, 2),  # without the evaluations
            "losses": r.losses,
            "recipe": {
                "loss": s.args.loss,
                "params": s.args.params,
                "lr": s.args.lr,
                "warmup": s.args.warmup,
                "batch": f"{s.args.batch_size}x{s.args.window}" if s.decoder else s.args.batch_size,
                "threads": torch.get_num_threads(),
            },
        },
    )
    log(f"{key}: done, {points[-1]}")


def speed(s: Setup, res: Results) -> None:
    """Decode tokens/s at ``--context`` positions and KV bytes, for each KV-head count."""
    from headcount.models.generation import Decoding

    a = s.args
    assert s.decoder, "decode speed needs a decoder"
    variants = {"orig": s.model} | {
        kv_name(kv): convert(s.model, kv, "mean") for kv in kv_arg(a.kv)
    }
    ids = s.model.tokenizer.encode(s.train_text)[: a.context]
    times: dict[str, dict[str, list[float]]] = {}
    for dtype in ("float32", "bfloat16"):
        ms = {k: m.to(getattr(torch, dtype)) for k, m in variants.items()}
        decoders = {}
        with torch.inference_mode():
            for k, m in ms.items():
                fd = Decoding(m, a.context + a.steps * a.rounds + 8)
                t0 = time.perf_counter()
                logits = fd.prefill(ids)
                log(f"{dtype} {k}: prefill {len(ids)} in {time.perf_counter() - t0:.1f} s")
                decoders[k] = (fd, int(logits.argmax()))
            for r in range(a.rounds):  # interleaved rounds: the machine's load hits all alike
                for k, (fd, tok) in decoders.items():
                    t0 = time.perf_counter()
                    for _ in range(a.steps):
                        tok = int(fd.step(tok).argmax())
                    dt = (time.perf_counter() - t0) / a.steps
                    decoders[k] = (fd, tok)
                    times.setdefault(dtype, {}).setdefault(k, []).append(dt)
                log(
                    f"{dtype} round {r}: "
                    + ", ".join(f"{k} {1 / times[dtype][k][-1]:.1f} tok/s" for k in decoders)
                )
        for m in variants.values():
            m.float()
    rows = {}
    for k, m in variants.items():
        layers = m.attention_layers()
        D = m.config.head_dim
        per_token = sum(kv_cache_bytes(1, x.n_kv_heads, D, 1, dtype="float16") for x in layers)
        at_8k = sum(kv_cache_bytes(1, x.n_kv_heads, D, 8192, dtype="float16") for x in layers)
        allocated = m.half().new_cache(1, 8192).nbytes
        m.float()
        rows[k] = {
            "kv_heads": sorted({x.n_kv_heads for x in layers}),
            "params": sum(p.numel() for p in m.parameters()),
            "kv_bytes_per_token_fp16": per_token,
            "kv_bytes_8k_fp16": at_8k,
            "kv_bytes_8k_allocated": allocated,
            "decode_tok_s": {d: 1 / min(t[k]) for d, t in times.items()},
            "decode_tok_s_median": {d: 1 / sorted(t[k])[len(t[k]) // 2] for d, t in times.items()},
        }
        log(f"{k}: {rows[k]}")
    res.put(f"speed/{a.context}", {"rows": rows, "threads": torch.get_num_threads()})


# ------------------------------------------------------------------------------------ report
def report(res: Results, model: str) -> None:
    d = res.data
    orig = d["original"]["quality"]
    fmt = "{:,.1f}" if model != "minilm" else "{:.4f}"
    print(f"### {model}: before uptraining ({d['original']['metric']})\n")
    print(f"original: {fmt.format(orig)}\n")
    kvs = sorted(
        {k.split("/")[1] for k in d if k.startswith("before/")}, key=lambda x: -int(x.split("/")[0])
    )
    methods = [m for m in METHODS if any(k.endswith("/" + m) for k in d if k.startswith("before/"))]
    print("| KV heads | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for kv in kvs:
        cells = [d.get(f"before/{kv}/{m}") for m in methods]
        print(
            f"| {kv} | "
            + " | ".join("—" if c is None else fmt.format(c["quality"]) for c in cells)
            + " |"
        )
    runs = {k: v for k, v in d.items() if k.startswith("uptrain/")}
    if runs:
        print(f"\n### {model}: uptraining\n")
        print("| recipe | KV heads | method | tokens | minutes | before | after | after / base |")
        print("|---|---|---|---|---|---|---|---|")
        for k, v in sorted(runs.items()):
            _, recipe, kv, method = k.split("/")
            base = d.get(f"uptrain/{recipe}/base/base")
            tokens, after, minutes = v["points"][-1]
            ratio = (
                "—"
                if base is None or model == "minilm"
                else f"{after / base['points'][-1][1]:.2f}×"
            )
            note = "" if v.get("finished") else " (stopped)"
            print(
                f"| {recipe} | {kv} | {method} | {tokens:,}{note} | {minutes} | "
                f"{fmt.format(v['points'][0][1])} | {fmt.format(after)} | {ratio} |"
            )
        plot(runs, model, orig)
    tradeoff(d, model, kvs, fmt)


def tradeoff(d: dict[str, Any], name: str, kvs: list[str], fmt: str) -> None:
    """One row per KV-head count: memory, parameters, quality before / after, decode speed."""
    model = headcount.load(name, dtype=torch.float32)
    speed = next((v for k, v in d.items() if k.startswith("speed/")), None)
    ctx = next((k.split("/")[1] for k in d if k.startswith("speed/")), "")
    H = sorted({a.n_heads for a in model.attention_layers()})
    rows = []
    for kv in [None, *kvs]:
        m = model if kv is None else convert(model, kv_arg(kv)[0], "mean")
        layers = m.attention_layers()
        D = m.config.head_dim
        per_tok = sum(kv_cache_bytes(1, a.n_kv_heads, D, 1, dtype="float16") for a in layers)
        at_8k = sum(kv_cache_bytes(1, a.n_kv_heads, D, 8192, dtype="float16") for a in layers)
        S = min(8192, m.max_len)  # allocated cache at 8K, or at the model's whole context
        alloc = m.half().new_cache(1, S).nbytes
        at_s = sum(kv_cache_bytes(1, a.n_kv_heads, D, S, dtype="float16") for a in layers)
        G = sorted({a.n_kv_heads for a in layers})
        key = "orig" if kv is None else kv
        after = {
            meth: max(
                (
                    v
                    for k, v in d.items()
                    if k.startswith("uptrain/") and k.endswith(f"/{kv}/{meth}")
                ),
                key=lambda v: v["points"][-1][0],
                default=None,
            )
            for meth in ("fit", "mean")
        }
        if kv is None:
            base = max(
                (v for k, v in d.items() if k.endswith("/base/base")),
                key=lambda v: v["points"][-1][0],
                default=None,
            )
            after = {"base": base}
        sp = None if speed is None else speed["rows"].get(key)
        rows.append(
            {
                "variant": ("original " if kv is None else "")
                + ("MHA" if G == H else "MQA" if G == [1] else "GQA")
                + f"-{'/'.join(map(str, G))}",
                "kv_heads": "/".join(map(str, G)),
                "per_tok": per_tok,
                "at_8k": at_8k,
                "alloc": alloc,
                "at_s": at_s,
                "S": S,
                "params": sum(p.numel() for p in m.parameters()),
                "before": d["original"]["quality"]
                if kv is None
                else {mm: d.get(f"before/{kv}/{mm}", {}).get("quality") for mm in ("fit", "mean")},
                "after": {
                    k2: (v["points"][-1][1], v["points"][-1][0]) for k2, v in after.items() if v
                },
                "tok_s": None if sp is None else sp["decode_tok_s"],
            }
        )
    print(f"\n### {name}: the trade-off (KV cache in fp16; decode at {ctx or '—'} tokens)\n")
    print(
        "| variant | KV bytes / token | KV at 8K | allocated cache = computed | parameters | "
        "before uptraining (fit / mean) | after uptraining | decode tok/s fp32 / bf16 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        before = (
            fmt.format(r["before"])
            if not isinstance(r["before"], dict)
            else " / ".join("—" if v is None else fmt.format(v) for v in r["before"].values())
        )
        after = "; ".join(
            f"{k}: {fmt.format(q)} ({t // 1000}K tok)" for k, (q, t) in r["after"].items()
        )
        same = "✓" if r["at_s"] == r["alloc"] else f"✗ ({r['alloc']:,} allocated)"
        tok = (
            "—"
            if r["tok_s"] is None
            else f"{r['tok_s']['float32']:.1f} / {r['tok_s']['bfloat16']:.1f}"
        )
        print(
            f"| {r['variant']} | {r['per_tok']:,} | {r['at_8k'] / 2**20:.1f} MiB | "
            f"{same} at {r['S']:,} | {r['params'] / 1e6:.2f} M | {before} | {after or '—'} | {tok} |"
        )
    plot_tradeoff(rows, name)


def plot_tradeoff(rows: list[dict[str, Any]], name: str) -> None:
    """Quality against KV-cache bytes per token: before and after uptraining, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    orig = rows[0]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows[1:]:
        for meth, q in r["before"].items():
            if q is not None:
                series.setdefault(f"{meth}, before uptraining", []).append((r["per_tok"], q))
        for meth, (q, t) in r["after"].items():
            series.setdefault(f"{meth}, after {t // 1000}K tokens", []).append((r["per_tok"], q))
    for label, pts in sorted(series.items()):
        pts.sort()
        ls = "--" if "before" in label else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", ms=4, label=label)
    ax.scatter([orig["per_tok"]], [orig["before"]], color="black", zorder=5, label=orig["variant"])
    for r in rows:
        ax.annotate(
            r["variant"].split()[-1],
            (r["per_tok"], ax.get_ylim()[0]),
            fontsize=7,
            rotation=90,
            va="bottom",
            ha="right",
            color="grey",
        )
    if name != "minilm":
        ax.set_yscale("log")
    ax.set_xlabel("KV-cache bytes per token (fp16)")
    ax.set_ylabel("held-out perplexity" if name != "minilm" else "embedding cosine to original")
    ax.set_title(f"{name}: quality against KV-cache size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = RESULTS / f"conversion_{name}_tradeoff.png"
    fig.savefig(out, dpi=110)
    print(f"\n![{name} trade-off]({out.relative_to(Path(__file__).parent.parent)})")


def plot(runs: dict[str, Any], model: str, orig: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, v in sorted(runs.items()):
        xs = [p[0] / 1000 for p in v["points"]]
        ys = [p[1] for p in v["points"]]
        _, recipe, kv, method = k.split("/")
        what = "unconverted, same training" if method == "base" else f"{kv} KV, {method}"
        ax.plot(xs, ys, marker="o", ms=3, label=f"{what} ({recipe.rsplit('-', 1)[1]} budget)")
    ax.axhline(orig, color="grey", ls=":", label="original, untrained")
    if model != "minilm":
        ax.set_yscale("log")
    ax.set_xlabel("uptraining tokens (thousands)")
    ax.set_ylabel("held-out perplexity" if model != "minilm" else "embedding cosine to original")
    ax.set_title(f"{model}: converted models during uptraining")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / f"conversion_{model}.png"
    fig.savefig(out, dpi=110)
    print(f"\n![{model}]({out.relative_to(Path(__file__).parent.parent)})")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("stage", choices=("before", "uptrain", "speed", "report"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument(
        "--kv", default="1", help="target KV heads, comma-separated ('3/3/1': per layer)"
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--eval-play", default="macbeth")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--calibration-play", default="othello", help="text of the 'fit' method")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--tokens", type=int, default=100_000, help="uptraining budget")
    ap.add_argument("--eval-at", default="10000,25000,50000")
    ap.add_argument("--loss", default="kl+ce")
    ap.add_argument("--params", default="attention")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--checkpoint-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=4096, help="speed: decode at this context")
    ap.add_argument("--steps", type=int, default=16, help="speed: decode steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.recipe_key = f"{args.loss}-{args.params}-lr{args.lr:g}-{args.tokens // 1000}k"
    out = args.out or RESULTS / f"conversion_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = Results(out)
    if args.stage == "report":
        report(res, args.model)
        return 0
    log(f"{args.stage} {args.model}: torch {torch.__version__}, {args.threads} threads")
    s = Setup(args)
    {"before": before, "uptrain": uptrain_stage, "speed": speed}[args.stage](s, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
