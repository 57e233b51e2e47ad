"""Multi-head self-attention with grouped-query (GQA) and multi-query (MQA) key/value heads.

Vaswani et al. 2017 (multi-head), Shazeer 2019 (MQA: one K/V head), Ainslie et al. 2023 (GQA: Hkv groups):

    Q = x W_q  -> (B, H,   T, D)        H query heads of head_dim D
    K = x W_k  -> (B, Hkv, T, D)        Hkv key/value heads, H % Hkv == 0; each serves G = H / Hkv query heads
    V = x W_v  -> (B, Hkv, T, D)
    head_h = softmax(Q_h K_g^T / sqrt(D) + M) V_g     with g = h // G
    out    = concat(head_1 .. head_H) W_o  -> (B, T, C)

The KV cache holds K and V only, so GQA shrinks it by a factor G. Positions enter through RoPE (rotating
Q and K, Su et al. 2021) or ALiBi (a linear bias ``slope_h * (j - i)`` on the scores, Press et al. 2021).
Parameter names follow Llama (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) so checkpoints map one to one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fused_linear import LinearFusion
from .inputs import AttentionInputs
from .kv_cache import check_cache
from .naive import scaled_dot_product_attention, single_query_attention

__all__ = ["MultiHeadAttention"]

BACKENDS = ("naive", "flash", "torch")


class MultiHeadAttention(nn.Module):
    """Self-attention over (B, T, C) with H query heads and Hkv key/value heads.

    Args:
        d_model: C, the model width.
        n_heads: H, query heads. n_kv_heads: Hkv (default H; 1 = MQA), must divide H.
        head_dim: D (default C // H).
        qkv_bias, out_bias: biases on the Q/K/V projections and on the output projection.
        fused_qkv: one ``qkv_proj`` of width (H + 2 Hkv) D instead of q_proj, k_proj, v_proj.
        dropout: dropout on the attention weights while training.
        rope: a ``mlcore.positional.RotaryEmbedding`` (``rope(position_ids) -> (cos, sin)``), or None.
        alibi: add ALiBi's per-head linear bias ``slope_h * (j - i)`` to the scores.
        sliding_window: each query sees only the last ``sliding_window`` keys, itself included (Mistral).
        causal: mask future keys (decoder); False for an encoder (BERT).
        backend: "naive" (mlcore's written-out SDPA), "flash" (mlcore's tiled FlashAttention) or
            "torch" (``torch.nn.functional.scaled_dot_product_attention``, the ecosystem twin).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        fused_qkv: bool = False,
        dropout: float = 0.0,
        rope: nn.Module | None = None,
        alibi: bool = False,
        sliding_window: int | None = None,
        causal: bool = True,
        backend: str = "naive",
    ) -> None:
        super().__init__()
        for name, n in (("d_model", d_model), ("n_heads", n_heads)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if (not isinstance(n_kv_heads, int) or isinstance(n_kv_heads, bool) or n_kv_heads < 1
                or n_heads % n_kv_heads != 0):
            raise ValueError(f"n_kv_heads must be a positive divisor of n_heads={n_heads}, got {n_kv_heads!r}")
        if head_dim is None:
            if d_model % n_heads != 0:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pass head_dim")
            head_dim = d_model // n_heads
        if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if sliding_window is not None and (not isinstance(sliding_window, int) or isinstance(sliding_window, bool)
                                           or sliding_window < 1):
            raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")
        if sliding_window is not None and not causal:
            raise ValueError("sliding_window needs causal=True (a Mistral-style window looks back only)")
        if rope is not None and alibi:
            raise ValueError("choose one of rope and alibi, not both")
        if rope is not None and not callable(rope):
            raise ValueError(f"rope must be None or a RotaryEmbedding (a module giving cos, sin), got {rope!r}")
        rotary = getattr(rope, "rotary_dim", None)
        if isinstance(rotary, int) and rotary > head_dim:
            raise ValueError(f"rope rotates {rotary} dims per head, more than head_dim={head_dim}")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.fused_qkv, self.dropout, self.causal, self.backend = fused_qkv, dropout, causal, backend
        self.sliding_window = sliding_window
        q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
        if fused_qkv:
            self.qkv_proj = nn.Linear(d_model, q_dim + 2 * kv_dim, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(d_model, q_dim, bias=qkv_bias)
            self.k_proj = nn.Linear(d_model, kv_dim, bias=qkv_bias)
            self.v_proj = nn.Linear(d_model, kv_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(q_dim, d_model, bias=out_bias)
        self.rope = rope
        self.alibi = alibi
        self.qkv_fusion = LinearFusion()  # q, k, v as one stacked matmul in eval / no-grad (fused_linear.py)
        self.o_fusion = LinearFusion()  # o_proj's weight in a faster decode layout, where one exists

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"causal={self.causal}, sliding_window={self.sliding_window}, backend={self.backend!r}")

    # -- pieces of the forward pass ---------------------------------------------------------------

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) -> q (B, H, T, D), k (B, Hkv, T, D), v (B, Hkv, T, D)."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        stacked = self._stacked_qkv()
        if stacked is not None:
            return self._heads(stacked(x), B, T).split([H, Hkv, Hkv], dim=1)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return (q.view(B, T, H, D).transpose(1, 2), k.view(B, T, Hkv, D).transpose(1, 2),
                v.view(B, T, Hkv, D).transpose(1, 2))

    def _stacked_qkv(self) -> Any:
        """The one matmul computing [q | k | v], or None when q, k and v must run as separate layers: a
        ``qkv_proj`` layer, or q_proj, k_proj, v_proj stacked at inference (:mod:`.fused_linear`)."""
        if self.fused_qkv:
            return self.qkv_proj
        return self.qkv_fusion((self.q_proj, self.k_proj, self.v_proj), self.training)

    def _heads(self, qkv: Tensor, B: int, T: int) -> Tensor:
        """(B, T, (H + 2 Hkv) D) -> (B, H + 2 Hkv, T, D): query, key and value heads in one (view) tensor."""
        N = self.n_heads + 2 * self.n_kv_heads
        if T == 1:  # (B, 1, N, D) and (B, N, 1, D) are the same memory: one view, no transpose
            return qkv.view(B, N, 1, self.head_dim)
        return qkv.view(B, T, N, self.head_dim).transpose(1, 2)

    def rotate(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """Apply RoPE tables cos/sin (B, T, rotary_dim) to q (B, H, T, D) and k (B, Hkv, T, D)."""
        from mlcore.positional import apply_rotary

        interleaved = bool(getattr(self.rope, "interleaved", False))
        return (apply_rotary(q, cos, sin, interleaved=interleaved),
                apply_rotary(k, cos, sin, interleaved=interleaved))

    def build_inputs(self, x: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                     cache: Any, layer_idx: int) -> AttentionInputs:
        """This layer's :class:`AttentionInputs` when no model built them (standalone use), after checking them.

        attention_mask: (B, P + T) 0/1 padding over cached and new keys, or a 4-D bool / additive mask
        broadcastable to (B, H, T, P + T). position_ids: (B, T) or (1, T).
        """
        B, T, _ = x.shape
        past = 0
        if cache is not None:
            check_cache(cache)
            past = int(cache.get_seq_length(layer_idx))
        Tk = past + T
        pad, extra = None, None
        if attention_mask is not None:
            if not isinstance(attention_mask, Tensor):
                raise ValueError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
            if attention_mask.dim() == 2:
                if tuple(attention_mask.shape) != (B, Tk):
                    raise ValueError(f"attention_mask (padding) must have shape (B, Tk) = ({B}, {Tk}) covering "
                                     f"cached and new keys, got {tuple(attention_mask.shape)}")
                pad = attention_mask.to(x.device)
            elif attention_mask.dim() == 4:
                shape = tuple(attention_mask.shape)
                if not all(s in (1, t) for s, t in zip(shape, (B, self.n_heads, T, Tk))):
                    raise ValueError(f"attention_mask of shape {shape} is not broadcastable to "
                                     f"(B, H, T, Tk) = {(B, self.n_heads, T, Tk)}")
                if not (attention_mask.dtype == torch.bool or attention_mask.dtype.is_floating_point):
                    raise ValueError(f"a 4-D attention_mask must be bool or float, got {attention_mask.dtype}")
                extra = attention_mask.to(x.device)
            else:
                raise ValueError("attention_mask must be (B, Tk) padding or a 4-D mask broadcastable to "
                                 f"(B, H, T, Tk), got shape {tuple(attention_mask.shape)}")
        if position_ids is not None:
            if not isinstance(position_ids, Tensor):
                raise ValueError(f"position_ids must be a (B, T) integer tensor, got {type(position_ids).__name__}")
            if position_ids.dim() != 2 or position_ids.shape[-1] != T or position_ids.shape[0] not in (1, B):
                raise ValueError(f"position_ids must be (B, T) = ({B}, {T}), got {tuple(position_ids.shape)}")
            position_ids = position_ids.expand(B, T)
        inputs = AttentionInputs.build(B, T, past, x.device, attention_mask=pad, position_ids=position_ids,
                                       rope=self.rope, has_cache=cache is not None)
        inputs.extra_mask = extra
        return inputs

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        layer_idx: int = 0,
        return_weights: bool = False,
        inputs: AttentionInputs | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C) -> (B, T, C), or ``(out, weights (B, H, T, Tk))`` with ``return_weights`` (naive backend).

        inputs: the forward's shared :class:`AttentionInputs` (positions, RoPE tables, key indices), as
            ``Transformer`` passes them; without them they are built here from the next two arguments.
        attention_mask: (B, Tk) with 1 = token, 0 = pad, over all keys (cached and new); or a full bool
            (True = attend) / additive mask broadcastable to (B, H, T, Tk), 4-D.
        position_ids: (B, T) positions for RoPE; default ``arange(P, P + T)`` after the P cached tokens.
        cache: an mlcore KV cache (:mod:`mlcore.attention.kv_cache`): ``update(layer_idx, k_new, v_new,
            index_new) -> (k, v, key_index)`` with all keys/values (B, Hkv, Tk, D) and their indices (B, Tk).
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, T, C={self.d_model}), got {getattr(x, 'shape', type(x))}")
        if return_weights and self.backend != "naive":
            raise ValueError(f"return_weights needs backend='naive', got backend={self.backend!r}")
        if inputs is None:
            inputs = self.build_inputs(x, attention_mask, position_ids, cache, layer_idx)
        B, T, _ = x.shape
        H, Hkv = self.n_heads, self.n_kv_heads
        stacked = self._stacked_qkv()
        if stacked is not None:  # one (B, H + 2 Hkv, T, D) tensor; RoPE rotates queries and keys in one pass
            qk, v = self._heads(stacked(x), B, T).split([H + Hkv, Hkv], dim=1)
            if self.rope is not None:
                qk = self._rope(qk, inputs)
            q, k = qk.split([H, Hkv], dim=1)
        else:
            q, k, v = self.project(x)
            if self.rope is not None:  # the same rotation as self.rotate, from tables made once per forward
                q, k = self._rope(q, inputs), self._rope(k, inputs)

        if cache is not None:
            k, v, key_index = cache.update(layer_idx, k, v, inputs.index)  # (B, Hkv, Tk, D), (B, Tk)
        else:
            key_index = inputs.index
        is_causal = inputs.use_is_causal(causal=self.causal, window=self.sliding_window, alibi=self.alibi)
        p = self.dropout if self.training else 0.0
        # the written-out kernel adds the mask to fp32 scores: hand it the additive form, made once per forward
        additive = self.backend == "naive" and q.dtype in (torch.float32, torch.bfloat16, torch.float16)
        # A decode step: one query per row, a real token (no padding mask given), the model's own masks only.
        # That query sees at least its own key, so no row is all -inf, and torch's fused kernel computes the same
        # softmax(q k^T / sqrt(D) + mask) v as the written-out one: one call instead of a dozen small ops.
        fused_step = (additive and T == 1 and not return_weights and p == 0.0 and inputs.queries_are_tokens
                      and inputs.extra_mask is None)
        mask = inputs.mask(key_index, causal=self.causal, window=self.sliding_window,
                           alibi_heads=self.n_heads if self.alibi else None, additive=additive)

        if fused_step:  # in float32 like the written-out kernel (half inputs are upcast, the output rounded once)
            f32 = [t if t.dtype == torch.float32 else t.float() for t in (q, k, v)]
            if torch.compiler.is_compiling() and q.device.type == "cpu" and not is_causal:
                out = single_query_attention(*f32, mask)  # cheaper than SDPA's call in a CPU graph (docstring)
            else:
                out = F.scaled_dot_product_attention(*f32, attn_mask=mask, is_causal=is_causal,
                                                     enable_gqa=self.n_kv_heads != self.n_heads)
            out = out if out.dtype == q.dtype else out.to(q.dtype)
        elif self.backend == "naive":
            res = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p,
                                               return_weights=return_weights)
            out, weights = res if return_weights else (res, None)
        elif self.backend == "flash":
            from .flash import flash_attention

            out = flash_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p)
        else:
            if mask is not None and mask.dtype != torch.bool:
                mask = mask.to(q.dtype)  # torch wants a bool mask or one of the query's dtype
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal,
                                                 enable_gqa=self.n_kv_heads != self.n_heads)
            if mask is not None:  # some torch kernels give NaN where a row sees no key; mlcore's rule is zeros
                sees = (mask if mask.dtype == torch.bool else mask > float("-inf")).any(dim=-1, keepdim=True)
                out = torch.where(sees, out, torch.zeros((), dtype=out.dtype, device=out.device))

        out = out.reshape(B, 1, -1) if T == 1 else out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        out = self.o_fusion.run_layer(self.o_proj, out, self.training)  # (B, T, C)
        return (out, weights) if return_weights else out

    def _rope(self, x: Tensor, inputs: AttentionInputs) -> Tensor:
        """RoPE on x (B, heads, T, D) from the forward's shared tables (the same rotation as :meth:`rotate`)."""
        from mlcore.positional.rope import apply_rotary_tables

        interleaved = bool(getattr(self.rope, "interleaved", False))
        cos, signed_sin = inputs.rotary(x.dtype, interleaved)
        return apply_rotary_tables(x, cos, signed_sin, interleaved=interleaved)
