"""A decoder-only transformer built from mlcore's attention and positional parts, with HF conversion both ways.

    from mlcore.model import Transformer, TransformerConfig
    model = Transformer(TransformerConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2))
    logits = model(input_ids, attention_mask=mask)           # (B, T, vocab)
    hf_twin = model.to_hf(); mine = Transformer.from_hf(hf_twin)
"""

from mlcore.model import accounting
from mlcore.model.config import TransformerConfig
from mlcore.model.mlp import GeluMLP, SwiGLU
from mlcore.model.norm import LayerNorm, RMSNorm
from mlcore.model.transformer import Transformer

__all__ = ["Transformer", "TransformerConfig", "RMSNorm", "LayerNorm", "GeluMLP", "SwiGLU", "accounting"]
