"""Issue 13: seeded mutations of tiny GGUF and safetensors files (and of ``config.json``), each
loaded with ``headcount.load``. The only exceptions allowed are headcount's own
(`HeadcountError`: no IndexError, struct.error, UnicodeDecodeError, RuntimeError, MemoryError),
and a load that succeeds must give finite weights.

Mutations: byte and bit flips (mostly in the header, where they change structure), truncation,
inserted/deleted bytes, byte ranges copied over others; in the GGUF header, tensor offsets moved
onto or beside other tensors, type codes, dims and dim counts changed, the header counts
changed, metadata value type codes changed, and metadata values rewritten as other types (a
string, a fractional float, a bool, a list, 0, a negative or a huge number); in safetensors
headers, dtypes, shapes and offsets changed; in config.json, values replaced the same way.
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch

import headcount
from headcount.errors import HeadcountError
from tests.loaders import tiny

SEED = 13
N_GGUF_BYTES = 150  # byte-level mutations of the GGUF file
N_GGUF_META = 60  # metadata rewritten with values of other types
N_SAFETENSORS = 90
N_CONFIG = 60
Q = gguf.GGMLQuantizationType
QUANT = {"ffn_down": Q.Q8_0, "attn_q": Q.Q4_1, "ffn_up": Q.Q8_0}  # as real files mix them


class Outcome:
    """What the loads of one kind of file did: errors by class, loads that worked, and any
    exception that is not headcount's (with the mutation that caused it)."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.loaded = 0
        self.foreign: list[str] = []

    def load(self, path: Path, what: str) -> None:
        try:
            model = headcount.load(path)
        except HeadcountError as exc:
            self.errors[type(exc).__name__] += 1
            assert str(exc), what
            return
        except BaseException as exc:  # the point: nothing else may escape
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.foreign.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
            return
        self.loaded += 1
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                self.foreign.append(f"{what}: loaded with non-finite values in {name}")

    def check(self, n: int) -> None:
        assert not self.foreign, f"{len(self.foreign)} of {n} mutations:\n" + "\n".join(
            self.foreign
        )
        assert sum(self.errors.values()) + self.loaded == n


def _values(rng: random.Random, old: Any) -> Any:
    """A value of another type (or an out-of-range one) to put where ``old`` was."""
    choices: list[Any] = [
        str(old),
        16.9,
        -3.5,
        float(int(old)) if isinstance(old, int | float) and not isinstance(old, bool) else 2.0,
        True,
        False,
        [old, old],
        [old] * rng.randint(1, 5),
        0,
        -1,
        2**31 + 7,
        10**30,
        "",
        "llama",
        [],
        {"type": "linear"},
        None,
    ]
    return rng.choice(choices)


# ------------------------------------------------------------------------------------- GGUF
@pytest.fixture(scope="module")
def model() -> tiny.FakeLlama:
    return tiny.FakeLlama()


@pytest.fixture(scope="module")
def gguf_file(model: tiny.FakeLlama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "base.gguf"
    tiny.write_gguf(path, model, tokenizer=True, quant=QUANT)
    headcount.load(path)  # the unmutated file loads
    return path


def _gguf_mutations(raw: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    fields, tensors, start = tiny.gguf_layout(raw)
    names = list(tensors)
    out: list[tuple[str, bytes]] = []

    def put(buf: bytearray, at: int, fmt: str, value: Any) -> bytes:
        struct.pack_into(fmt, buf, at, value)
        return bytes(buf)

    kinds: list[Callable[[bytearray], tuple[str, bytes]]] = []

    def flip(b: bytearray) -> tuple[str, bytes]:
        n = rng.randint(1, 8)
        header = rng.random() < 0.7
        spots = [rng.randrange(start if header else len(b)) for _ in range(n)]
        for at in spots:
            b[at] = rng.randrange(256)
        return f"flip bytes at {spots}", bytes(b)

    def bit(b: bytearray) -> tuple[str, bytes]:
        at = rng.randrange(start)
        b[at] ^= 1 << rng.randrange(8)
        return f"flip a bit at {at}", bytes(b)

    def truncate(b: bytearray) -> tuple[str, bytes]:
        at = rng.randrange(len(b))
        return f"truncate at {at}", bytes(b[:at])

    def insert_delete(b: bytearray) -> tuple[str, bytes]:
        at, n = rng.randrange(len(b)), rng.randint(1, 64)
        if rng.random() < 0.5:
            return f"insert {n} bytes at {at}", bytes(b[:at] + bytes(n) + b[at:])
        return f"delete {n} bytes at {at}", bytes(b[:at] + b[at + n :])

    def copy_range(b: bytearray) -> tuple[str, bytes]:
        n = rng.randint(4, 256)
        src, dst = rng.randrange(len(b) - n), rng.randrange(len(b) - n)
        b[dst : dst + n] = b[src : src + n]
        return f"copy {n} bytes from {src} to {dst}", bytes(b)

    def offset(b: bytearray) -> tuple[str, bytes]:
        t, other = tensors[rng.choice(names)], tensors[rng.choice(names)]
        value = rng.choice(
            [
                other["offset"],
                t["offset"] + rng.choice([-64, -32, -4, 4, 32, 64]),
                t["offset"] + rng.randrange(1 << 20),
                2**63 + rng.randrange(1 << 20),
                0,
            ]
        )
        return f"offset of a tensor -> {value}", put(b, t["offset_at"], "<Q", value % 2**64)

    def qtype(b: bytearray) -> tuple[str, bytes]:
        t, code = tensors[rng.choice(names)], rng.randrange(45)
        return f"type code -> {code}", put(b, t["type_at"], "<I", code)

    def dims(b: bytearray) -> tuple[str, bytes]:
        t = tensors[rng.choice(names)]
        k = rng.randrange(len(t["dims"]))
        value = rng.choice([0, 1, 2 * t["dims"][k], t["dims"][k] // 2, 2**40, 2**64 - 1, 33])
        return f"dim {k} -> {value}", put(b, t["dims_at"] + 8 * k, "<Q", value)

    def n_dims(b: bytearray) -> tuple[str, bytes]:
        t, value = tensors[rng.choice(names)], rng.choice([0, 1, 2, 3, 4, 5, 2**32 - 1])
        return f"n_dims -> {value}", put(b, t["n_dims_at"], "<I", value)

    def counts(b: bytearray) -> tuple[str, bytes]:
        at = rng.choice([8, 16])
        (old,) = struct.unpack_from("<Q", b, at)
        value = rng.choice([0, old - 1, old + 1, 2 * old, 2**40, 2**64 - 1])
        return f"header count at {at} -> {value}", put(b, at, "<Q", value % 2**64)

    def value_type(b: bytearray) -> tuple[str, bytes]:
        key, code = rng.choice(list(fields)), rng.randrange(15)
        return f"value type of {key} -> {code}", put(b, fields[key]["type_at"], "<I", code)

    def key_length(b: bytearray) -> tuple[str, bytes]:
        f = fields[rng.choice(list(fields))]
        (old,) = struct.unpack_from("<Q", b, f["key_at"])
        value = rng.choice([0, old - 1, old + 1, 2**62])
        return f"key length -> {value}", put(b, f["key_at"], "<Q", value % 2**64)

    kinds = [flip, flip, bit, truncate, insert_delete, copy_range, offset, offset, qtype, dims]
    kinds += [n_dims, counts, value_type, value_type, key_length]
    for _ in range(N_GGUF_BYTES):
        out.append(rng.choice(kinds)(bytearray(raw)))
    return out


def test_fuzz_gguf_bytes(gguf_file: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    outcome = Outcome()
    for i, (what, data) in enumerate(_gguf_mutations(gguf_file.read_bytes(), rng)):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(data)
        outcome.load(path, f"#{i} {what}")
        path.unlink()
    outcome.check(N_GGUF_BYTES)


def test_read_gguf_metadata_equals_gguf_reader(gguf_file: Path) -> None:
    """`headcount.configs.read_gguf_metadata` (``headcount kv``'s fast header reader) against the
    gguf package's own reader on the unmutated file."""
    from headcount.configs import read_gguf_metadata

    meta, elements = read_gguf_metadata(gguf_file)
    reader = gguf.GGUFReader(gguf_file)
    assert elements == sum(int(t.n_elements) for t in reader.tensors)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(meta) == set(fields)
    for key, f in fields.items():
        value = f.contents()
        if isinstance(value, list) and len(value) > 1024:
            assert meta[key] is None, key  # long arrays are skipped
        elif isinstance(value, float):
            assert meta[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert meta[key] == value, key


def test_read_gguf_metadata_names_the_field_it_could_not_read(
    gguf_file: Path, tmp_path: Path
) -> None:
    from headcount.configs import read_gguf_metadata
    from headcount.errors import CheckpointError

    raw = gguf_file.read_bytes()
    fields, tensors, _ = tiny.gguf_layout(raw)
    path = tmp_path / "cut.gguf"
    # a file shorter than the header's counts allow (13 bytes a field, 32 a tensor entry) is
    # refused for that before any field is read
    least = 24 + 13 * len(fields) + 32 * len(tensors)
    cuts = [(f["value_at"], f"metadata field '{key}'") for key, f in fields.items()]
    cuts += [(t["dims_at"] + 4, f"tensor {name}") for name, t in tensors.items()]
    named = 0
    for at, where in cuts:
        path.write_bytes(raw[:at])  # the file ends inside that field or tensor entry
        if at < least:
            where = f"the header counts {len(fields)} metadata fields and {len(tensors)} tensors"
        else:
            named += 1
        with pytest.raises(CheckpointError, match=rf"{path}: .*truncated.*{where}"):
            read_gguf_metadata(path)
    assert named >= len(tensors)
    for size, match in [(0, "0 bytes"), (10, "10 bytes"), (23, "23 bytes")]:
        path.write_bytes(raw[:size])
        with pytest.raises(CheckpointError, match=rf"{path}: .*{match}, shorter than a GGUF"):
            read_gguf_metadata(path)
    with pytest.raises(CheckpointError, match="a folder, not a GGUF file"):
        read_gguf_metadata(tmp_path)


def test_fuzz_read_gguf_metadata(gguf_file: Path, tmp_path: Path) -> None:
    """The byte-level mutations of the loader's fuzz test, through the header reader alone:
    every failure is a CheckpointError naming the file."""
    from headcount.configs import read_gguf_metadata
    from headcount.errors import CheckpointError

    rng = random.Random(SEED + 7)
    errors, read, foreign = 0, 0, []
    for i, (what, data) in enumerate(_gguf_mutations(gguf_file.read_bytes(), rng)):
        path = tmp_path / f"h{i}.gguf"
        path.write_bytes(data)
        try:
            read_gguf_metadata(path)
            read += 1
        except CheckpointError as exc:
            errors += 1
            if str(path) not in str(exc):
                foreign.append(f"#{i} {what}: the message does not name the file: {exc}")
        except Exception as exc:  # the point: nothing else may escape
            foreign.append(f"#{i} {what}: {type(exc).__name__}: {str(exc)[:200]}")
        path.unlink()
    assert not foreign, "\n".join(foreign)
    assert errors + read == N_GGUF_BYTES and errors > N_GGUF_BYTES // 4


def test_fuzz_gguf_metadata_types(model: tiny.FakeLlama, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    keys = [
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.key_length",
        "llama.rope.freq_base",
        "llama.rope.scaling.type",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "general.architecture",
        "general.alignment",
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.pre",
    ]
    base = {"llama.block_count": 2, "llama.context_length": 64, "llama.embedding_length": 32}
    outcome = Outcome()
    for i in range(N_GGUF_META):
        key = rng.choice(keys)
        value = _values(rng, base.get(key, 4))
        if isinstance(value, dict):
            value = json.dumps(value)
        path = tmp_path / f"meta{i}.gguf"
        try:
            tiny.write_gguf(path, model, tokenizer=True, meta={key: value})
        except (ValueError, TypeError, struct.error, OverflowError):
            value = None  # a value gguf cannot write: leave the field out instead
            tiny.write_gguf(path, model, tokenizer=True, meta={key: value})
        outcome.load(path, f"#{i} {key} = {value!r}")
    outcome.check(N_GGUF_META)


# ------------------------------------------------------------------------------ safetensors
@pytest.fixture(scope="module")
def hf_folder(model: tiny.FakeLlama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny.write_hf(tmp_path_factory.mktemp("fuzz") / "hf", model)
    headcount.load(folder)
    return folder


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _safetensors_mutations(raw: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    header, data = _split(raw)
    names = [k for k in header if k != "__metadata__"]
    hlen = len(raw) - len(data)
    out = []
    for _ in range(N_SAFETENSORS):
        h = json.loads(json.dumps(header))
        name = rng.choice(names)
        kind = rng.randrange(9)
        if kind == 0:  # dtype
            h[name]["dtype"] = rng.choice(["F16", "BF16", "I32", "I64", "U8", "BOOL", "F64", "X"])
            out.append((f"{name} dtype -> {h[name]['dtype']}", _join(h, data)))
        elif kind == 1:  # shape
            shape = h[name]["shape"]
            h[name]["shape"] = rng.choice(
                [shape[::-1], [0, *shape[1:]], [*shape, 1], [2**40], [], [-1, 4], ["a"]]
            )
            out.append((f"{name} shape -> {h[name]['shape']}", _join(h, data)))
        elif kind == 2:  # offsets
            other = rng.choice(names)
            lo, hi = h[name]["data_offsets"]
            h[name]["data_offsets"] = rng.choice(
                [h[other]["data_offsets"], [lo + 4, hi + 4], [lo, hi - 4], [hi, lo], [0, 2**60]]
            )
            out.append((f"{name} offsets -> {h[name]['data_offsets']}", _join(h, data)))
        elif kind == 3:  # drop or rename a tensor
            entry = h.pop(name)
            if rng.random() < 0.5:
                h[name + "x"] = entry
            out.append((f"drop/rename {name}", _join(h, data)))
        elif kind == 4:  # header bytes
            b = bytearray(raw)
            spots = [rng.randrange(hlen) for _ in range(rng.randint(1, 6))]
            for at in spots:
                b[at] = rng.randrange(256)
            out.append((f"header bytes at {spots}", bytes(b)))
        elif kind == 5:  # data bytes, NaN / inf included
            b = bytearray(raw)
            at = hlen + 4 * rng.randrange(len(data) // 4)
            value = rng.choice([float("nan"), float("inf"), -float("inf"), 1e30])
            struct.pack_into("<f", b, at, value)
            out.append((f"float at {at} -> {value}", bytes(b)))
        elif kind == 6:  # truncation
            at = rng.randrange(len(raw))
            out.append((f"truncate at {at}", raw[:at]))
        elif kind == 7:  # header length
            b = bytearray(raw)
            value = rng.choice([0, 1, hlen - 8 - 8, hlen, 2**40, 2**64 - 1])
            struct.pack_into("<Q", b, 0, value)
            out.append((f"header length -> {value}", bytes(b)))
        else:  # inserted / deleted bytes
            at, n = rng.randrange(len(raw)), rng.randint(1, 16)
            if rng.random() < 0.5:
                out.append((f"insert {n} at {at}", raw[:at] + bytes(n) + raw[at:]))
            else:
                out.append((f"delete {n} at {at}", raw[:at] + raw[at + n :]))
    return out


def test_fuzz_safetensors(hf_folder: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
    raw = (hf_folder / "model.safetensors").read_bytes()
    outcome = Outcome()
    for i, (what, data) in enumerate(_safetensors_mutations(raw, rng)):
        (folder / "model.safetensors").write_bytes(data)
        outcome.load(folder, f"#{i} {what}")
    outcome.check(N_SAFETENSORS)


def test_fuzz_config_json(hf_folder: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 3)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    text = (hf_folder / "config.json").read_text()
    cfg = json.loads(text)
    keys = [*cfg, "head_dim", "rope_scaling", "rope_parameters", "sliding_window", "attention_bias"]
    outcome = Outcome()
    for i in range(N_CONFIG):
        c = dict(cfg)
        if rng.random() < 0.1:
            body, what = text[: rng.randrange(len(text))], "truncated JSON"
        else:
            key = rng.choice(keys)
            if rng.random() < 0.1:
                c.pop(key, None)
                what = f"without {key}"
            else:
                c[key] = _values(rng, cfg.get(key, 4))
                what = f"{key} = {c[key]!r}"
            body = json.dumps(c)
        (folder / "config.json").write_text(body)
        outcome.load(folder, f"#{i} {what}")
    outcome.check(N_CONFIG)
