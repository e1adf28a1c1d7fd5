"""The base of weights that look like a float ``(N, K)`` tensor but are stored quantised.

`headcount.models.quant.Int8Weight` (int8 rows, per-row scales) and
`headcount.kernels.packed.PackedWeight` (GGUF blocks) share this behaviour: ``F.linear(x, w)``
runs the subclass's kernel (`QuantizedWeight.linear`), ``F.embedding(ids, w)`` dequantises only
the looked-up rows (`QuantizedWeight.lookup`), dtype conversions (``model.to(torch.bfloat16)``)
keep the quantised storage (`QuantizedWeight.as_dtype`), and every other operation sees the
dequantised float tensor (`QuantizedWeight.dequantize`): correct, not fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_map

__all__ = ["FLOAT_DTYPES", "QuantizedWeight"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_CONVERSIONS: dict[Callable[..., Any], Callable[..., Tensor]] = {
    Tensor.to: Tensor.to,
    Tensor.float: Tensor.float,
    Tensor.bfloat16: Tensor.bfloat16,
    Tensor.half: Tensor.half,
}


class QuantizedWeight(Tensor):
    """A float-looking ``(N, K)`` weight held quantised; subclasses implement the four methods."""

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The float ``(N, K)`` tensor (in ``dtype``, default the weight's own)."""
        raise NotImplementedError

    def as_dtype(self, dtype: torch.dtype) -> QuantizedWeight:
        """The same quantised storage presented as ``dtype``."""
        raise NotImplementedError

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``F.linear(x, self, bias)`` on the quantised storage."""
        raise NotImplementedError

    def lookup(self, ids: Tensor) -> Tensor:
        """``F.embedding(ids, self)``: only the rows ``ids`` dequantised."""
        raise NotImplementedError

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(w, QuantizedWeight) and not isinstance(x, QuantizedWeight):
                return w.linear(x, bias)
        elif func is F.embedding:
            ids, w = args[0], args[1]
            max_norm = args[3] if len(args) > 3 else kwargs.get("max_norm")
            if (
                isinstance(w, QuantizedWeight)
                and not isinstance(ids, QuantizedWeight)
                and max_norm is None
            ):
                return w.lookup(ids)  # padding_idx & co. only change gradients; w has none
        elif func is Tensor.__repr__:
            return args[0].__repr__()
        elif func in _CONVERSIONS and isinstance(args[0], QuantizedWeight):
            w = args[0]
            probe = torch.empty(0, dtype=w.dtype, device=w.device)
            probe = _CONVERSIONS[func](probe, *args[1:], **kwargs)
            if probe.device == w.device and probe.dtype in FLOAT_DTYPES:
                return w if probe.dtype == w.dtype else w.as_dtype(probe.dtype)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        def unwrap(t: Any) -> Any:
            return t.dequantize() if isinstance(t, QuantizedWeight) else t

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
