"""`headcount demo`: the main job on the embedded defaults — `headcount analyze` of SmolLM2 on
Shakespeare, a few thousand tokens, report in out/demo-report."""

from __future__ import annotations

import argparse
from pathlib import Path

from headcount.cli.main import int_in

DEMO_TOKENS = 3072
DEMO_OUTPUT = Path("out/demo-report")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job (head analysis) on the embedded defaults")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=DEMO_OUTPUT,
        help=f"report folder (default {DEMO_OUTPUT})",
    )
    p.add_argument(
        "--tokens", type=int_in(1), default=DEMO_TOKENS, help=f"text tokens (default {DEMO_TOKENS})"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier report in that folder (only while it holds nothing but the "
        "report's own files)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headcount.cli import analyze

    print(
        f"headcount demo: what each head of SmolLM2-135M does, over {args.tokens} tokens of Shakespeare"
    )
    ns = argparse.Namespace(
        model="smollm2",
        text=None,
        corpus="shakespeare",
        play=None,
        tokens=args.tokens,
        chunk=512,
        conllu=None,
        no_syntax=False,
        output=args.output,
        force=args.force,  # an earlier report holding only its own files (see prepare_target)
    )
    code = analyze.run(ns)
    if code == 0:
        print(
            f"open {Path(args.output).absolute() / 'index.html'} in a browser; "
            '`headcount view smollm2 "some text" -o view.html` shows the heads interactively'
        )
    return code
