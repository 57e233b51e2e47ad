"""The eager decode step without the forward's generic machinery: what ``generate`` runs per token, uncompiled.

``Transformer.forward`` serves every call: training and inference, any mask, any cache, hooks and wrapped
layers. For one new token per row of a plain StaticCache generation, most of that is decided once: the layers
have no hooks, the fused weight copies (:mod:`mlcore.attention.fused_linear`) were just refreshed by the
prefill, no row has padding, the keys to attend are the cache's written prefix. Per step the forward still pays
for deciding it again: ~30 ``nn.Module`` calls, a version check of every fused weight, an ``AttentionInputs``,
a mask built from key indices, the cache's shape checks. On the trained 4M target that is about half of the
uncompiled step (1.0 of 2.3 ms measured on a 2-core EPYC; the same ops written flat take 0.45 ms).

:class:`EagerDecodeStep` decides it once per ``generate`` call, right after the prefill, and then runs the
*same* tensor operations in the same order, so the logits are bit for bit the forward's (tested):

    x = embed(token)                                       (B, 1, C)
    per layer:  h = qkv(attn_norm(x))  -> (B, H + 2 Hkv, 1, D); RoPE on q | k from the model's row tables
                K, V written at column ``past`` of the StaticCache (``index_copy_``), prefix [0, past] attended
                a = SDPA(q, K, V, additive zero mask) in float32      (the forward's single-query rule)
                x = x + o(a);  x = x + down(act(gate) * up)  with [gate | up] = gate_up(mlp_norm(x))
    logits = head(norm(x))                                 (B, 1, V)

It applies when all of that is what the forward would do: an mlcore ``Transformer`` in eval mode with RoPE
(row tables usable), the "naive" attention backend, no sliding window or ALiBi, SwiGLU MLPs, every q/k/v and
gate/up group stacked (no LoRA wrapper, no hook anywhere, no patched forward), a StaticCache of the model's
dtype holding every layer, and no padding. Anything else gets ``None`` from :meth:`EagerDecodeStep.for_generation`
and the decode loop calls the forward, as before. Like the compiled step, a weight edited *during* a generation
is read from the next ``generate`` call on (the fused copies are resolved once, after the prefill).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from mlcore.attention.fused_linear import _plain
from mlcore.inference.static_cache import StaticCache
from mlcore.positional.rope import apply_rotary_tables

__all__ = ["EagerDecodeStep"]


def _direct(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A module's own ``forward`` (no hooks anywhere, checked once), else the fused callable itself."""
    return fn.forward if isinstance(fn, nn.Module) else fn


def _no_hooks(model: nn.Module) -> bool:
    """No global or per-module forward hook and no patched forward: the step may call ``.forward`` directly."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return False
    return all(_plain(m) for m in model.modules())


class EagerDecodeStep:
    """One token per row through a prefilled StaticCache: ``step(token (B, 1)) -> logits (B, 1, V)``."""

    def __init__(self, model: nn.Module, cache: StaticCache, layers: list[tuple[Any, ...]], head: Callable) -> None:
        self.model = model
        self.cache = cache
        self.layers = layers
        self.head = head
        c = model.config
        self.heads = (c.n_heads, c.n_kv_heads, c.head_dim)
        self.interleaved = bool(getattr(model.rope, "interleaved", False))

    @classmethod
    def for_generation(cls, model: nn.Module, cache: Any, *, padded: bool) -> EagerDecodeStep | None:
        """The step for this generation, or None when the forward must run (see the module docstring).
        Call it after the prefill: it reads the fused copies that the prefill refreshed."""
        from mlcore.model import Transformer
        from mlcore.model.mlp import SwiGLU

        if not isinstance(model, Transformer) or type(model.embed) is not nn.Embedding:
            return None
        if (padded or type(cache) is not StaticCache or cache.full_view or model.training
                or torch.is_grad_enabled() or model.pos_emb is not None or model.rope is None
                or not model.rope_tables.usable(model.rope, cache.max_len) or model.embed.max_norm is not None
                or not _no_hooks(model)):
            return None
        dtype = model.embed.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return None
        layers = []
        for block in model.layers:
            attn, mlp = block.attn, block.mlp
            i = block.layer_idx
            if (attn.rope is not model.rope or attn.sliding_window is not None or attn.alibi
                    or attn.backend != "naive" or not attn.causal
                    or type(mlp) is not SwiGLU or i not in cache.keys or cache.keys[i].dtype != dtype):
                return None
            qkv = attn._stacked_qkv()
            gate_up = mlp.gate_up_fusion((mlp.gate_proj, mlp.up_proj), False)
            if qkv is None or gate_up is None:
                return None
            o = attn.o_fusion((attn.o_proj,), False) or attn.o_proj
            down = mlp.down_fusion((mlp.down_proj,), False) or mlp.down_proj
            layers.append((block.attn_norm.forward, _direct(qkv), _direct(o), block.mlp_norm.forward,
                           _direct(gate_up), mlp.act, _direct(down), cache.keys[i], cache.values[i]))
        head = model.head_layout((model.lm_head,), False) or model.lm_head
        return cls(model, cache, layers, _direct(head))

    def __call__(self, token: Tensor) -> Tensor:
        """token (B, 1) long -> logits (B, 1, V); writes column ``past`` of every layer and advances the cache."""
        cache, model = self.cache, self.model
        B = token.shape[0]
        H, Hkv, D = self.heads
        past = cache.get_seq_length()
        end = past + 1
        if end > cache.max_len:
            raise ValueError(f"StaticCache is full: {past} columns cached + 1 new > max_len={cache.max_len}")
        slot = cache._slots(past, 1, token.device)  # (1,): the column, shared by every layer
        x = model.embed.forward(token)  # (B, 1, C)
        cos, signed_sin = model.rope_tables.rows(model.rope, x.dtype, self.interleaved, past, end)
        # every cached key is a real token at or before this one: the forward's additive mask is all zeros
        mask = torch.zeros(B, 1, 1, end, device=x.device)
        for attn_norm, qkv, o, mlp_norm, gate_up, act, down, keys, values in self.layers:
            qk, v = qkv(attn_norm(x)).view(B, H + 2 * Hkv, 1, D).split([H + Hkv, Hkv], dim=1)
            q, k = apply_rotary_tables(qk, cos, signed_sin, interleaved=self.interleaved).split([H, Hkv], dim=1)
            keys.index_copy_(2, slot, k)
            values.index_copy_(2, slot, v)
            f32 = [t if t.dtype == torch.float32 else t.float() for t in (q, keys.narrow(2, 0, end),
                                                                            values.narrow(2, 0, end))]
            a = F.scaled_dot_product_attention(*f32, attn_mask=mask, enable_gqa=Hkv != H)
            x = x + o((a if a.dtype == x.dtype else a.to(x.dtype)).reshape(B, 1, -1))
            gate, up = gate_up(mlp_norm(x)).chunk(2, dim=-1)
            x = x + down(act(gate) * up)
        cache.write_index(slot, slot.expand(B, 1))  # every row's new key is column ``past`` (no padding)
        cache.advance(1)
        return self.head(model.norm.forward(x))
