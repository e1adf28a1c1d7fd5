"""``model.save`` -> ``headcount.load``: exact round trips (per-layer heads too), folders that
transformers loads with the same logits and token ids, refusals, atomic writes, ``headcount kv``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import headcount
import headcount.models.save as save_module
from headcount.cli.main import main
from headcount.errors import CheckpointError, OutputError
from headcount.loaders.tokenizer import Tokenizer, tokenizer_from_gguf
from headcount.models import build
from tests.loaders import tiny

IDS = torch.tensor([[5, 17, 3, 90, 44, 12, 7, 61, 2, 33], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
TEXT = "the heads of attention 42"
CHAT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


# ------------------------------------------------------------------------------- helpers
def bpe_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer of 262 ids that adds a BOS itself (as GGUF ones may)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<s>", "</s>", "<pad>", *alphabet, "Ġt", "he", "Ġthe"]
    fields = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
        "tokenizer.ggml.bos_token_id": 0,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.padding_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": CHAT,
    }
    return tokenizer_from_gguf(fields, "bpe")


VOCAB = len(bpe_tokenizer().backend.get_vocab())  # 262


def wordpiece_json(folder: Path) -> None:
    """A BERT-style WordPiece tokenizer.json ([CLS] ... [SEP]) for the tiny encoder's 96 ids."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, normalizers, pre_tokenizers, processors

    words = ["the", "head", "##s", "of", "attention", "!", ",", "."]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters]
    backend = Backend(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    backend.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    backend.save(str(folder / "tokenizer.json"))


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norms and biases on a freshly built model (seeded by the conftest)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def per_layer_decoder(**overrides: Any) -> headcount.Decoder:
    """A pruned-looking decoder: 4/2/1 query heads over 2/1/1 KV heads, Q/K/V biases, untied."""
    cfg = headcount.DecoderConfig(
        **{
            "vocab_size": VOCAB,
            "d_model": 32,
            "n_layers": 3,
            "n_heads": (4, 2, 1),
            "n_kv_heads": (2, 1, 1),
            "head_dim": 8,
            "d_ff": 48,
            "max_len": 64,
            "rope_base": 5000.0,
            "qkv_bias": True,
            "bos_token_id": 0,
            "eos_token_ids": (1,),
            **overrides,
        }
    )
    model = randomize(build(cfg))
    model.set_tokenizer(bpe_tokenizer())
    return model  # type: ignore[return-value]


def hf_decoder(folder: Path, **overrides: Any) -> headcount.Decoder:
    tiny.hf_decoder(folder, vocab_size=VOCAB, **overrides)
    model = headcount.load(folder)
    model.set_tokenizer(bpe_tokenizer())
    return model  # type: ignore[return-value]


def tiny_encoder(folder: Path) -> headcount.Encoder:
    tiny.hf_bert(folder)
    wordpiece_json(folder)
    model = headcount.load(folder)
    assert isinstance(model, headcount.Encoder)
    return model


def per_layer_encoder() -> headcount.Encoder:
    cfg = headcount.EncoderConfig(
        vocab_size=96, d_model=32, n_layers=2, n_heads=(4, 2), head_dim=8, d_ff=48, max_len=64
    )
    return randomize(build(cfg))  # type: ignore[return-value]


def outputs(model: Any, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out.logits if isinstance(model, headcount.Decoder) else out.hidden_states


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_same_model(a: Any, b: Any) -> None:
    assert type(a) is type(b) and a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert torch.equal(outputs(a), outputs(b))
    assert a.has_tokenizer == b.has_tokenizer
    if a.has_tokenizer:
        ta, tb = a.tokenizer, b.tokenizer
        assert ta.encode(TEXT) == tb.encode(TEXT)
        assert ta.encode(TEXT, add_special_tokens=False) == tb.encode(
            TEXT, add_special_tokens=False
        )
        ids = ta.encode(TEXT)
        assert ta.decode(ids) == tb.decode(ids)
        assert (ta.bos_token_id, ta.eos_token_id, ta.pad_token_id, ta.chat_template) == (
            tb.bos_token_id,
            tb.eos_token_id,
            tb.pad_token_id,
            tb.chat_template,
        )


# ------------------------------------------------------------------------------- round trips
def test_uniform_decoder_round_trip(tmp_path: Path) -> None:
    model = hf_decoder(tmp_path / "hf")
    before = digest(tmp_path / "hf")
    out = model.save(tmp_path / "saved")
    assert out == (tmp_path / "saved").absolute()
    assert sorted(os.listdir(out)) == [
        "config.json",
        "headcount.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    meta = json.loads((out / "headcount.json").read_text())
    assert (meta["format"], meta["version"], meta["source"]) == (
        "headcount",
        1,
        str(tmp_path / "hf"),
    )
    assert meta["config"] == model.config.to_dict()
    loaded = headcount.load(out)
    assert_same_model(model, loaded)
    assert loaded.source == str(out)
    assert digest(tmp_path / "hf") == before  # the source is never touched


def test_per_layer_decoder_round_trip(tmp_path: Path) -> None:
    model = per_layer_decoder()
    out = model.save(tmp_path / "pruned")
    assert not (out / "config.json").exists()  # transformers cannot describe uneven layers
    meta = json.loads((out / "headcount.json").read_text())
    assert meta["config"]["n_heads"] == [4, 2, 1] and meta["config"]["n_kv_heads"] == [2, 1, 1]
    assert meta["tokenizer"]["add_bos"] is False  # the BOS moved into tokenizer.json's template
    loaded = headcount.load(out)
    assert loaded.config.n_heads == (4, 2, 1) and loaded.config.n_kv_heads == (2, 1, 1)
    assert [a.n_heads for a in loaded.attention_layers()] == [4, 2, 1]
    assert_same_model(model, loaded)
    assert loaded.tokenizer.encode(TEXT)[0] == 0  # the BOS, as before
    # the qkv rows split per layer: layer 1 has Q 2*8, K and V 1*8 rows
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.1.self_attn.q_proj.weight").shape == (16, 32)
        assert f.get_tensor("model.layers.1.self_attn.k_proj.bias").shape == (8,)
        names = list(f.keys())
    assert "lm_head.weight" in names


def test_bfloat16_is_saved_in_bfloat16(tmp_path: Path) -> None:
    model = per_layer_decoder().to(torch.bfloat16)
    out = model.save(tmp_path / "bf16")
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in list(f.keys())}
    assert dtypes == {torch.bfloat16}
    loaded = headcount.load(out, dtype=torch.bfloat16)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_uneven_kv_groups_round_trip(tmp_path: Path) -> None:
    model = per_layer_decoder(
        n_heads=(3, 2, 1), n_kv_heads=(2, 1, 1), group_sizes=((2, 1), (2,), (1,))
    )
    out = model.save(tmp_path / "uneven")
    assert not (out / "config.json").exists()
    loaded = headcount.load(out)
    assert loaded.config.group_sizes == ((2, 1), (2,), (1,))
    assert_same_model(model, loaded)


@pytest.mark.parametrize("per_layer", [False, True], ids=["uniform", "per-layer"])
def test_encoder_round_trip(tmp_path: Path, per_layer: bool) -> None:
    model = per_layer_encoder() if per_layer else tiny_encoder(tmp_path / "hf")
    model.max_seq_length = 40
    out = model.save(tmp_path / "enc")
    assert (out / "config.json").exists() != per_layer
    assert (out / "tokenizer.json").exists() != per_layer
    loaded = headcount.load(out)
    assert isinstance(loaded, headcount.Encoder) and loaded.max_seq_length == 40
    assert_same_model(model, loaded)
    if not per_layer:
        assert torch.equal(loaded.embed(TEXT), model.embed(TEXT))


def test_saved_without_tokenizer_loads_without_one(tmp_path: Path) -> None:
    model = per_layer_decoder()
    model.set_tokenizer(None)
    loaded = headcount.load(model.save(tmp_path / "m"))
    assert not loaded.has_tokenizer
    with pytest.raises(CheckpointError, match="saved without a tokenizer"):
        loaded.tokenizer  # noqa: B018


# ----------------------------------------------------------------------- transformers reads it
@pytest.mark.parametrize(
    ("overrides", "model_type"),
    [
        ({}, "llama"),
        ({"tie_word_embeddings": True, "attention_bias": True, "num_key_value_heads": 1}, "llama"),
        ({"model_type": "qwen2", "tie_word_embeddings": True}, "qwen2"),
    ],
    ids=["llama", "llama-tied-bias-mqa", "qwen2-bias"],
)
def test_transformers_loads_the_uniform_folder(
    tmp_path: Path, overrides: dict, model_type: str
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    overrides = dict(overrides)
    source_type = overrides.pop("model_type", "llama")
    tiny.hf_decoder(tmp_path / "hf", source_type, vocab_size=VOCAB, **overrides)
    model = headcount.load(tmp_path / "hf")
    model.set_tokenizer(bpe_tokenizer())
    out = model.save(tmp_path / "saved")
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    ref = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    with torch.no_grad():
        expected = ref(IDS).logits
    torch.testing.assert_close(outputs(model), expected, atol=1e-5, rtol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tok(TEXT)["input_ids"] == model.tokenizer.encode(TEXT)
    assert tok(TEXT)["input_ids"][0] == 0  # BOS
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    messages = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(messages, tokenize=False) == "user: hi\n"


def test_transformers_loads_the_encoder_folder(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, BertModel

    model = tiny_encoder(tmp_path / "hf")
    out = model.save(tmp_path / "saved")
    ref = BertModel.from_pretrained(str(out), local_files_only=True, add_pooling_layer=False)
    with torch.no_grad():
        expected = ref.eval()(IDS).last_hidden_state
    torch.testing.assert_close(outputs(model), expected, atol=1e-5, rtol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert tok(TEXT)["input_ids"] == model.tokenizer.encode(TEXT)
    assert tok(TEXT)["input_ids"][0] == 2 and tok.cls_token == "[CLS]"


# ---------------------------------------------------------------------------- refusals
def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    model = per_layer_decoder()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(OutputError, match="not empty and holds no headcount saved model"):
            model.save(tmp_path / "mine", force=force)
    assert digest(tmp_path / "mine") == {"notes.txt": hashlib.sha256(b"keep me").hexdigest()}
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        model.save(tmp_path / "file", force=True)
    (tmp_path / "empty").mkdir()
    assert headcount.load(model.save(tmp_path / "empty")).config == model.config


def test_force_replaces_an_earlier_save(tmp_path: Path) -> None:
    first, second = per_layer_decoder(), per_layer_decoder(n_heads=(2, 2, 2), n_kv_heads=1)
    first.save(tmp_path / "m")
    before = digest(tmp_path / "m")
    with pytest.raises(OutputError, match="already holds a saved model; pass force=True"):
        second.save(tmp_path / "m")
    assert digest(tmp_path / "m") == before
    second.save(tmp_path / "m", force=True)
    assert_same_model(second, headcount.load(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary or old folder left


def test_refuses_to_write_over_into_or_around_the_source(tmp_path: Path) -> None:
    model = hf_decoder(tmp_path / "src" / "hf")
    before = digest(tmp_path / "src")
    for target, where in [
        (tmp_path / "src" / "hf", "is"),
        (tmp_path / "src" / "hf" / "sub", "lies inside"),
        (tmp_path / "src", "contains"),
    ]:
        with pytest.raises(OutputError, match=f"{where} the model's source"):
            model.save(target, force=True)
    assert digest(tmp_path / "src") == before
    # a GGUF file as the source
    (tmp_path / "g").mkdir()
    tiny.write_gguf(tmp_path / "g" / "tiny.gguf", tiny.hf_decoder(tmp_path / "ref"))
    gguf_model = headcount.load(tmp_path / "g" / "tiny.gguf")
    for target in (tmp_path / "g" / "tiny.gguf", tmp_path / "g"):
        with pytest.raises(OutputError, match="the model's source"):
            gguf_model.save(target, force=True)
    assert sorted(os.listdir(tmp_path / "g")) == ["tiny.gguf"]


def test_refuses_an_int8_model(tmp_path: Path) -> None:
    from headcount.models.quant import quantize_int8

    model = quantize_int8(per_layer_decoder())
    with pytest.raises(OutputError, match="int8-quantized"):
        model.save(tmp_path / "q")  # type: ignore[operator]
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new", "force-over-earlier"])
def test_interrupted_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    model = per_layer_decoder()
    if existing:
        per_layer_decoder(n_heads=1, n_kv_heads=1).save(tmp_path / "m")
    before = {"m": digest(tmp_path / "m")} if existing else {}

    def broken(tensors: dict, path: Path) -> None:
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(save_module, "write_tensors", broken)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "m", force=True)
    assert sorted(os.listdir(tmp_path)) == (["m"] if existing else [])
    assert ({"m": digest(tmp_path / "m")} if existing else {}) == before


def test_saved_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out = hf_decoder(tmp_path / "hf").save(tmp_path / "new" / "m")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert "model.safetensors" in modes and "tokenizer.json" in modes
    assert modes == dict.fromkeys(modes, 0o644)  # not mkstemp's 0600
    assert out.stat().st_mode & 0o777 == out.parent.stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------------- strict reading
def _saved(tmp_path: Path) -> Path:
    return per_layer_decoder().save(tmp_path / "m")


def test_corrupt_or_missing_headcount_json(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    meta = folder / "headcount.json"
    text = meta.read_text()
    for broken, match in [
        (text[: len(text) // 2], "not readable JSON"),
        (json.dumps({**json.loads(text), "format": "other"}), "not a headcount save"),
        (json.dumps({**json.loads(text), "version": 99}), "version 99 is not supported"),
        (
            json.dumps({**json.loads(text), "config": {"kind": "decoder"}}),
            "config.n_layers must be an integer",
        ),
    ]:
        meta.write_text(broken)
        with pytest.raises(CheckpointError, match=match) as info:
            headcount.load(folder)
        assert str(meta) in str(info.value)
    meta.unlink()
    assert not (folder / "config.json").exists()
    with pytest.raises(CheckpointError, match="config.json"):
        headcount.load(folder)  # neither headcount.json nor config.json


def test_corrupt_or_missing_safetensors(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as info:
        headcount.load(folder)
    assert str(weights) in str(info.value)
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        headcount.load(folder)
    assert str(weights) in str(info.value)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: no such file"):
        headcount.load(folder)


def _edit_config(folder: Path, **changes: Any) -> None:
    meta = json.loads((folder / "headcount.json").read_text())
    meta["config"].update(changes)
    (folder / "headcount.json").write_text(json.dumps(meta))


def test_tensors_that_do_not_fit_the_config(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    weights = str(folder / "model.safetensors")
    _edit_config(folder, n_heads=[2, 4, 1], n_kv_heads=[1, 2, 1])  # same total, other layers
    with pytest.raises(
        CheckpointError, match=r"q_proj\.weight: expected \(16, 32\) .* found \(32, 32\)"
    ) as info:
        headcount.load(folder)
    assert weights in str(info.value)
    _edit_config(folder, n_heads=[4, 2, 1], n_kv_heads=[2, 1, 1], d_ff=40)
    with pytest.raises(
        CheckpointError, match=r"layers\.0\.mlp\.down_proj\.weight: expected \(32, 40\)"
    ) as info:
        headcount.load(folder)
    assert weights in str(info.value)
    _edit_config(folder, d_ff=48, n_layers=2, n_heads=[4, 2], n_kv_heads=[2, 1])
    with pytest.raises(CheckpointError, match=r"unexpected \(12\): model\.layers\.2\."):
        headcount.load(folder)


def test_tokenizer_json_missing(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json: no such file"):
        headcount.load(folder)


# ------------------------------------------------------------------------------ headcount kv
def kv(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["kv", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def table(out: str) -> dict[str, str]:
    """The rows of the variant table by label (the lines between its header and a blank line)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["variant"]) + 1
    end = lines.index("", start)
    return {line[2:].split()[0]: line for line in lines[start:end]}


def test_kv_prices_per_layer_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _saved(tmp_path)
    out = kv(capsys, str(folder))
    rows = table(out)
    assert "query heads per layer 4, 2, 1" in out and "KV heads per layer 2, 1 (x2)" in out
    # K/V of (2 + 1 + 1) KV heads x (8 + 8) dims x 2 bytes (float16) = 128 bytes per token,
    # x 64 positions (max_len) = 8,192 bytes
    assert rows["saved"].startswith("* saved") and rows["saved"].split()[2:4] == ["4", "128"]
    assert "8.00 KiB (8.19 kB)" in rows["saved"]
    # attention params, C=32, D=8, Q/K/V biases: C(HD + 2GD) + HDC + (HD + 2GD) per layer
    # (4,2): 2048 + 1024 + 64 = 3136; (2,1): 1024 + 512 + 32 = 1568; (1,1): 768 + 256 + 24 = 1048
    assert rows["saved"].split()[-1] == "5,752"
    assert rows["MHA"].split()[1:3] == ["7", "224"] and "14.00 KiB" in rows["MHA"]  # 4+2+1 heads
    assert rows["MQA"].split()[1:3] == ["3", "96"] and "6.00 KiB" in rows["MQA"]
    assert list(rows) == ["MHA", "saved", "MQA"]
    assert "GQA variants are not listed" in out
    data = json.loads(kv(capsys, str(folder / "headcount.json"), "--json", "--context", "32"))
    saved = next(v for v in data["variants"] if v["published"])
    assert saved["layer_kv_heads"] == [2, 1, 1] and saved["kv_bytes"] == 128 * 32
    assert data["model"]["layer_heads"] == [[4, 2], [2, 1], [1, 1]]


def test_kv_on_a_saved_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = per_layer_encoder().save(tmp_path / "enc")
    out = kv(capsys, str(folder), "--context", "64")
    rows = table(out)
    # MHA in every layer: (4 + 2) KV heads x 16 x 2 bytes = 192 bytes/token, x 64 = 12,288
    assert rows["MHA"].startswith("* MHA") and rows["MHA"].split()[2:4] == ["6", "192"]
    assert "12.00 KiB (12.29 kB)" in rows["MHA"] and list(rows) == ["MHA", "MQA"]
    # a uniform saved model keeps every GQA variant
    uniform = per_layer_decoder(n_heads=4, n_kv_heads=2).save(tmp_path / "uni")
    out = kv(capsys, str(uniform))
    assert "* GQA-2" in out and "4 query heads" in out


# ------------------------------------------------------------------------- real checkpoints
@pytest.mark.model
def test_smollm2_saved_loads_in_transformers(smollm2: headcount.Decoder, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = smollm2.save(tmp_path / "smollm2")
    ref = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    text = "The three most famous plays by William Shakespeare are"
    ids = torch.tensor([smollm2.tokenizer.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(ref(ids).logits, smollm2(ids).logits, atol=1e-4, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    chat = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "Hi 123"}])
    assert tok(chat)["input_ids"] == smollm2.tokenizer.encode(chat)
    messages = [{"role": "user", "content": "Hi 123"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat
    loaded = headcount.load(out)
    assert loaded.config == smollm2.config
    assert torch.equal(loaded.embed.weight, smollm2.embed.weight)


@pytest.mark.model
def test_minilm_saved_loads_in_transformers(minilm: headcount.Encoder, tmp_path: Path) -> None:
    from transformers import BertModel

    out = minilm.save(tmp_path / "minilm")
    ref = BertModel.from_pretrained(str(out), local_files_only=True, add_pooling_layer=False)
    ids = torch.tensor([minilm.tokenizer.encode("Attention heads, counted.")])
    with torch.no_grad():
        expected = ref.eval()(ids).last_hidden_state
        torch.testing.assert_close(minilm(ids).hidden_states, expected, atol=1e-5, rtol=1e-5)
    loaded = headcount.load(out)
    assert loaded.max_seq_length == minilm.max_seq_length
    assert torch.equal(loaded.embed("a sentence"), minilm.embed("a sentence"))
