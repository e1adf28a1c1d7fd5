"""Building blocks: attention (MHA/GQA/MQA), KV cache, rotary embeddings, RMSNorm. Imports nothing else of headcount but errors."""

from headcount.nn.attention import Attention, key_padding_mask
from headcount.nn.kv_cache import KVCache
from headcount.nn.norm import RMSNorm, rms_normalize
from headcount.nn.rope import RoPE

__all__ = ["Attention", "KVCache", "RMSNorm", "RoPE", "key_padding_mask", "rms_normalize"]
