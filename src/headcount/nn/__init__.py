"""Building blocks: attention (MHA/GQA/MQA), KV cache, rotary embeddings. Imports nothing else of headcount but errors."""

from headcount.nn.attention import Attention, key_padding_mask
from headcount.nn.kv_cache import KVCache
from headcount.nn.rope import RoPE

__all__ = ["Attention", "KVCache", "RoPE", "key_padding_mask"]
