"""Issue 13, item 6: `headcount analyze minilm` works with its default options. MiniLM's
uncased WordPiece tokenizer lowercases the shipped treebank's sentences and spaces their
punctuation, so its tokens never decode back to the text; the words are aligned through the
tokenizer's character offsets instead, checked here against transformers' pure-Python
BertTokenizer run word by word on the same vocabulary."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

import headcount
from headcount.cli.main import main
from headcount.heads import read_conllu
from headcount.heads.analysis import encode, token_offsets
from headcount.heads.syntax import align

pytestmark = [pytest.mark.model]

SAMPLE = Path(str(files("headcount") / "data" / "sample.conllu"))


@pytest.fixture(scope="module")
def minilm() -> headcount.Encoder:
    model = headcount.load("minilm")
    assert isinstance(model, headcount.Encoder)
    return model


def test_words_align_as_bert_tokenizes_them(minilm: headcount.Encoder) -> None:
    from transformers import BertTokenizer

    vocab = Path(minilm.tokenizer.source)
    vocab = (vocab if vocab.is_dir() else vocab.parent) / "vocab.txt"
    reference = BertTokenizer(str(vocab), do_lower_case=True)
    tok = minilm.tokenizer
    checked = 0
    for s in read_conllu(SAMPLE)[:40]:
        words = [s.text[a:b] for a, b in s.spans]
        if len(set(s.spans)) != len(s.spans) or any(
            b < len(s.text) and s.text[b - 1].isalnum() and s.text[b].isalnum() for _, b in s.spans
        ):
            # a multiword token ("don't") or words inside one run of letters ("does|n't"):
            # BERT splits the run otherwise than the words, so word-by-word is no reference
            continue
        assert tok.decode(encode(tok, s.text)) != s.text  # why the offsets are needed
        ids, word_tokens = align(s, lambda t: encode(tok, t), tok.decode, token_offsets(tok))
        pieces = [reference.tokenize(w) for w in words]
        assert reference.convert_ids_to_tokens(ids) == [p for ps in pieces for p in ps]
        expected, k = [], 0
        for ps in pieces:
            expected.append(list(range(k, k + len(ps))))
            k += len(ps)
        assert word_tokens == expected, s.sent_id
        checked += 1
    assert checked >= 20


def test_analyze_minilm_with_default_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text(
        "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Whatever is worth doing at all is worth doing well, said the old man to his son.",
        encoding="utf-8",
    )
    out = tmp_path / "rep"
    code = main(["analyze", "minilm", "--text", str(text), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "scores.json").read_text())
    sentences = len(read_conllu(SAMPLE))
    assert data["meta"]["sentences"] + data["meta"]["sentences_too_long"] == sentences
    assert data["syntax"] and all(v["arcs"] > 0 for v in data["syntax"].values())
    syn = [k for k in data["heads"][0] if k.startswith("syn_")]
    assert syn and all(h[k] is not None for h in data["heads"] for k in syn)
