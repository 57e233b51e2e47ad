"""What every attention layer of one forward pass shares, built once: positions, RoPE angles and masks.

A decoder with L layers used to rebuild the same RoPE cos/sin, causal or sliding mask and ALiBi bias L times
per token. :class:`AttentionInputs` is made once per forward (by ``Transformer.forward``, or by a lone
``MultiHeadAttention``) and handed down to every layer, which only reads it.

Masks are built from **key indices**, not from tensor shapes. Every token has an index: its column in the
padded sequence (``past + t`` for the t-th new token), or ``-1`` for a padding token. A KV cache stores the
index of every key it holds beside the key (:mod:`mlcore.attention.kv_cache`), so a preallocated buffer
with unwritten slots, a ring buffer or a block table can all be attended through correctly:

    attend(i, j)  <=>  idx_j >= 0  and  idx_j <= idx_i  [and  idx_j > idx_i - window]     (decoder)
    attend(i, j)  <=>  idx_j >= 0                                                        (encoder)
    ALiBi bias    =   slope_h * (idx_j - idx_i)

This is transformers' rule too: its masks read ``cache_position`` (the column) and the padding mask, while
``position_ids`` (``cumsum(mask) - 1``) only feed the position encoding. Queries are compared by their column
(a padding query too, as with torch's ``key_padding_mask``): a left-padding query sees no key, and its output
row is zeros, mlcore's convention for a row with no key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class AttentionInputs:
    """Per-forward attention inputs shared by all layers.

    Attributes:
        positions: (B, T) long, the position of each new token for RoPE / learned embeddings
            (``cumsum(mask) - 1`` clamped at 0, or ``past + t``).
        index: (B, T) long, the column index ``past + t`` of each new token, -1 at padding: the key indices
            that caches store beside the keys.
        query_index: (B, T) long, the column index ``past + t`` of each query (padding or not).
        cos, sin: (B, T, rotary_dim) RoPE tables at ``positions`` (None without RoPE).
        plain_causal: no padding and no cache: a plain causal mask, left to the kernels' ``is_causal`` fast path.
        queries_are_tokens: no padding mask was given, so every new token (query) is a real token whose own key
            is visible to it: no query row is fully masked.
        extra_mask: an extra 4-D bool / additive mask broadcastable to (B, H, T, Tk) (standalone attention only).
        rope_rows: (table cache, rope, start, stop) when the positions are the range [start, stop) and the RoPE
            tables are rows of a model's :class:`~mlcore.attention.rope_tables.RotaryTableCache` (cos, sin are
            then None).
    """

    positions: Tensor
    index: Tensor
    query_index: Tensor
    cos: Tensor | None = None
    sin: Tensor | None = None
    plain_causal: bool = False
    queries_are_tokens: bool = False
    extra_mask: Tensor | None = None
    rope_rows: tuple[Any, Any, int, int] | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, batch: int, seq_len: int, past: int, device: torch.device, *,
              attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
              rope: torch.nn.Module | None = None, has_cache: bool = False,
              rope_tables: Any = None) -> AttentionInputs:
        """Positions, indices and RoPE tables for ``seq_len`` new tokens after ``past`` cached ones.

        ``attention_mask`` (B, past + T) 1 = token, 0 = pad, or None (no padding). ``position_ids`` (B, T)
        overrides the positions derived from the mask (not the indices: they always follow the columns).
        ``rope_tables``: a :class:`~mlcore.attention.rope_tables.RotaryTableCache`; with no mask and no
        ``position_ids`` the positions are ``[past, past + T)`` and the RoPE tables are rows sliced from it.
        """
        B, T = batch, seq_len
        index = query_index = torch.arange(past, past + T, device=device).expand(B, T)
        if attention_mask is not None:
            new_is_token = attention_mask[:, -T:] != 0
            index = torch.where(new_is_token, index, torch.full_like(index, -1))
        rows = None
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = query_index  # the columns themselves: arange(past, past + T)
                if rope_tables is not None and rope_tables.usable(rope, past + T):
                    rows = (rope_tables, rope, past, past + T)
        cos = sin = None
        if rope is not None and rows is None:
            cos, sin = rope(position_ids)  # (B, T, rotary_dim), float32
        plain = attention_mask is None and not has_cache and past == 0
        return cls(positions=position_ids, index=index, query_index=query_index, cos=cos, sin=sin, plain_causal=plain,
                   queries_are_tokens=attention_mask is None, rope_rows=rows)

    def rotary(self, x_dtype: torch.dtype, interleaved: bool) -> tuple[Tensor, Tensor]:
        """RoPE tables (cos, signed sin), each (B, 1, T, rotary_dim) in ``x_dtype``, made once per forward for
        every layer (see :func:`mlcore.positional.rope.rotary_tables`): computed in float32 and rounded to the
        queries' dtype once here, as transformers' rotary embedding returns them, rather than once per layer."""
        from mlcore.positional.rope import rotary_tables

        key = ("rotary", x_dtype, interleaved)
        hit = self._memo.get(key)
        if hit is None:
            dtype = x_dtype  # apply_rotary_tables computes in x's dtype (HF's rounding)
            if self.rope_rows is not None:
                tables, rope, start, stop = self.rope_rows
                hit = self._memo[key] = tables.rows(rope, dtype, interleaved, start, stop)
                return hit
            if self.cos is None or self.sin is None:
                raise ValueError("these AttentionInputs carry no RoPE tables (built without a rope module)")
            hit = self._memo[key] = rotary_tables(self.cos, self.sin, interleaved=interleaved, dtype=dtype)
        return hit

    def mask(self, key_index: Tensor, *, causal: bool = True, window: int | None = None,
             alibi_heads: int | None = None, dtype: torch.dtype = torch.float32,
             additive: bool = False) -> Tensor | None:
        """The mask for keys with indices ``key_index`` (B, Tk), built once and reused by every layer alike.

        Returns bool (B, 1, T, Tk) (True = attend), or an additive float (B, H, T, Tk) mask in ``dtype`` with
        ALiBi, a float ``extra_mask`` or ``additive=True`` (0 / -inf, for kernels that add it to the scores);
        None when the kernels' own ``is_causal`` covers it (see ``use_is_causal``).
        """
        if self.use_is_causal(causal=causal, window=window, alibi=alibi_heads is not None):
            return None
        key = (id(key_index), causal, window, alibi_heads, dtype, additive)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is key_index:  # the same key tensor (all layers of one cache share it)
            return hit[1]
        q = self.query_index[:, :, None]  # (B, T, 1)
        k = key_index[:, None, :]  # (B, 1, Tk)
        allowed = k >= 0
        if causal:
            allowed = allowed & (k <= q)
            if window is not None:
                allowed = allowed & (k > q - window)
        else:  # an encoder: every query sees every real key
            allowed = allowed.expand(-1, q.shape[1], -1)
        mask: Tensor = allowed[:, None]  # (B, 1, T, Tk)
        if alibi_heads is not None:
            from mlcore.positional import alibi_slopes

            slopes = alibi_slopes(alibi_heads).to(device=q.device, dtype=torch.float32)[None, :, None, None]
            dist = (k - q)[:, None].to(torch.float32)  # (B, 1, T, Tk): j - i
            bias = slopes * dist
            mask = bias.masked_fill(~mask, float("-inf")).to(dtype)
        if self.extra_mask is not None:
            from .masks import combine_masks

            mask = combine_masks(mask, self.extra_mask)
        if additive and mask.dtype == torch.bool:  # 0 where attended, -inf elsewhere
            mask = torch.where(mask, 0.0, float("-inf"))
            mask = mask if mask.dtype == dtype else mask.to(dtype)
        self._memo[key] = (key_index, mask)
        return mask

    def use_is_causal(self, *, causal: bool, window: int | None, alibi: bool) -> bool:
        """True when a plain causal mask is all there is: kernels take ``is_causal=True`` and no mask tensor."""
        return self.plain_causal and causal and window is None and not alibi and self.extra_mask is None
