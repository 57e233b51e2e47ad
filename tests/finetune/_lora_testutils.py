"""Tiny models with seeded random weights and PEFT twins for the LoRA tests (offline, no downloads)."""

from __future__ import annotations

import copy
import warnings

import peft
import torch
import transformers
from torch import nn

from mlcore.finetune import lora_layers
from mlcore.model import Transformer, TransformerConfig

VOCAB = 128


def randomize_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Seeded noise in every parameter (norm gains around 1) so that a wrong layer or scale shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std
            p.copy_(1.0 + noise if p.dim() == 1 and name.endswith("weight") else noise)
    return model.eval()


def tiny_llama(seed: int = 0, **overrides) -> nn.Module:
    """A 2-layer, hidden-64, vocab-128 ``LlamaForCausalLM`` (GQA: 4 heads, 2 KV heads)."""
    kw = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64, rms_norm_eps=1e-6)
    kw.update(overrides)
    model = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**kw), attn_implementation="eager")
    return randomize_(model, seed)


def tiny_qwen2(seed: int = 0) -> nn.Module:
    """A 1-layer Qwen2 (q/k/v carry biases), for the ``bias`` options."""
    cfg = transformers.Qwen2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=VOCAB, max_position_embeddings=64)
    return randomize_(transformers.Qwen2ForCausalLM._from_config(cfg, attn_implementation="eager"), seed)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """A 1-layer GPT-2 (Conv1D layers, LayerNorms with biases), dropout off so train mode is deterministic."""
    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=32, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return randomize_(transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager"), seed)


def tiny_mlcore(seed: int = 0) -> Transformer:
    """mlcore's decoder at the size the brief names (tied embeddings, RoPE, SwiGLU, GQA)."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=32))
    return randomize_(model, seed)


def make(kind: str, seed: int = 0) -> nn.Module:
    return {"llama": tiny_llama, "mlcore": tiny_mlcore, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}[kind](seed)


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def token_ids(seed: int = 1, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomize_lora_(model: nn.Module, seed: int = 5, std: float = 0.2) -> None:
    """Non-zero A and B in every mlcore LoRA layer (B starts at zero, which would hide a wrong B path)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * std)


def peft_layers(peft_model: nn.Module) -> dict[str, nn.Module]:
    """PEFT's LoRA layers by the path of the module they wrap in the base model."""
    out = {}
    for name, m in peft_model.named_modules():
        if isinstance(m, peft.tuners.lora.LoraLayer):
            out[name.removeprefix("base_model.model.")] = m
    return out


def peft_twin(base: nn.Module, ours: nn.Module | None = None, **config) -> nn.Module:
    """``get_peft_model`` on a deep copy of ``base``; with ``ours`` given, PEFT's A and B are set to ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**config))
    if ours is not None:
        mine, theirs = lora_layers(ours), peft_layers(twin)
        assert set(mine) == set(theirs), (sorted(mine), sorted(theirs))
        with torch.no_grad():
            for name, layer in mine.items():
                theirs[name].lora_A["default"].weight.copy_(layer.lora_A.weight)
                theirs[name].lora_B["default"].weight.copy_(layer.lora_B.weight)
    return twin
