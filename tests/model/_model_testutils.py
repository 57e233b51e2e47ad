"""Tiny Hugging Face models with seeded random weights, shared by the model tests (no downloads)."""

from __future__ import annotations

import torch
import transformers

VOCAB = 128
HIDDEN = 64


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.08) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise (norm gains around 1, biases non-zero) so that a wrong
    layout, a missing bias or a wrong position shows up in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            if name.endswith("weight") and p.dim() == 1:  # norm gain
                p.copy_(1.0 + 2 * noise)
            elif p.dim() == 2 and "wte" not in name and "embed" not in name and "wpe" not in name:
                p.copy_(noise * 2)
            else:
                p.copy_(noise * 10 if p.dim() == 2 else noise)
    return model.eval()


def llama_family(arch: str = "llama", *, seed: int = 0, attn: str = "eager", **overrides) -> torch.nn.Module:
    """A 2-layer, hidden-64, vocab-128 Llama / Mistral / Qwen2 causal LM."""
    base = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-6)
    base.update(overrides)
    cfg_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls._from_config(cfg_cls(**base), attn_implementation=attn)
    return randomize_(model, seed)


def gpt2(*, seed: int = 0, attn: str = "eager", **overrides) -> torch.nn.Module:
    base = dict(n_embd=HIDDEN, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0,
                eos_token_id=0)
    base.update(overrides)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel._from_config(transformers.GPT2Config(**base), attn_implementation=attn)
    return randomize_(model, seed)


def left_padded_batch(lengths: list[int], total: int, *, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (B, total), row b left-padded to hold lengths[b] real tokens; mask 1 = token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, total - n:] = 1
        ids[b, : total - n] = 0
    return ids, mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """What transformers' generate passes: cumsum(mask) - 1, with pads clamped to a valid index."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def hf_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        if mask is None:
            return model(ids).logits
        return model(ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
