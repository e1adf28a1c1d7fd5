"""`headcount analyze`: score every head of a model over text and write the report folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from headcount.cli.main import int_in

DEFAULT_TOKENS = 4096


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="what each attention head does: scores, roles, figures and an HTML report",
        description="Score every attention head over real text (previous-token, sink, induction, "
        "duplicate, rare-token, syntactic, ...) and write scores.csv, scores.json, figures/ and "
        "index.html into the output folder.",
    )
    p.add_argument(
        "model", nargs="?", default="smollm2", help="model name or path (default: smollm2)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", type=Path, metavar="FILE", help="UTF-8 text file to analyse")
    src.add_argument(
        "--corpus", default="shakespeare", help="embedded corpus (default: shakespeare)"
    )
    p.add_argument("--play", help="one play of the corpus (default: the calibration plays)")
    p.add_argument(
        "--tokens",
        type=int_in(1),
        default=DEFAULT_TOKENS,
        help=f"text tokens to read (default {DEFAULT_TOKENS})",
    )
    p.add_argument(
        "--chunk", type=int_in(2), default=512, help="positions per forward pass (default 512)"
    )
    syn = p.add_mutually_exclusive_group()
    syn.add_argument(
        "--conllu",
        type=Path,
        metavar="FILE",
        help="CoNLL-U treebank for syntactic heads "
        "(default: the English sample shipped with headcount)",
    )
    syn.add_argument("--no-syntax", action="store_true", help="skip the syntactic scores")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("headcount-report"), help="report folder"
    )
    p.add_argument(
        "--force", action="store_true", help="replace an earlier headcount report in that folder"
    )
    p.set_defaults(func=run)


def load_text(args: argparse.Namespace) -> str:
    """The text to analyse: a file, or the corpus without its Project Gutenberg header."""
    if args.text is not None:
        from headcount.cli.main import read_text_file

        return read_text_file(args.text, "--text")
    from headcount import corpus

    text = (
        corpus(args.corpus, play=args.play, split="calibration")
        if args.play is None
        else corpus(args.corpus, play=args.play)
    )
    start = text.find("*** START OF")
    return text[text.index("\n", start) + 1 :] if start >= 0 else text


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Bars:
    """tqdm progress bars, one per stage of the analysis."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = self.tqdm(
                total=total, desc=f"{stage:<9}", unit="pass", file=sys.stderr, leave=True
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run(args: argparse.Namespace) -> int:
    from headcount import load
    from headcount.cli.main import UsageError
    from headcount.distributed import World
    from headcount.heads import AnalysisConfig, analyze, read_conllu
    from headcount.report import summary_lines, write_report
    from headcount.report.write import prepare_target

    if args.tokens < 1 or args.chunk < 2:
        raise UsageError(
            f"--tokens must be >= 1 and --chunk >= 2, got {args.tokens} and {args.chunk}"
        )
    world = getattr(args, "world", None) or World()  # under torchrun: rank 0 writes
    world.on_main(lambda: prepare_target(args.output, force=args.force))  # before the slow part
    text = load_text(args)
    if not text.strip():
        from headcount.heads import TextError

        raise TextError(f"the text to analyse ({args.text or args.corpus}) is empty")
    world.check_same("text", {"chars": len(text), "sha256": _digest(text)})
    sentences = None
    if not args.no_syntax:
        if args.conllu is None:
            from importlib.resources import files

            sentences = read_conllu(Path(str(files("headcount") / "data" / "sample.conllu")))
        else:
            from headcount.cli.main import read_text_file

            # read here, at most MAX_TEXT_BYTES: a device such as /dev/zero never ends
            data = read_text_file(args.conllu, "--conllu")
            source = data if "\n" in data else Path(args.conllu)  # one line: a path to read_conllu
            sentences = read_conllu(source, name=str(args.conllu))
    if world.is_main:
        print(f"loading {args.model} ...", file=sys.stderr)
    model = load(args.model)
    bars = Bars() if world.is_main else None
    try:
        result = analyze(
            model,
            text,
            sentences=sentences,
            config=AnalysisConfig(chunk_len=args.chunk, max_tokens=args.tokens),
            progress=bars,
            name=str(args.model),
            world=world,
        )
    finally:
        if bars is not None:
            bars.close()
    if not world.is_main:
        return 0
    if world.distributed:
        result.meta["processes"] = world.size
    index = write_report(result, args.output, force=args.force)
    print("\n".join(summary_lines(result)))
    print(f"report: {index}  ({result.meta['seconds']} s)")
    return 0
