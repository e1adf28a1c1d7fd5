"""Checkpoint readers (GGUF, HuggingFace safetensors folders, folders ``model.save`` wrote) ->
config + state dict + tokenizer; the registry of embedded checkpoints; tokenizers; corpora."""

from headcount.loaders.config import DecoderConfig, EncoderConfig, ModelConfig
from headcount.loaders.corpus import EVAL_PLAYS, corpus, plays
from headcount.loaders.families import BERT_HF, LLAMA_GGUF, LLAMA_HF, Family, Rule, apply_family
from headcount.loaders.gguf_reader import Checkpoint, read_gguf
from headcount.loaders.hf_reader import read_hf_folder
from headcount.loaders.registry import (
    EMBEDDED,
    INSTALL_MODELS,
    embedded_path,
    read_checkpoint,
    resolve,
)
from headcount.loaders.saved import read_saved_folder
from headcount.loaders.tokenizer import IncrementalDecoder, Tokenizer

__all__ = [
    "BERT_HF",
    "EMBEDDED",
    "EVAL_PLAYS",
    "INSTALL_MODELS",
    "LLAMA_GGUF",
    "LLAMA_HF",
    "Checkpoint",
    "DecoderConfig",
    "EncoderConfig",
    "Family",
    "IncrementalDecoder",
    "ModelConfig",
    "Rule",
    "Tokenizer",
    "apply_family",
    "corpus",
    "embedded_path",
    "plays",
    "read_checkpoint",
    "read_gguf",
    "read_hf_folder",
    "read_saved_folder",
    "resolve",
]
