from __future__ import annotations

from typing import Any

import pytest

import headcount
from tests.models import checkpoints


@pytest.fixture(scope="session")
def smollm2() -> headcount.Decoder:
    return checkpoints.smollm2()


@pytest.fixture(scope="session")
def hf_smollm2() -> Any:
    return checkpoints.hf_smollm2()


@pytest.fixture(scope="session")
def minilm() -> headcount.Encoder:
    return checkpoints.minilm()


@pytest.fixture(scope="session")
def hf_minilm() -> Any:
    return checkpoints.hf_minilm()


@pytest.fixture(scope="session")
def gemma3() -> headcount.Decoder:
    return checkpoints.gemma3()


@pytest.fixture(scope="session")
def hf_gemma3() -> Any:
    return checkpoints.hf_gemma3()


@pytest.fixture(scope="session")
def hf_gemma3_tokenizer() -> Any:
    return checkpoints.hf_gemma3_tokenizer()
