"""Attention: scaled dot-product attention written out, its masks, multi-head / GQA / MQA, and FlashAttention.

``naive.scaled_dot_product_attention`` is the textbook formula ``softmax(Q K^T / sqrt(d) + M) V``
(Vaswani et al., 2017); ``flash.flash_attention`` computes the same values tile by tile with an online
softmax (Dao et al., 2022/2023). Both agree with ``torch.nn.functional.scaled_dot_product_attention``.
"""

from ._checks import check_qkv, prepare_mask
from .flash import flash_attention
from .inputs import AttentionInputs
from .kv_cache import KVCache, check_cache
from .masks import causal_mask, combine_masks, padding_mask, sliding_window_mask
from .multihead import MultiHeadAttention
from .naive import scaled_dot_product_attention

__all__ = [
    "scaled_dot_product_attention",
    "flash_attention",
    "MultiHeadAttention",
    "AttentionInputs",
    "KVCache",
    "check_cache",
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "combine_masks",
    "check_qkv",
    "prepare_mask",
]
