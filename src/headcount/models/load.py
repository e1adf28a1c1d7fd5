"""``headcount.load``: an embedded name, a GGUF file or a (saved or HF) folder -> a model in eval mode."""

from __future__ import annotations

import contextlib
import ctypes
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from headcount import kernels
from headcount.errors import CheckpointError
from headcount.kernels.packed import PackedLinear, PackedWeight
from headcount.loaders import Checkpoint, DecoderConfig, EncoderConfig, read_checkpoint
from headcount.models.base import TextModel
from headcount.models.decoder import Decoder
from headcount.models.encoder import Encoder
from headcount.models.gemma3 import Gemma3Decoder


def build(
    config: DecoderConfig | EncoderConfig, device: torch.device | str | None = None
) -> Decoder | Encoder:
    """An untrained model of ``config`` (random weights; ``device="meta"`` allocates nothing)."""
    if isinstance(config, DecoderConfig):
        if config.architecture == "gemma3":
            return Gemma3Decoder(config, device=device)
        return Decoder(config, device=device)
    if isinstance(config, EncoderConfig):
        return Encoder(config, device=device)
    raise CheckpointError(f"no model for config {type(config).__name__}")


def load_state(model: TextModel, state: dict[str, Tensor], source: str) -> None:
    """Load a headcount-layout state dict strictly; every key or shape mismatch is reported at once."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    if missing or unexpected or wrong:
        lines = [f"{source}: the tensors do not fit the model its config describes"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
        if wrong:
            lines.append(f"  wrong shape ({len(wrong)}): " + "; ".join(wrong))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True, assign=True)


def install_packed(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Put the `PackedWeight`s of ``state`` into ``model``: an ``nn.Linear``'s becomes a
    `PackedLinear` (with its bias from ``state``), an ``nn.Embedding``'s a buffer of the
    embedding (read by ``F.embedding`` row by row, and by the tied output projection). Returns
    the rest of ``state``; a packed tensor anywhere else is dequantised into it."""
    rest = dict(state)
    for key, w in state.items():
        if not isinstance(w, PackedWeight):
            continue
        path, _, leaf = key.rpartition(".")
        module = model.get_submodule(path)
        if leaf != "weight" or not isinstance(module, nn.Linear | nn.Embedding):
            rest[key] = w.dequantize()
            continue
        del rest[key]
        if isinstance(module, nn.Embedding):
            del module.weight
            module.register_buffer("weight", w, persistent=False)
            continue
        bias = rest.pop(f"{path}.bias", None)
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, PackedLinear(w, bias))
    return rest


def _return_freed_memory() -> None:
    """Ask glibc to give freed heap pages back to the OS (loading packed weights frees ~60 MB
    of temporaries that would otherwise stay resident); a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def from_checkpoint(ck: Checkpoint, dtype: torch.dtype | None = None) -> Decoder | Encoder:
    """The model of ``ck`` in eval mode: its tensors as ``dtype``; with None, float32 except
    the `PackedWeight`s (`load(..., dtype=None)`), which stay packed."""
    model = build(ck.config, device="meta")
    weights = (ck.extra or {}).get("weights") or ck.source  # the file, when a reader names it
    state = install_packed(model, ck.state_dict)
    dense = torch.float32 if dtype is None else dtype
    load_state(model, {k: v.to(dense) for k, v in state.items()}, weights)
    if len(state) < len(ck.state_dict):
        _return_freed_memory()  # the file's pages and the packing's temporaries
    model.set_tokenizer(ck.tokenizer, ck.tokenizer_error)
    model.source = ck.source
    if isinstance(model, Encoder) and ck.extra and ck.extra.get("max_seq_length"):
        model.max_seq_length = int(ck.extra["max_seq_length"])
    return model.eval()


def load(name_or_path: str | Path, dtype: torch.dtype | None = None) -> Decoder | Encoder:
    """Load ``"smollm2"``, ``"minilm"``, a ``.gguf`` file, a folder ``model.save`` wrote or a
    HuggingFace folder, in eval mode.

    ``dtype=None`` (default) keeps a GGUF file's own format: its quantised matrices (Q4_0, Q4_1,
    Q5_0, Q5_1, Q8_0, Q4_K, Q6_K) stay packed in memory as `PackedLinear` layers (decoded by
    the packed kernels, dequantised for anything else), everything else is float32; other
    formats load as float32. ``dtype=torch.float32`` / ``torch.bfloat16``: every tensor dense
    in that dtype (what training, pruning and conversion want).

    Decoders (Llama, Mistral, Qwen2, SmolLM) come back as `Decoder`, BERT models as `Encoder`,
    with ``model.tokenizer`` set when the checkpoint has one.

    Packed weights without the compiled kernels (no compiler, an unsupported CPU or
    ``HEADCOUNT_KERNELS=0``) still give the same outputs, but every call dequantises its
    matrices (decoding ~100x slower): a warning says so and names ``dtype=torch.float32``.
    """
    model = from_checkpoint(read_checkpoint(name_or_path, packed=dtype is None), dtype)
    if (
        dtype is None
        and any(isinstance(b, PackedWeight) for b in model.buffers())
        and not kernels.available()
    ):
        warnings.warn(
            f"{name_or_path}: its quantised matrices stay packed, but the compiled kernels are "
            f"unavailable ({kernels.unavailable_reason()}), so every call dequantises them "
            "(decoding ~100x slower); load with dtype=torch.float32 to dequantise them once",
            stacklevel=2,
        )
    return model
