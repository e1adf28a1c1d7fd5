"""`headcount run MODEL "prompt"`: generate text with a decoder, streaming tokens to stdout."""

from __future__ import annotations

import argparse
import sys

from headcount.cli.main import float_in, int_in

DTYPES = ("file", "float32", "bfloat16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="generate text from a prompt with a decoder model, streaming tokens",
        description=(
            "Generate text after PROMPT with MODEL ('smollm2', 'gemma3', a .gguf file or a "
            "HuggingFace folder). A model with a chat template (ChatML, Gemma's turns) gets the "
            "prompt as a user message and stops at the end of its turn (use --raw to continue "
            "the text as it is: the packaged Gemma 3 270M is the pretrained, not the "
            "instruction-tuned model). Statistics go to stderr."
        ),
    )
    p.add_argument(
        "model", metavar="MODEL", help="'smollm2', 'gemma3', a .gguf file or a HuggingFace folder"
    )
    p.add_argument("prompt", metavar="PROMPT", help="the prompt text")
    p.add_argument(
        "-n",
        "--max-new-tokens",
        type=int_in(1),
        default=128,
        help="at most this many new tokens (128)",
    )
    p.add_argument(
        "-t", "--temperature", type=float_in(0.0), default=0.0, help="0 = greedy (default)"
    )
    p.add_argument(
        "--top-k", type=int_in(1), default=None, help="sample among the k most likely tokens"
    )
    p.add_argument(
        "--top-p",
        type=float_in(0.0, 1.0, lo_open=True),
        default=None,
        help="sample within the top-p nucleus",
    )
    p.add_argument(
        "--seed", type=int_in(0, 2**63 - 1), default=None, help="random seed for sampling"
    )
    p.add_argument("--stop", action="append", default=None, help="stop at this string (repeatable)")
    p.add_argument("--system", default=None, help="system message for the chat template")
    p.add_argument(
        "--raw", action="store_true", help="no chat template: continue PROMPT as plain text"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="file",
        help=(
            "'file' (default): a GGUF file's own quantised matrices, kept packed (fastest, least "
            "memory); 'float32' / 'bfloat16': every weight dense in that dtype"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import headcount
    from headcount.cli.main import UsageError
    from headcount.loaders import IncrementalDecoder

    dtype = None if args.dtype == "file" else getattr(torch, args.dtype)
    model = headcount.load(args.model, dtype=dtype)
    if not isinstance(model, headcount.Decoder):
        raise UsageError(
            f"{args.model} is an encoder ({model.config.architecture}); run needs a decoder"
        )
    tok = model.tokenizer
    prompt: str | list[int] = args.prompt
    stop_ids: set[int] = set(model.config.eos_token_ids)
    if tok.eos_token_id is not None:
        stop_ids.add(tok.eos_token_id)
    if not args.raw and tok.chat is not None:  # the checkpoint's chat format (ChatML, Gemma)
        messages = [{"role": "system", "content": args.system}] if args.system else []
        prompt = tok.encode_chat([*messages, {"role": "user", "content": args.prompt}])
        stop_ids |= tok.chat_stop_ids()
    stop: list[int | str] = [*stop_ids, *(args.stop or [])]
    decoder = IncrementalDecoder(tok, stop=args.stop or ())
    out = sys.stdout

    def show(token: int) -> None:
        if token not in stop_ids:
            out.write(decoder.push(token))
            out.flush()

    result = model.generate(
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=stop,
        seed=args.seed,
        on_token=show,
    )
    out.write(decoder.flush() + "\n")
    t = result.timings
    rate = f", decode {t['decode_tokens_per_s']:.1f} tokens/s" if "decode_tokens_per_s" in t else ""
    print(
        f"[{len(result.prompt_ids)} prompt tokens, {len(result.ids)} new ({result.finish_reason}); "
        f"prefill {t.get('prefill_s', 0.0):.2f} s{rate}]",
        file=sys.stderr,
    )
    return 0
