"""Calling a submodule on the decode path without ``nn.Module.__call__``'s wrapper.

``module(x)`` runs two Python frames that look for hooks before calling ``forward``: about
1.7 µs a call on a small CPU, and a decode step makes ten such calls per layer. `bare(m)` is
``m.forward`` when the wrapper would do nothing else (no hooks on ``m``, no global module hooks,
not compiled, not being traced), else ``m`` itself, so hooks, tracing and compiled modules
behave exactly as they do with ``m(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module


def bare(m: nn.Module | None) -> Callable[..., Any]:
    """``m.forward`` when calling ``m`` would run nothing but it (the same result, ~1 µs
    sooner), else ``m``: call the result as you would call ``m``. ``m`` is typically read from
    a parent's ``_modules`` (a plain dict, whose values are typed optional)."""
    assert m is not None
    if (
        m._forward_pre_hooks
        or m._forward_hooks
        or m._backward_pre_hooks
        or m._backward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_backward_pre_hooks
        or _module._global_backward_hooks
        or m._compiled_call_impl is not None
        or torch._C._get_tracing_state()
    ):
        return m
    return m.forward
