"""`headcount kv`: KV-cache memory and attention parameters of a model as MHA, GQA, MQA (and MLA)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from headcount.errors import ConfigError

if TYPE_CHECKING:
    from headcount.memory import KVVariant, ModelShape


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kv",
        help="KV-cache memory of a model as MHA, every GQA and MQA: bytes, parameters, sequences that fit",
        description=(
            "Compare the KV cache of MODEL as published with its MHA, GQA (every divisor of the "
            "query heads) and MQA variants. MODEL is a preset name, 'smollm2', 'minilm', a "
            "HuggingFace config.json (or a folder holding one), a folder model.save wrote "
            "(per-layer head counts) or a .gguf file."
        ),
    )
    p.add_argument(
        "model", metavar="MODEL", help="preset name, embedded model, config.json, folder or .gguf"
    )
    p.add_argument(
        "--context",
        help="tokens per sequence; k = 1024, so 128k = 131072 (default: the model's maximum context)",
    )
    p.add_argument("--batch", default="1", help="sequences held at once (default 1)")
    p.add_argument(
        "--dtype",
        default="float16",
        help="cache dtype: float32, bfloat16, float16, float8, int8, int4 or fp32/bf16/fp16/fp8 (default float16)",
    )
    p.add_argument(
        "--weights-dtype", help="dtype of the weights, for what fits in --memory (default: --dtype)"
    )
    p.add_argument(
        "--memory",
        help="accelerator memory, such as 80GiB or 80GB, to count the sequences that fit",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from headcount.configs import load_shape
    from headcount.memory import canonical_dtype, kv_variants, parse_count, parse_size

    dtype = canonical_dtype(args.dtype)
    wdtype = canonical_dtype(args.weights_dtype or dtype)
    batch = _bounded(parse_count, args.batch, "--batch", MAX_BATCH)
    memory = _bounded(parse_size, args.memory, "--memory", MAX_MEMORY) if args.memory else None
    context = (
        _bounded(parse_count, args.context, "--context", MAX_CONTEXT) if args.context else None
    )
    shape = load_shape(args.model)
    if context is None:
        if shape.max_context is None:
            raise ConfigError(f"{shape.name} does not state its maximum context; pass --context")
        context = shape.max_context
    rows = kv_variants(shape, context, batch, dtype, memory, wdtype)
    if args.json:
        print(json.dumps(_as_json(shape, rows, context, batch, dtype, wdtype, memory), indent=2))
    else:
        print("\n".join(_table(shape, rows, context, batch, dtype, wdtype, memory)))
    return 0


# Far beyond any model or machine, and small enough for exact float arithmetic on the results.
MAX_CONTEXT = 2**40  # tokens (1,099,511,627,776)
MAX_BATCH = 2**31
MAX_MEMORY = 2**70  # bytes (1 ZiB)


def _bounded(parse: Callable[..., int], text: str, option: str, limit: int) -> int:
    """``parse(text)`` (with ``option`` for its message, when it takes one), refused above
    ``limit``: a 400-digit number would overflow the float arithmetic that follows."""
    most = f"at most {limit:,}" + (" bytes" if option == "--memory" else "")
    if len(text) > 40:
        raise ConfigError(f"{option} is {len(text)} characters long; {most} is allowed")
    try:
        value = parse(text) if parse.__name__ == "parse_size" else parse(text, option)
    except OverflowError as exc:
        raise ConfigError(f"{option} {text!r} is too large; {most}") from exc
    if value > limit:
        raise ConfigError(f"{option} {text!r} is too large; {most}")
    return value


def _as_json(
    shape: ModelShape,
    rows: list[KVVariant],
    context: int,
    batch: int,
    dtype: str,
    wdtype: str,
    memory: int | None,
) -> dict[str, Any]:
    from headcount.memory import dtype_bytes

    model = asdict(shape)
    model["layer_types"] = list(shape.layer_types)
    model["notes"] = list(shape.notes)
    model["attention"] = shape.attention_kind
    return {
        "model": model,
        "context": context,
        "batch_size": batch,
        "dtype": dtype,
        "dtype_bytes": dtype_bytes(dtype),
        "weights_dtype": wdtype,
        "weights_dtype_bytes": dtype_bytes(wdtype),
        "memory_bytes": memory,
        "variants": [asdict(r) for r in rows],
    }


def _table(
    shape: ModelShape,
    rows: list[KVVariant],
    context: int,
    batch: int,
    dtype: str,
    wdtype: str,
    memory: int | None,
) -> list[str]:
    from headcount.memory import dtype_bytes, format_bytes, format_count

    def b(dt: str) -> str:
        n = dtype_bytes(dt)
        return f"{n:g} byte{'s' if n != 1 else ''}"

    D, Dv = shape.head_dim, shape.v_head_dim or shape.head_dim
    dims = f"head_dim {D}" if Dv == D else f"K head_dim {D}, V head_dim {Dv}"
    if shape.layer_heads:
        heads = (
            f"query heads per layer {_runs([h for h, _ in shape.layer_heads])}, {dims}; "
            f"KV heads per layer {_runs([g for _, g in shape.layer_heads])}"
        )
    else:
        heads = f"{shape.n_heads} query heads, {dims}; {shape.attention_kind}" + (
            f" with {shape.n_kv_heads} KV heads" if shape.mla is None else ""
        )
    out = [
        f"{shape.name}: {shape.n_layers} layers, d_model {shape.d_model}, {heads}"
        f"; {format_count(shape.n_params)} parameters",
        f"  source: {shape.source}",
    ]
    out += [f"  note: {n}" for n in shape.notes]
    if shape.n_sliding_layers:
        out.append(
            f"  {shape.n_sliding_layers} of {shape.n_layers} layers use a {shape.sliding_window:,}-token sliding "
            "window: their cache holds at most that many positions"
        )
    if shape.max_context and context > shape.max_context:
        out.append(
            f"  note: {context:,} tokens is beyond the model's published context of {shape.max_context:,}"
        )
    out.append(
        f"KV cache in {dtype} ({b(dtype)} per element); context {context:,} tokens x batch {batch}"
    )
    published = next(r for r in rows if r.published)
    line = f"weights: {shape.n_params:,} params x {b(wdtype)} ({wdtype}) = {format_bytes(published.weights_bytes)}"
    if memory is not None:
        line += f"; memory {format_bytes(memory)}"
    out += [line, ""]
    total_head = f"KV cache, {context:,} x {batch}"
    head = f"  {'variant':<8} {'KV heads':>8} {'bytes/token':>12}  {total_head:<24} {'attn params':>15}"
    if memory is not None:
        head += f" {'seqs fit':>9}"
    out.append(head)
    for r in rows:
        kv_heads = "latent" if r.n_kv_heads is None else str(r.n_kv_heads)
        line = (
            f"{'*' if r.published else ' '} {r.label:<8} {kv_heads:>8} {r.bytes_per_token:>12,}  "
            f"{format_bytes(r.kv_bytes):<24} {r.attention_params:>15,}"
        )
        if r.sequences_fit is not None:
            line += f" {r.sequences_fit:>9,}"
        out.append(line)
    out.append("")
    if shape.layer_heads:
        L = shape.n_layers
        out += [
            f"* the model as saved. attn params: all {L} layers. KV heads: summed over the {L} layers "
            "(MHA: each layer with as many KV heads as query heads; MQA: one per layer).",
            "GQA variants are not listed: the layers differ in head counts or KV group sizes.",
            f"bytes/token = sum over the {L} layers of KV heads x (K {D} + V {Dv}) x {b(dtype)}.",
        ]
        return out + _fit_note(memory, context)
    out.append(f"* the model as published. attn params: all {shape.n_layers} layers.")
    if shape.mla is not None:
        out.append(
            f"MLA bytes/token = {shape.n_layers} layers x (kv_lora_rank {shape.mla.kv_lora_rank} + "
            f"qk_rope_head_dim {shape.mla.qk_rope_head_dim}) x {b(dtype)}."
        )
    out.append(
        f"bytes/token = {shape.n_layers} layers x KV heads x (K {D} + V {Dv}) x {b(dtype)}"
        + ("; sliding layers stop growing at their window." if shape.n_sliding_layers else ".")
    )
    return out + _fit_note(memory, context)


def _fit_note(memory: int | None, context: int) -> list[str]:
    if memory is None:
        return []
    return [
        f"seqs fit = (memory - weights of that variant) // KV cache of one {context:,}-token sequence; "
        "activations and runtime overhead are not counted."
    ]


def _runs(values: list[int]) -> str:
    """``9 (x28), 6, 3``: per-layer counts with repeats folded."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        parts.append(str(values[i]) if j == i else f"{values[i]} (x{j - i + 1})")
        i = j + 1
    return ", ".join(parts)
