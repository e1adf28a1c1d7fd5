"""Building blocks: attention (MHA/GQA/MQA), KV cache, rotary embeddings, RMSNorm, a Linear whose
batch-1 bfloat16 products use the GEMV kernel. Imports nothing else of headcount but errors and
the kernels."""

from headcount.nn.attention import Attention, key_padding_mask
from headcount.nn.kv_cache import KVCache
from headcount.nn.linear import Linear, linear
from headcount.nn.norm import RMSNorm, rms_normalize
from headcount.nn.rope import RoPE

__all__ = [
    "Attention",
    "KVCache",
    "Linear",
    "RMSNorm",
    "RoPE",
    "key_padding_mask",
    "linear",
    "rms_normalize",
]
