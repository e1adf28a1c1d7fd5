"""`headcount convert`: give a model fewer KV heads (MHA -> GQA -> MQA), optionally uptrain it by
distillation toward the original, measure held-out quality before and after, and save the
converted checkpoint with its report.

Uptraining checkpoints go to ``DIR.uptrain/`` beside the output folder ``DIR``: ``uptrain.pt``
(written atomically every ``--checkpoint-every`` steps by `headcount.uptrain`) and
``convert-run.json`` (the arguments that shape the run, which ``--resume`` must repeat). Ctrl-C
keeps the last checkpoint; the same command with ``--resume`` continues it to the weights an
uninterrupted run reaches. ``DIR`` itself is written atomically at the end, and ``DIR.uptrain/``
is then removed.

Under ``torchrun --nproc-per-node N -m headcount convert ...`` every rank loads and converts the
model, uptraining is data-parallel (`headcount.distributed.data_parallel`: the same global batches
and weights as one process) with a sharded checkpoint ``DIR.uptrain/uptrain.dcp/`` that any number
of processes resumes; rank 0 alone evaluates, prints, shows progress and writes ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from headcount.cli.importance import add_text_options
from headcount.cli.prune import add_eval_options

DEFAULT_TOKENS = 131_072  # text tokens read for uptraining (and, with --method fit, calibration)
DEFAULT_FIT_TOKENS = 4096
DEFAULT_CHECKPOINT_EVERY = 50
RUN_FILE = "convert-run.json"
INTERRUPTED = 130  # what `headcount` returns on Ctrl-C (cli.main)


def register(sub: argparse._SubParsersAction) -> None:
    from headcount.convert import METHODS
    from headcount.prune.training import LOSSES

    p = sub.add_parser(
        "convert",
        help="MHA -> GQA -> MQA: fewer KV heads, optional uptraining, saved with a report",
        description="Give every layer of MODEL N KV heads (contiguous query heads share one; a "
        "comma-separated list gives one count per layer), optionally uptrain the result by "
        "distillation toward MODEL on the text (Shakespeare's calibration plays by default), "
        "evaluate on a held-out play (decoders: perplexity; encoders: embedding cosine to "
        "MODEL) and write DIR: a saved model that headcount.load and every headcount command "
        "read, with DIR/report/ (convert.json, the loss curve, index.html). Uptraining "
        "checkpoints go to DIR.uptrain/ beside it; after Ctrl-C, the same command with --resume "
        "continues the run.",
    )
    p.add_argument("model", help="model name or path, e.g. smollm2")
    p.add_argument(
        "--kv-heads",
        required=True,
        metavar="N|N,N,...",
        help="KV heads per layer: one count for every layer, or one per layer (each divides "
        "that layer's query heads; 1 = MQA)",
    )
    p.add_argument(
        "--method",
        default="mean",
        metavar="|".join(METHODS),
        help="initial shared K/V heads: the mean of the group's heads (default, Ainslie et al. "
        "2023), its first head, random, or fit (least-squares fit on the text's activations)",
    )
    p.add_argument(
        "--uptrain-minutes", type=float, metavar="M", help="uptrain for M minutes after converting"
    )
    p.add_argument(
        "--uptrain-tokens", type=int, metavar="N", help="uptrain on N tokens after converting"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted uptraining whose checkpoint is in DIR.uptrain/ (repeat "
        "the run's other options)",
    )
    add_text_options(p, tokens=DEFAULT_TOKENS)
    p.add_argument(
        "--fit-tokens",
        type=int,
        default=DEFAULT_FIT_TOKENS,
        metavar="N",
        help=f"--method fit: calibration tokens, the text's first (default {DEFAULT_FIT_TOKENS})",
    )
    p.add_argument(
        "--loss",
        default="kl",
        metavar="|".join(LOSSES),
        help="uptraining loss: distillation toward MODEL (kl, the default; encoders: 1 - cosine "
        "of the embeddings), the text's own loss (ce), both (kl+ce), every layer's hidden state "
        "of every token toward MODEL's (hidden; the strongest signal for encoders), or kl+hidden",
    )
    p.add_argument(
        "--params",
        default="all",
        metavar="all|attention",
        help="weights that uptraining changes (default all)",
    )
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW peak learning rate (3e-4)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps (default 10)")
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="examples per batch (default: 4 windows for decoders, 16 line pairs for encoders)",
    )
    p.add_argument(
        "--grad-accum", type=int, default=1, help="batches per optimizer step (default 1)"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help=f"optimizer steps between checkpoints (default {DEFAULT_CHECKPOINT_EVERY})",
    )
    p.add_argument("--seed", type=int, default=0, help="random init, batch order (default 0)")
    add_eval_options(p, "training")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder of the converted model")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier saved model in that folder (and start an uptraining afresh "
        "over an earlier run's checkpoint)",
    )
    p.set_defaults(func=run)


def parse_kv_heads(spec: str) -> int | list[int]:
    """``"2"`` -> 2, ``"3,3,1"`` -> [3, 3, 1]; `UsageError` for anything else."""
    from headcount.cli.main import UsageError

    parts = [s.strip() for s in spec.split(",")]
    try:
        counts = [int(s) for s in parts]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise UsageError(
            f"--kv-heads must be a positive integer or one per layer (e.g. 3,3,1), got {spec!r}"
        )
    return counts[0] if len(counts) == 1 and "," not in spec else counts


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before loading anything; `UsageError` otherwise."""
    from headcount.cli.importance import check_text_options
    from headcount.cli.main import UsageError
    from headcount.cli.prune import check_eval_play
    from headcount.convert import METHODS
    from headcount.prune.training import LOSSES

    parse_kv_heads(args.kv_heads)
    if args.method not in METHODS:
        raise UsageError(f"unknown --method {args.method!r}; choose from {', '.join(METHODS)}")
    if args.uptrain_minutes is not None and args.uptrain_tokens is not None:
        raise UsageError("give --uptrain-minutes or --uptrain-tokens, not both")
    if args.uptrain_minutes is not None and not (
        args.uptrain_minutes > 0 and math.isfinite(args.uptrain_minutes)
    ):
        raise UsageError(f"--uptrain-minutes must be > 0, got {args.uptrain_minutes}")
    if args.uptrain_tokens is not None and args.uptrain_tokens <= 0:
        raise UsageError(f"--uptrain-tokens must be > 0, got {args.uptrain_tokens}")
    if args.resume and not uptraining(args):
        raise UsageError(
            "--resume continues an uptraining run: repeat its --uptrain-minutes or --uptrain-tokens"
        )
    if args.loss not in LOSSES:
        raise UsageError(f"unknown --loss {args.loss!r}; choose from {', '.join(LOSSES)}")
    if args.params not in ("all", "attention"):
        raise UsageError(f"unknown --params {args.params!r}; choose from all, attention")
    if not args.lr > 0 or args.warmup < 0:
        raise UsageError(f"--lr must be > 0 and --warmup >= 0, got {args.lr} and {args.warmup}")
    for flag, value in (
        ("--batch-size", args.batch_size or 1),
        ("--grad-accum", args.grad_accum),
        ("--checkpoint-every", args.checkpoint_every),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.fit_tokens < 2 or args.eval_tokens < 2:
        raise UsageError(
            f"--fit-tokens and --eval-tokens must be >= 2, got {args.fit_tokens} and "
            f"{args.eval_tokens}"
        )
    check_text_options(args)
    check_eval_play(args, "training")


def uptraining(args: argparse.Namespace) -> bool:
    return args.uptrain_minutes is not None or args.uptrain_tokens is not None


class Checkpoints:
    """``DIR.uptrain/``: the uptraining checkpoint of the run that writes ``DIR``, and the record
    of the arguments that shaped it (a checkpoint from other arguments is not continued)."""

    def __init__(self, out: Path) -> None:
        from headcount.prune.training import CHECKPOINT

        self.folder = out.with_name(out.name + ".uptrain")
        self.checkpoint = self.folder / CHECKPOINT
        self.record = self.folder / RUN_FILE

    def exists(self) -> bool:
        """A checkpoint to resume: the one-process file or a sharded one (torchrun)."""
        from headcount.distributed import checkpoint as sharded

        return self.checkpoint.is_file() or sharded.find(self.folder) is not None

    def prepare(self, run: dict[str, Any], *, resume: bool, force: bool) -> None:
        """Check the folder against what was asked: a checkpoint to continue (``resume``, from
        the same ``run``), or none in the way of a new run (``force`` deletes an earlier one).
        Writes nothing but the deletions of ``force``."""
        from headcount.cli.main import UsageError
        from headcount.errors import CheckpointError

        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.folder} exists and is not a folder; it holds checkpoints")
        from headcount.distributed import checkpoint as sharded

        ours = {self.checkpoint.name, self.record.name, *sharded.names()}
        others = sorted(
            p.name
            for p in (self.folder.iterdir() if self.folder.is_dir() else [])
            if p.name not in ours and not p.name.startswith(f".{self.checkpoint.name}.tmp-")
        )
        if others:
            raise UsageError(
                f"{self.folder} holds files that are not a headcount uptraining checkpoint "
                f"({', '.join(others[:3])}); move them or choose another output folder"
            )
        if resume:
            if not self.exists():
                raise UsageError(
                    f"--resume: no uptraining checkpoint in {self.folder}; run without --resume "
                    "to start one"
                )
            try:
                then = json.loads(self.record.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CheckpointError(
                    f"{self.checkpoint} has no readable record of its run ({self.record}: {exc})"
                ) from exc
            differ = sorted(k for k in set(then) | set(run) if then.get(k) != run.get(k))
            if differ:
                detail = "; ".join(f"{k}: {then.get(k)!r} then, {run.get(k)!r} now" for k in differ)
                raise CheckpointError(
                    f"{self.checkpoint} was written by a different run ({detail}); repeat that "
                    "run's options to resume it, or start afresh with --force"
                )
        elif self.exists():
            if not force:
                raise UsageError(
                    f"{self.folder} holds the uptraining checkpoint of an earlier run; pass "
                    "--resume to continue it, or --force to start afresh"
                )
            self.remove()

    def start(self, run: dict[str, Any]) -> None:
        """Write the run's record (atomically) before its first checkpoint."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(f".{self.record.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.record)

    def remove(self) -> None:
        """Delete the checkpoint, the record and the folder (once the result is saved)."""
        from headcount.distributed import checkpoint as sharded

        for path in (self.checkpoint, self.record):
            path.unlink(missing_ok=True)
        sharded.remove(self.folder)
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


class UptrainBar:
    """A tqdm bar over the uptraining budget (tokens or minutes), with the step, the loss, the
    tokens per second of this run and the time left."""

    def __init__(self, tokens: int | None, minutes: float | None) -> None:
        from tqdm import tqdm

        self.format_interval = tqdm.format_interval
        self.seconds = None if minutes is None else minutes * 60.0
        self.bar = tqdm(
            total=tokens if tokens is not None else round(self.seconds or 0),
            desc="uptrain",
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}{postfix}",
        )
        self.first: tuple[int, float] | None = None  # tokens and clock at the first step seen
        self.saved: int | None = None  # the step of the last checkpoint this run wrote

    def __call__(self, step: int, loss: float, tokens: int, elapsed: float) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (tokens, now)
        rate = (tokens - self.first[0]) / (now - self.first[1]) if now > self.first[1] else 0.0
        if self.seconds is not None:
            self.bar.n = min(round(elapsed), self.bar.total)
            eta: float | None = max(self.seconds - elapsed, 0.0)
        else:
            self.bar.n = min(tokens, self.bar.total)
            eta = max(self.bar.total - tokens, 0) / rate if rate > 0 else None
        speed = f"{rate:,.0f} tok/s" if rate > 0 else "? tok/s"
        left = "?" if eta is None else self.format_interval(eta)
        self.bar.set_postfix_str(f"step {step}, loss {loss:.4f}, {speed}, ETA {left}")

    def close(self) -> None:
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    import torch

    from headcount import Decoder, load
    from headcount.cli.analyze import Bars
    from headcount.cli.importance import encode_prefix, objective_for, read_text, text_name
    from headcount.cli.prune import Quality
    from headcount.convert import convert, uptrain
    from headcount.distributed import World
    from headcount.loaders.registry import resolve
    from headcount.loaders.saved import META
    from headcount.models.save import model_sources
    from headcount.report.conversion import convert_report, summary_lines, write_converted
    from headcount.report.write import check_apart, prepare_target

    check_args(args)
    world = getattr(args, "world", None) or World()  # under torchrun: rank 0 writes
    kv_heads = parse_kv_heads(args.kv_heads)
    out = args.output.expanduser().absolute()
    source = resolve(args.model)
    ckpt = Checkpoints(out)
    for folder in (out, ckpt.folder):
        check_apart(folder, source)
    if out.exists():  # fail fast on an occupied folder (creates nothing)
        on_main(
            world, lambda: prepare_target(out, force=args.force, marker=META, what="saved model")
        )
    budget = (
        {"tokens": args.uptrain_tokens}
        if args.uptrain_tokens is not None
        else {"minutes": args.uptrain_minutes}
    )
    training = {
        "budget": budget,
        "loss": args.loss,
        "params": args.params,
        "lr": args.lr,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "text": text_name(args),
        "text_tokens": args.tokens,
        "window": args.window,
    }
    record = {
        "model": str(source.resolve()),
        "kv_heads": kv_heads,
        "method": args.method,
        "seed": args.seed,
        "fit_tokens": args.fit_tokens if args.method == "fit" else None,
        "checkpoint_every": args.checkpoint_every,
        **training,
    }
    if uptraining(args):
        on_main(world, lambda: ckpt.prepare(record, resume=args.resume, force=args.force))
    text = read_text(args)
    eval_text = read_text(args, play=args.eval_play)
    if world.is_main:
        print(f"loading {args.model} ...", file=sys.stderr)
    # dense float32: training needs it, and the result is saved dequantised anyway
    model = load(args.model, dtype=torch.float32)
    for path in model_sources(model):
        for folder in (out, ckpt.folder):
            check_apart(folder, path)
    objective = None
    if uptraining(args):
        default_batch = 4 if isinstance(model, Decoder) else 16
        objective = objective_for(
            model, text, args.tokens, args.window, batch_size=args.batch_size or default_batch
        )
    t0 = time.perf_counter()
    calibration = (
        encode_prefix(model.tokenizer, text, args.fit_tokens) if args.method == "fit" else None
    )
    if world.is_main:
        print(f"converting ({args.method}) ...", file=sys.stderr)
    converted = convert(
        model,
        kv_heads,
        args.method,
        calibration=calibration,
        seed=args.seed,
        window=min(args.window, model.max_len),
    )
    on_main(world, lambda: prepare_target(out, force=args.force, marker=META, what="saved model"))
    if not world.is_main:  # the other ranks only train
        if objective is not None:
            world.barrier()  # rank 0 has evaluated and written the run's record
            uptrain(converted, objective, **uptrain_options(args, model, ckpt), world=world)
        return 0
    quality = Quality(model, eval_text, args.eval_tokens, args.eval_play, reference="original")

    bars = Bars()
    try:
        original_q = quality(model, bars, "eval original")
        converted_q = quality(converted, bars, "eval converted")
        result, uptrained_q = None, None
        if objective is not None:
            ckpt.start(record)
            world.barrier()
            bar = UptrainBar(args.uptrain_tokens, args.uptrain_minutes)
            try:
                result = uptrain(
                    converted,
                    objective,
                    **uptrain_options(args, model, ckpt),
                    progress=bar,
                    world=world,
                )
            except KeyboardInterrupt:
                bar.close()
                print(interrupted(ckpt), file=sys.stderr)
                return INTERRUPTED
            finally:
                bar.close()
            uptrained_q = quality(converted, bars, "eval uptrained")
    finally:
        bars.close()

    report = convert_report(
        model,
        converted,
        model=str(args.model),
        method=args.method,
        metric=quality.name,
        quality={"original": original_q, "converted": converted_q, "uptrained": uptrained_q},
        uptraining=result,
        training=training if result is not None else None,
        meta={
            k: v
            for k, v in {
                "seed": args.seed,
                "fit_tokens": args.fit_tokens if args.method == "fit" else None,
                "eval_play": args.eval_play,
                "eval_tokens": args.eval_tokens,
                "seconds": round(time.perf_counter() - t0, 1),
                "processes": world.size if world.distributed else None,
            }.items()
            if v is not None
        },
    )
    folder = write_converted(converted, report, out, force=args.force)
    if result is not None:
        ckpt.remove()
    print("\n".join(summary_lines(report)))
    print(f"converted model: {folder}  (headcount.load({str(folder)!r}))")
    print(f"report: {folder / 'report' / 'index.html'}")
    return 0


def uptrain_options(args: argparse.Namespace, teacher: Any, ckpt: Checkpoints) -> dict[str, Any]:
    """The keyword arguments of `headcount.uptrain` that the command line sets."""
    return dict(
        teacher=teacher,
        tokens=args.uptrain_tokens,
        minutes=args.uptrain_minutes,
        loss=args.loss,
        params=args.params,
        lr=args.lr,
        warmup=args.warmup,
        grad_accum=args.grad_accum,
        checkpoint_dir=ckpt.folder,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        seed=args.seed,
    )


def on_main(world: Any, fn: Any) -> None:
    """``fn`` (a check or preparation that raises `UsageError` or a `HeadcountError`) on rank 0
    only; its error is raised on every rank (`World.on_main`), so none waits for a rank 0 that
    stopped."""
    from headcount.cli.main import UsageError
    from headcount.errors import ConfigError

    def guarded() -> None:
        try:
            fn()
        except UsageError as exc:
            raise ConfigError(str(exc)) from exc

    if not world.distributed:
        fn()
        return
    world.on_main(guarded)


def interrupted(ckpt: Checkpoints) -> str:
    """The message for Ctrl-C during uptraining (a checkpoint-less folder is removed)."""
    if ckpt.exists():
        return (
            f"headcount convert: interrupted; the last uptraining checkpoint is kept in "
            f"{ckpt.folder}: run the same command with --resume to continue it"
        )
    ckpt.remove()
    return (
        "headcount convert: interrupted before the first uptraining checkpoint, so there is "
        "nothing to resume; run the command again (a lower --checkpoint-every saves sooner)"
    )
