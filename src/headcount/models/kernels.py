"""The batch-1 kernels' former home: they now live in `headcount.kernels` (C++ sources in
``headcount/kernels/csrc``, built with ``torch.utils.cpp_extension``); re-exported here."""

from __future__ import annotations

from headcount.kernels import MAX_ROWS, available, gemv, gemv_int8, unavailable_reason

__all__ = ["MAX_ROWS", "available", "gemv", "gemv_int8", "unavailable_reason"]
