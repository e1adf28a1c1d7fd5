"""Issue 13, items 8, 10 and 11: a damaged or unusual checkpoint gives a `CheckpointError` naming
the file and the field or tensor (never a traceback from numpy, struct or torch), corrupt
weights are refused on load, and token ids and positions are never truncated or wrapped.

The files are tiny and written here (`tests.loaders.tiny`, no transformers): GGUF by gguf's own
writer, then damaged at byte positions an independent header walker (`tiny.gguf_layout`) finds.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch

import headcount
from headcount.errors import CheckpointError, DTypeError, ShapeError
from headcount.nn.rope import RoPE
from tests.loaders import tiny
from tests.prune.conftest import tiny_decoder, tiny_encoder

Q = gguf.GGMLQuantizationType
IDS = torch.tensor([[3, 4, 5, 6, 7]])


def write(tmp_path: Path, name: str = "m.gguf", model: Any = None, **kw: Any) -> Path:
    path = tmp_path / name
    tiny.write_gguf(path, model or tiny.FakeLlama(), tokenizer=True, **kw)
    return path


def hf(tmp_path: Path, model: Any = None, **config: Any) -> Path:
    folder = tiny.write_hf(tmp_path / "hf", model or tiny.FakeLlama())
    if config:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(config)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def patch(path: Path, at: int, fmt: str, value: Any) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, at, value)
    path.write_bytes(bytes(raw))


def refused(path: Path, *patterns: str) -> str:
    """Load ``path``; it must fail with a CheckpointError naming the file and every pattern."""
    with pytest.raises(CheckpointError) as err:
        headcount.load(path)
    msg = str(err.value)
    name = path.name if path.suffix == ".gguf" else "config.json"
    assert name in msg or str(path) in msg, msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------ item 8
@pytest.mark.parametrize("key", ["llama.attention.head_count", "llama.attention.head_count_kv"])
def test_gguf_head_count_zero(tmp_path: Path, key: str) -> None:
    """Was a ZeroDivisionError."""
    refused(write(tmp_path, meta={key: 0}), rf"m\.gguf: {re.escape(key)} must be at least 1, got 0")


def test_gguf_per_layer_head_count_arrays_load(tmp_path: Path) -> None:
    """llama.cpp writes head counts as arrays when layers differ (was a TypeError)."""
    model = tiny.FakeLlama()
    scalar = headcount.load(write(tmp_path, "scalar.gguf", model))
    arrays = headcount.load(write(tmp_path, "arrays.gguf", model, per_layer_heads=True))
    assert arrays.config.n_heads == (4, 4) and arrays.config.n_kv_heads == (2, 2)
    torch.testing.assert_close(arrays(IDS).logits, scalar(IDS).logits, rtol=0, atol=0)


def test_gguf_head_counts_that_differ_between_layers(tmp_path: Path) -> None:
    model = tiny.FakeLlama()
    D, sd, p = 8, model._state, "model.layers.1.self_attn."
    # layer 1 keeps query heads 0-1 and KV head 0 (as pruning leaves it)
    q, k, v = (
        sd[p + "q_proj.weight"][: 2 * D],
        sd[p + "k_proj.weight"][:D],
        sd[p + "v_proj.weight"][:D],
    )
    sd[p + "q_proj.weight"], sd[p + "k_proj.weight"], sd[p + "v_proj.weight"] = q, k, v
    sd[p + "o_proj.weight"] = sd[p + "o_proj.weight"][:, : 2 * D]
    heads = {"llama.attention.head_count": [4, 2], "llama.attention.head_count_kv": [2, 1]}
    sizes = {"llama.attention.key_length": D, "llama.attention.value_length": D}
    m = headcount.load(write(tmp_path, model=model, meta={**heads, **sizes}))
    assert m.config.n_heads == (4, 2) and m.config.n_kv_heads == (2, 1)
    torch.testing.assert_close(
        m.layers[1].attn.qkv_proj.weight, torch.cat([q, k, v]), rtol=0, atol=0
    )
    assert torch.isfinite(m(IDS).logits).all()
    # the head dim is never guessed from one layer when layers differ
    refused(
        write(tmp_path, "nokey.gguf", model=model, meta=heads),
        r"llama\.attention\.head_count differs between layers \(\[4, 2\]\) and "
        r"llama\.attention\.key_length is not given",
    )
    refused(
        write(tmp_path, "short.gguf", meta={"llama.attention.head_count": [4]}),
        r"llama\.attention\.head_count has 1 per-layer entries but there are 2 layers",
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("llama.context_length", "64", r"must be an integer, got '64'"),
        ("llama.embedding_length", 32.5, r"must be an integer, got 32\.5"),
        ("llama.block_count", True, r"must be an integer, got True"),
        ("llama.rope.freq_base", "10000", r"must be a number, got '10000'"),
        ("llama.attention.layer_norm_rms_epsilon", "1e-5", r"must be a number"),
        ("llama.rope.scaling.type", 3, r"must be a string, got 3"),
        ("llama.rope.scaling.type", "yarn", r"RoPE scaling 'yarn' is not supported"),
        ("llama.feed_forward_length", [64, 32], r"differs between layers \(\[64, 32\]\)"),
        ("tokenizer.ggml.eos_token_id", "1", r"must be an integer, got '1'"),
        ("tokenizer.ggml.eos_token_id", 500, r"=500 is outside the vocabulary of 64 tokens"),
        ("general.alignment", 0, r"general\.alignment must be a power of two, got 0"),
    ],
)
def test_gguf_metadata_of_the_wrong_type(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    refused(write(tmp_path, meta={key: value}), rf"m\.gguf: {re.escape(key)}", message)


def test_gguf_integral_float_is_an_integer(tmp_path: Path) -> None:
    m = headcount.load(write(tmp_path, meta={"llama.context_length": 64.0}))
    assert m.max_len == 64


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_size", 16.9, r"hidden_size must be an integer, got 16\.9"),  # was read as 16
        ("hidden_size", "32", r"hidden_size must be an integer, got '32'"),
        ("num_hidden_layers", True, r"num_hidden_layers must be an integer, got True"),
        ("num_attention_heads", 0, r"num_attention_heads must be at least 1, got 0"),
        ("num_hidden_layers", 10**9, r"num_hidden_layers=1000000000 layers, but the checkpoint"),
        ("rms_norm_eps", "1e-5", r"rms_norm_eps must be a number, got '1e-5'"),
        ("rope_theta", [5000], r"rope_theta must be a number"),
        ("tie_word_embeddings", "false", r"tie_word_embeddings must be true or false"),
        ("eos_token_id", [1, "2"], r"eos_token_id\[1\] must be an integer, got '2'"),
        ("bos_token_id", 999, r"bos_token_id=999 is outside the vocabulary of 64 tokens"),
        ("rope_scaling", "linear", r"rope_scaling must be an object or null, got 'linear'"),
        ("rope_scaling", {"rope_type": "yarn"}, r"rope_scaling: RoPE type 'yarn' is not supported"),
        ("model_type", ["llama"], r"unsupported architecture model_type=\['llama'\]"),
    ],
)
def test_config_json_values_of_the_wrong_type(
    tmp_path: Path, key: str, value: Any, message: str
) -> None:
    refused(hf(tmp_path, **{key: value}), r"config\.json: ", message)


def test_config_json_integral_float_is_an_integer(tmp_path: Path) -> None:
    m = headcount.load(hf(tmp_path, hidden_size=32.0, max_position_embeddings=64.0))
    assert m.config.d_model == 32 and m.max_len == 64


def test_transposed_tensors_are_named_with_both_shapes(tmp_path: Path) -> None:
    model = tiny.FakeLlama()
    sd = model._state
    sd["model.layers.1.mlp.down_proj.weight"] = sd["model.layers.1.mlp.down_proj.weight"].T
    sd["model.layers.0.mlp.gate_proj.weight"] = sd["model.layers.0.mlp.gate_proj.weight"].T
    sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"].T
    expected = [
        r"blk\.0\.attn_k\.weight: expected \(16, 32\) \(n_kv_heads\*head_dim=16, d_model=32\), "
        r"found \(32, 16\); transposed\?",
        # a torch.cat RuntimeError before: gate and up are fused
        r"blk\.0\.ffn_gate\.weight: expected \(64, 32\) \(d_ff=64, d_model=32\), found \(32, 64\)",
        r"blk\.1\.ffn_down\.weight: expected \(32, 64\) \(d_model=32, d_ff=64\), found \(64, 32\)",
    ]
    refused(write(tmp_path, model=model), r"3 tensors do not have the shapes", *expected)
    hf_names = [
        e.replace(r"blk\.0\.attn_k", r"model\.layers\.0\.self_attn\.k_proj")
        .replace(r"blk\.0\.ffn_gate", r"model\.layers\.0\.mlp\.gate_proj")
        .replace(r"blk\.1\.ffn_down", r"model\.layers\.1\.mlp\.down_proj")
        for e in expected
    ]
    refused(hf(tmp_path, model=model), *hf_names)


def test_tokenizer_merges_naming_unknown_tokens(tmp_path: Path) -> None:
    """The weights load; the tokenizer's error names the file and the merge (was an Exception
    from the tokenizers library)."""
    m = headcount.load(write(tmp_path, meta={"tokenizer.ggml.merges": ["! #", "! zz"]}))
    assert not m.has_tokenizer
    with pytest.raises(
        CheckpointError,
        match=r"m\.gguf: tokenizer\.ggml\.merges\[0\] = '! #' names '!#', which is not in the vocabulary",
    ):
        m.tokenizer.encode("hi")
    for value, message in [
        ([1, 2], r"tokenizer\.ggml\.merges\[0\] must be two tokens separated by a space, got 1"),
        ("! #", r"tokenizer\.ggml\.merges must be a list of strings"),
    ]:
        m = headcount.load(write(tmp_path, meta={"tokenizer.ggml.merges": value}))
        with pytest.raises(CheckpointError, match=message):
            m.tokenizer.encode("hi")
    m = headcount.load(write(tmp_path, meta={"tokenizer.ggml.tokens": list(range(64))}))
    with pytest.raises(CheckpointError, match=r"tokenizer\.ggml\.tokens must be a list of strings"):
        m.tokenizer.encode("hi")


@pytest.mark.parametrize("dims", [(64, 0), (0, 32)])
def test_zero_dimension_quantised_tensor(tmp_path: Path, dims: tuple[int, int]) -> None:
    path = write(tmp_path, quant={"ffn_down": Q.Q8_0})
    t = tiny.gguf_layout(path.read_bytes())[1]["blk.0.ffn_down.weight"]
    assert t["type"] == Q.Q8_0
    raw = bytearray(path.read_bytes())
    struct.pack_into("<2Q", raw, t["dims_at"], *dims)
    path.write_bytes(bytes(raw))
    refused(
        path,
        rf"tensor blk\.0\.ffn_down\.weight has a zero dimension \(dims \[{dims[0]}, {dims[1]}\]\)",
    )


# ----------------------------------------------------------------------------------- item 10
def test_nan_and_inf_weights_are_refused(tmp_path: Path) -> None:
    model = tiny.FakeLlama()
    model._state["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    refused(
        write(tmp_path, model=model),
        r"tensor blk\.1\.ffn_up\.weight has 1 NaN or infinite values of 2,048",
    )
    model = tiny.FakeLlama()
    model._state["model.norm.weight"][0] = float("inf")
    folder = hf(tmp_path, model=model)
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: tensor model\.norm\.weight has 1 NaN"
    ):
        headcount.load(folder)


def test_a_non_finite_quantisation_scale_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "q.gguf", quant={"ffn_down": Q.Q8_0})
    _, tensors, start = tiny.gguf_layout(path.read_bytes())
    t = tensors["blk.0.ffn_down.weight"]
    patch(path, start + t["offset"], "<H", 0x7C00)  # the first block's float16 scale: +inf
    refused(path, r"tensor blk\.0\.ffn_down\.weight has \d+ NaN or infinite values")


@pytest.mark.parametrize(
    ("tensor", "code", "message"),
    [
        (
            "blk.0.ffn_gate.weight",
            77,
            r"tensor blk\.0\.ffn_gate\.weight has an unknown ggml type code 77",
        ),
        # F32 -> F16: half the bytes, so the next tensor no longer follows it
        (
            "blk.0.ffn_gate.weight",
            int(Q.F16),
            r"leaves a gap of 4,096 bytes after tensor blk\.0\.ffn_gate\.weight \(F16",
        ),
        # the last tensor: bytes left over at the end of the file
        ("output.weight", int(Q.F16), r"4,096 bytes after the last tensor, output\.weight \(F16"),
        # F32 -> I32: the same bytes, but not a float type headcount can dequantise
        (
            "blk.0.ffn_gate.weight",
            int(Q.I32),
            r"tensor blk\.0\.ffn_gate\.weight \(I32\): cannot dequantise",
        ),
        # Q8_0 -> Q4_1: the same blocks, fewer bytes each
        ("blk.0.ffn_down.weight", int(Q.Q4_1), r"after tensor blk\.0\.ffn_down\.weight \(Q4_1"),
    ],
)
def test_type_flipped_tensors(tmp_path: Path, tensor: str, code: int, message: str) -> None:
    path = write(tmp_path, quant={"ffn_down": Q.Q8_0})
    t = tiny.gguf_layout(path.read_bytes())[1][tensor]
    patch(path, t["type_at"], "<I", code)
    refused(path, message)


def test_shifted_duplicated_and_outside_offsets(tmp_path: Path) -> None:
    path = write(tmp_path)
    tensors = tiny.gguf_layout(path.read_bytes())[1]
    q, k = tensors["blk.1.attn_q.weight"], tensors["blk.1.attn_k.weight"]
    for offset, message in [
        # moved forward, a tensor runs into the next; backward, the previous into it
        (q["offset"] + 32, r"blk\.1\.attn_k\.weight .* overlaps tensor blk\.1\.attn_q\.weight"),
        (q["offset"] + 4, r"blk\.1\.attn_k\.weight .* overlaps tensor blk\.1\.attn_q\.weight"),
        (q["offset"] - 64, r"blk\.1\.attn_q\.weight .* overlaps tensor blk\.1\.attn_norm"),
        (k["offset"], r"blk\.1\.attn_q\.weight .* overlaps tensor blk\.1\.attn_k\.weight"),
        (1 << 40, r"tensor blk\.1\.attn_q\.weight .* needs bytes up to [\d,]+ but the file has"),
    ]:
        bad = tmp_path / "shifted.gguf"
        bad.write_bytes(path.read_bytes())
        patch(bad, q["offset_at"], "<Q", offset)
        refused(bad, message)


@pytest.mark.parametrize(
    ("where", "fmt", "value", "message"),
    [
        ("n_tensors", "<Q", 1 << 40, r"the header counts .* tensors, more than a file of"),
        ("n_kv", "<Q", 1 << 40, r"the header counts .* metadata fields"),
        (
            "key_length",
            "<Q",
            1 << 40,
            r"a metadata key at byte 24 claims [\d,]+ bytes, past the end",
        ),
        (
            "tokens_count",
            "<Q",
            1 << 40,
            r"'tokenizer\.ggml\.tokens' claims [\d,]+ entries, past the end",
        ),
        (
            "dims",
            "<Q",
            1 << 40,
            r"tensor token_embd\.weight \(F32, dims \[1099511627776, 64\]\) needs [\d,]+ bytes, more than the whole file",
        ),
        ("n_dims", "<I", 7, r"tensor token_embd\.weight has 7 dims \(1 to 4 allowed\)"),
    ],
)
def test_counts_larger_than_the_file_are_refused_before_allocating(
    tmp_path: Path, where: str, fmt: str, value: int, message: str
) -> None:
    path = write(tmp_path)
    fields, tensors, _ = tiny.gguf_layout(path.read_bytes())
    at = {
        "n_tensors": 8,
        "n_kv": 16,
        "key_length": 24,
        "tokens_count": fields["tokenizer.ggml.tokens"]["value_at"] + 4,
        "dims": tensors["token_embd.weight"]["dims_at"],
        "n_dims": tensors["token_embd.weight"]["n_dims_at"],
    }[where]
    patch(path, at, fmt, value)
    refused(path, message)


def test_a_layer_count_beyond_the_tensors_is_refused(tmp_path: Path) -> None:
    """Sizing per-layer tuples by a damaged count would allocate billions of entries."""
    refused(
        write(tmp_path, meta={"llama.block_count": 4_000_000_000}),
        r"llama\.block_count=4000000000 layers, but the checkpoint has only 21 tensors",
    )


def _rewrite_header(path: Path, edit: Any) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def test_safetensors_type_flips_and_shifted_offsets(tmp_path: Path) -> None:
    folder = hf(tmp_path)
    st = folder / "model.safetensors"
    good = st.read_bytes()
    name = "model.layers.0.mlp.up_proj.weight"

    def to(dtype: str) -> Any:
        return lambda h: h[name].update(dtype=dtype)

    def shift(h: dict[str, Any]) -> None:
        lo, hi = h[name]["data_offsets"]
        h[name]["data_offsets"] = [lo + 4, hi + 4]

    for edit, message in [
        (to("I32"), rf"model\.safetensors: tensor {re.escape(name)} holds torch\.int32 values"),
        (to("F16"), r"model\.safetensors: not a readable safetensors file"),
        (shift, r"model\.safetensors: not a readable safetensors file"),
    ]:
        st.write_bytes(good)
        _rewrite_header(st, edit)
        with pytest.raises(CheckpointError, match=message):
            headcount.load(folder)


# ----------------------------------------------------------------------------------- item 11
def test_rope_refuses_negative_positions() -> None:
    """They read the table from its end: position -1 rotated like position 255."""
    rope = RoPE(8)
    x = torch.randn(1, 2, 3, 8)
    with pytest.raises(ShapeError, match="positions must be >= 0, got -1"):
        rope(x, torch.tensor([-1, 0, 1]))
    with pytest.raises(DTypeError, match="positions must be an integer tensor"):
        rope(x, torch.tensor([0.0, 1.0, 2.0]))
    # uint8 positions are positions, not a mask
    torch.testing.assert_close(
        rope(x, torch.tensor([0, 1, 2], dtype=torch.uint8)), rope(x, torch.tensor([0, 1, 2]))
    )
    dec = tiny_decoder()
    with pytest.raises(ShapeError, match="positions must be >= 0"):
        dec(torch.tensor([[1, 2, 3]]), positions=torch.tensor([[-2, -1, 0]]))


def test_float_token_ids_are_refused_not_truncated() -> None:
    dec, enc = tiny_decoder(), tiny_encoder()
    floats = torch.tensor([[1.7, 2.2, 3.0]])
    for model in (dec, enc):
        for bad in (floats, floats > 2):
            with pytest.raises(ShapeError, match="integer tensor"):
                model(bad)
    for prompt in (floats, floats[0], torch.tensor([1, 2]).bool()):
        with pytest.raises(ShapeError, match="integer tensor"):
            dec.generate(prompt, max_new_tokens=2)
        with pytest.raises(ShapeError, match="integer tensor"):
            list(dec.stream(prompt, max_new_tokens=2))
    for prompt in ([1.7, 2], [1, True], [1, "2"], [2.0]):
        with pytest.raises(ShapeError, match="ids must be integers"):
            dec.generate(prompt, max_new_tokens=2)
    with pytest.raises(ShapeError, match="integer tensor"):
        headcount.perplexity(dec, torch.tensor([1.5, 2.5, 3.5]))
    with pytest.raises(ShapeError, match="ids must be integers"):
        headcount.perplexity(dec, [1.5, 2.5, 3.5])
    # integer ids of any integer type still work
    want = dec.generate([1, 2, 3], max_new_tokens=3).ids
    assert dec.generate(np.array([1, 2, 3]), max_new_tokens=3).ids == want
    assert dec.generate(torch.tensor([1, 2, 3], dtype=torch.int32), max_new_tokens=3).ids == want


def test_perplexity_defaults_fit_a_short_context() -> None:
    """window=512 failed on a model with max_len=64; the default is min(512, max_len)."""
    dec = tiny_decoder()
    ids = torch.randint(0, 40, (150,), generator=torch.Generator().manual_seed(0))
    got = headcount.perplexity(dec, ids)
    want = headcount.perplexity(dec, ids, window=64, stride=64)
    assert got == want and got.n_windows == 3
    assert headcount.perplexity(dec, ids, window=32) == headcount.perplexity(dec, ids, 32, 32)
