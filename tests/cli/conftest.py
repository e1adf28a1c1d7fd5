"""Tiny random checkpoints saved with ``model.save`` for the CLI tests: a decoder with GQA, MHA and
MQA layers and a byte-level BPE tokenizer, and a BERT encoder with a WordPiece tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

import headcount
from tests.loaders import tiny
from tests.models.test_save import VOCAB, bpe_tokenizer, wordpiece_json
from tests.prune.conftest import tiny_decoder


@pytest.fixture(scope="session")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Layers of 6/4/3 query heads over 2/4/1 KV heads, context 64, vocabulary of 262 ids."""
    model = tiny_decoder(vocab_size=VOCAB, bos_token_id=0, eos_token_ids=(1,))
    model.set_tokenizer(bpe_tokenizer())
    return model.save(tmp_path_factory.mktemp("decoder") / "tiny")


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers of 4 heads (MHA), context 64."""
    hf = tmp_path_factory.mktemp("encoder-hf")
    tiny.hf_bert(hf)
    wordpiece_json(hf)
    model = headcount.load(hf)
    return model.save(tmp_path_factory.mktemp("encoder") / "tiny")
