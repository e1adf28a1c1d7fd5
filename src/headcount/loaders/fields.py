"""Typed reads of checkpoint metadata (GGUF key/values, ``config.json``).

A number that sizes the model is read as an integer only if it is one: ``16`` or ``16.0``, never
``16.9`` (which ``int()`` would make 16), ``"16"`` or ``true``. Every refusal is a
`CheckpointError` naming the file and the field (``where``) and showing the value found.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from headcount.errors import CheckpointError


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: a mutated field may hold a 50,000-entry list."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def as_int(value: Any, where: str, minimum: int | None = None) -> int:
    """``value`` as an ``int``: an integer, or a float without a fractional part."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckpointError(f"{where} must be an integer, got {shown(value)}")
    if not isinstance(value, numbers.Integral) and (
        not math.isfinite(value) or value != math.floor(value)
    ):
        raise CheckpointError(f"{where} must be an integer, got {shown(value)}")
    # exact: an integer (numpy's too), or a float with no fractional part
    out = operator.index(value) if isinstance(value, numbers.Integral) else int(float(value))
    if minimum is not None and out < minimum:
        raise CheckpointError(f"{where} must be at least {minimum}, got {out}")
    return out


def as_float(value: Any, where: str) -> float:
    """``value`` as a finite ``float``: an int or a float, never a string or a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckpointError(f"{where} must be a number, got {shown(value)}")
    if not math.isfinite(value):
        raise CheckpointError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def as_bool(value: Any, where: str) -> bool:
    """``value`` as a ``bool``: only ``true``/``false`` (a string ``"false"`` is not false)."""
    if not isinstance(value, bool):
        raise CheckpointError(f"{where} must be true or false, got {shown(value)}")
    return value


def as_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CheckpointError(f"{where} must be a string, got {shown(value)}")
    return value


def per_layer_ints(value: Any, n_layers: int, where: str, minimum: int = 1) -> tuple[int, ...]:
    """One integer per layer: a single integer (every layer) or a list of ``n_layers`` of them,
    as llama.cpp writes head counts that differ between layers."""
    if isinstance(value, list | tuple):
        if len(value) != n_layers:
            raise CheckpointError(
                f"{where} has {len(value)} per-layer entries but there are {n_layers} layers"
            )
        return tuple(as_int(v, f"{where}[{i}]", minimum) for i, v in enumerate(value))
    return (as_int(value, where, minimum),) * n_layers


def token_id(value: Any, where: str, vocab_size: int | None) -> int | None:
    """An optional token id, inside the vocabulary when its size is known."""
    if value is None:
        return None
    out = as_int(value, where, minimum=0)
    if vocab_size is not None and out >= vocab_size:
        raise CheckpointError(f"{where}={out} is outside the vocabulary of {vocab_size} tokens")
    return out


def check_layer_count(n_layers: int, n_tensors: int, where: str) -> None:
    """Refuse a layer count the checkpoint cannot hold (every layer has tensors) before anything
    is sized by it: a damaged count must not allocate per-layer tuples of a billion entries."""
    if n_layers > n_tensors:
        raise CheckpointError(
            f"{where}={n_layers} layers, but the checkpoint has only {n_tensors} tensors"
        )
