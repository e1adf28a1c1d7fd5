"""headcount: multi-head attention and its heads."""

from headcount.convert import convert, uptrain
from headcount.errors import (
    CacheOverflowError,
    CheckpointError,
    ConfigError,
    DTypeError,
    HeadcountError,
    OutputError,
    ShapeError,
)
from headcount.loaders import corpus
from headcount.memory import ModelShape, attention_params, kv_cache_bytes, mla_cache_bytes
from headcount.models import Decoder, DecoderConfig, Encoder, EncoderConfig, load, perplexity
from headcount.nn import Attention, KVCache, RoPE

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "CacheOverflowError",
    "CheckpointError",
    "ConfigError",
    "DTypeError",
    "Decoder",
    "DecoderConfig",
    "Encoder",
    "EncoderConfig",
    "HeadcountError",
    "KVCache",
    "ModelShape",
    "OutputError",
    "RoPE",
    "ShapeError",
    "__version__",
    "attention_params",
    "convert",
    "corpus",
    "kv_cache_bytes",
    "load",
    "mla_cache_bytes",
    "perplexity",
    "uptrain",
]
