"""A decoder-only transformer language model, built from mlcore's own attention and positional parts.

References
- Vaswani et al. 2017, "Attention Is All You Need" (the block); Radford et al. 2019, "Language Models are
  Unsupervised Multitask Learners" (GPT-2: pre-norm, learned positions, tied embeddings).
- Touvron et al. 2023, "LLaMA" (RMSNorm, SwiGLU, RoPE); Ainslie et al. 2023, "GQA"; Shazeer 2019, "Fast
  Transformer Decoding" (MQA); Jiang et al. 2023, "Mistral 7B" (sliding-window attention).
- Su et al. 2021, "RoFormer" (RoPE); Press et al. 2022, "Train Short, Test Long" (ALiBi).
- Karpathy's nanoGPT ``model.py`` for the shape of this file.

The forward pass, with shapes:

    input_ids (B, T) --embed--> x (B, T, C) [+ learned positions]
    for each block: x = x + Attn(Norm(x)); x = x + MLP(Norm(x))
    logits = Norm(x) @ W_vocab^T  -> (B, T, V)

Positions come from the attention mask: ``position_ids = cumsum(mask) - 1`` (clamped at 0), so that a
left-padded row gets the same positions, and hence the same logits, as the same row without padding. This is
what transformers' ``generate`` does; a plain transformers forward needs ``position_ids`` passed to agree.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from mlcore.attention import AttentionInputs, check_cache
from mlcore.attention.fused_linear import LinearFusion
from mlcore.attention.rope_tables import RotaryTableCache
from mlcore.model.block import Block
from mlcore.model.config import TransformerConfig
from mlcore.model.norm import build_norm
from mlcore.positional import LearnedEncoding, RotaryEmbedding


def _check_logits_to_keep(logits_to_keep: Any, T: int, validate: bool) -> torch.Tensor | None:
    """The index tensor of a tensor ``logits_to_keep`` (None for the int form), after checking either form.

    transformers' ``*ForCausalLM.forward`` slices ``hidden_states[:, -n:]`` for an int ``n`` (0 = everything) and
    ``hidden_states[:, idx]`` for a tensor ``idx`` of positions; mlcore takes the same two forms."""
    if isinstance(logits_to_keep, torch.Tensor):
        # int64 / int32 only: torch reads a bool or uint8 index as a mask, not as positions
        if logits_to_keep.dim() != 1 or logits_to_keep.dtype not in (torch.long, torch.int32):
            raise ValueError("logits_to_keep as a tensor must be a 1-D int64 / int32 tensor of positions, got shape "
                             f"{tuple(logits_to_keep.shape)} {logits_to_keep.dtype}")
        index = logits_to_keep
        if validate and not torch.compiler.is_compiling() and index.numel():
            lo, hi = (int(v) for v in torch.aminmax(index))
            if lo < -T or hi >= T:
                raise ValueError(f"logits_to_keep positions must lie in [-{T}, {T}) for T={T} input tokens, got "
                                 f"values in [{lo}, {hi}]")
        return index
    if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or logits_to_keep < 0:
        raise ValueError("logits_to_keep must be an int >= 0 (0 = every position) or a 1-D tensor of positions, "
                         f"got {logits_to_keep!r}")
    return None


class Transformer(nn.Module):
    """Decoder-only language model. ``model(input_ids) -> logits (B, T, vocab_size)``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = LearnedEncoding(c.max_seq_len, c.d_model) if c.position == "learned" else None
        self.rope = self._build_rope(c) if c.position == "rope" else None
        self.rope_tables = RotaryTableCache()  # RoPE rows for positions [0, L), made once (attention/rope_tables.py)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList([Block(c, i, rope=self.rope) for i in range(c.n_layers)])
        self.norm = build_norm(c.norm, c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head_layout = LinearFusion()  # the head's weight copied column-major for decoding (fused_linear.py)
        self.gradient_checkpointing = False  # see gradient_checkpointing_enable
        self.reset_parameters()
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # one matrix reads tokens in and writes logits out

    @staticmethod
    def _build_rope(c: TransformerConfig) -> nn.Module:
        return RotaryEmbedding(
            c.head_dim, base=c.rope_theta,
            max_position_embeddings=c.rope_max_position_embeddings or c.max_seq_len,
            scaling=c.rope_scaling, interleaved=c.rope_interleaved, partial_rotary_factor=c.partial_rotary_factor,
        )

    def reset_parameters(self) -> None:
        """GPT-2 initialization: N(0, 0.02) weights, zero biases, output projections scaled by 1/sqrt(2·n_layers)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm gains stay at 1, biases stay at 0 (set by their modules)
            residual_out = name.endswith(("o_proj.weight", "down_proj.weight"))  # writes into the stream
            scale = 1 / math.sqrt(2 * self.config.n_layers) if residual_out else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def gradient_checkpointing_enable(self, enable: bool = True, *,
                                      gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Activation checkpointing while training (Chen et al. 2016): each block keeps only its input and
        recomputes its activations during backward, trading one extra forward for O(n_layers) less memory.
        Same name as transformers' method, so QLoRA recipes work on both; mlcore always uses the non-reentrant
        variant, so ``gradient_checkpointing_kwargs`` may only say ``use_reentrant=False``."""
        if gradient_checkpointing_kwargs and gradient_checkpointing_kwargs != {"use_reentrant": False}:
            raise ValueError("gradient_checkpointing_kwargs: mlcore supports only {'use_reentrant': False}, got "
                             f"{gradient_checkpointing_kwargs!r}")
        self.gradient_checkpointing = bool(enable)

    def gradient_checkpointing_disable(self) -> None:
        """Turn activation checkpointing off."""
        self.gradient_checkpointing = False

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                cache: Any = None, position_ids: torch.Tensor | None = None,
                logits_to_keep: int | torch.Tensor = 0, validate: bool = True) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, V), or (B, logits_to_keep, V) for the last positions only.

        ``attention_mask``: (B, P + T) with 1 = token, 0 = padding, covering the ``P`` tokens already in
        ``cache`` too (a (B, T) mask is accepted when the cache is empty). ``cache``: an mlcore KV cache
        (:mod:`mlcore.attention.kv_cache`, e.g. ``mlcore.inference.DynamicCache()``); positions start after its
        length. ``position_ids`` (B, T) overrides the positions derived from the mask.
        ``logits_to_keep``: compute logits for the last n positions only (0 = all): prefill needs one row,
        not T. As in transformers, it may also be a 1-D integer tensor of positions (negative ones count from the
        end; any order, repeats allowed): logits (B, len(logits_to_keep), V) for those positions, in that order.
        ``validate=False`` skips the checks that wait for the device (token range, mask values):
        a decode loop validates its inputs once and then steps without them.
        """
        c = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise ValueError(f"input_ids must be a torch integer tensor of shape (B, T), got {type(input_ids).__name__}")
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        B, T = input_ids.shape
        if T == 0 or B == 0:
            raise ValueError(f"input_ids must hold at least one row and one token, got shape {(B, T)}")
        if attention_mask is not None and not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"attention_mask must be a (B, T) tensor of 0/1, got {type(attention_mask).__name__}")
        keep_index = _check_logits_to_keep(logits_to_keep, T, validate)
        check_cache(cache)
        if validate and not torch.compiler.is_compiling():  # one host sync, skipped by decode steps
            lo, hi = (int(v) for v in torch.aminmax(input_ids))
            if lo < 0 or hi >= c.vocab_size:
                raise ValueError(f"input_ids must lie in [0, vocab_size={c.vocab_size}), got values in [{lo}, {hi}] "
                                 "(tokenizer/model vocab mismatch?)")
        past = 0 if cache is None else int(cache.get_seq_length())
        # A streaming cache (sliding window with sinks) keeps positions bounded for RoPE / ALiBi, so the
        # sequence may run past max_seq_len; learned absolute positions never can.
        streaming = bool(getattr(cache, "streaming", False)) and c.position != "learned"
        if past + T > c.max_seq_len and not streaming:
            raise ValueError(f"input_ids: sequence length {past + T} (cache {past} + input {T}) exceeds "
                             f"max_seq_len={c.max_seq_len} of this model")
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, past + T):
                raise ValueError(f"attention_mask must have shape (B, P + T) = ({B}, {past + T}) (cache holds "
                                 f"P={past}, input T={T}), got {tuple(attention_mask.shape)}")
            if validate and not torch.compiler.is_compiling() and bool(
                    ((attention_mask != 0) & (attention_mask != 1)).any()):
                raise ValueError("attention_mask must hold only 0 (pad) and 1 (token), got values "
                                 f"{sorted(set(attention_mask.unique().tolist()))[:6]}")
        if position_ids is not None:
            if not isinstance(position_ids, torch.Tensor) or position_ids.is_floating_point():
                seen = position_ids.dtype if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
                raise ValueError(f"position_ids must be an integer (B, T) tensor, got {seen}")
            if position_ids.dim() == 2 and position_ids.shape[0] == 1 and B > 1:
                position_ids = position_ids.expand(B, -1)  # one row for every sequence, as transformers allows
            if tuple(position_ids.shape) != (B, T):
                raise ValueError(f"position_ids must have shape (B, T) = ({B}, {T}) or (1, T), got "
                                 f"{tuple(position_ids.shape)}")

        # Built once, shared by every layer: positions, RoPE cos/sin, column indices for the masks.
        inputs = AttentionInputs.build(B, T, past, input_ids.device, attention_mask=attention_mask,
                                       position_ids=position_ids, rope=self.rope, has_cache=cache is not None,
                                       rope_tables=self.rope_tables)
        x = self.embed(input_ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(inputs.positions, validate=validate)  # (B, T, C) learned absolute positions
        if self.training and self.drop.p > 0:  # dropout is the identity in eval: skip the call
            x = self.drop(x)
        checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for block in self.layers:
            if checkpoint:  # keep only each block's input; recompute its activations in the backward pass
                x = torch.utils.checkpoint.checkpoint(block, x, inputs=inputs, cache=None, use_reentrant=False)
            else:
                x = block(x, inputs=inputs, cache=cache)
        if keep_index is not None:  # chosen positions (transformers' tensor form of logits_to_keep)
            x = x[:, keep_index.to(x.device)]
        elif logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.head_layout.run_layer(self.lm_head, self.norm(x), self.training)  # (B, T, V)

    # --- Hugging Face interop (the code lives in hf_convert.py and pretrained.py) ---

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> Transformer:
        """Copy a transformers Llama / Mistral / Qwen2 / GPT-2 causal LM into an mlcore Transformer."""
        from mlcore.model.hf_convert import from_hf

        return from_hf(hf_model)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, dtype: torch.dtype | str = torch.float32,
                        quantize: str | None = None, quant_options: dict[str, Any] | None = None,
                        device: torch.device | str = "cpu") -> Transformer:
        """Read an HF model folder (``config.json`` + safetensors) offline; parameters in ``dtype`` on ``device``
        (``dtype="auto"``: the dtype the folder was saved in, transformers 5's default).

        Built on the meta device and filled tensor by tensor; ``quantize`` ("int8" | "int4" | "nf4" | "fp4")
        quantizes each linear weight as it is read, with ``quant_options`` as in ``mlcore.quant.quantize_model``.
        """
        from mlcore.model.pretrained import from_pretrained

        return from_pretrained(folder, dtype=dtype, quantize=quantize, quant_options=quant_options, device=device)

    def to_hf(self, *, dequantize: bool = False) -> nn.Module:
        """The same model as a transformers ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM``
        (a quantized model only with ``dequantize=True``)."""
        from mlcore.model.hf_convert import to_hf

        return to_hf(self, dequantize=dequantize)

    def save_pretrained(self, folder: str | Path, *, dequantize: bool = False) -> None:
        """Write ``config.json`` + ``model.safetensors`` that ``AutoModelForCausalLM.from_pretrained`` loads.

        A model with quantized layers is refused unless ``dequantize=True``, which writes their dequantized
        weights (full size); ``mlcore.quant.save_quantized`` keeps the codes."""
        from mlcore.model.pretrained import save_pretrained

        save_pretrained(self, folder, dequantize=dequantize)
