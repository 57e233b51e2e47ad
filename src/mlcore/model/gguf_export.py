"""Export an mlcore Llama-style ``Transformer`` (and its BPE tokenizer) to GGUF, the file llama.cpp runs.

GGUF (ggml's "GGML Universal File", ``ggml/docs/gguf.md``) is one file: a header, typed key-value metadata
(``general.architecture = "llama"``, ``llama.block_count``, ``tokenizer.ggml.tokens``, ...), a table of tensor
infos (name, shape, ggml type, offset) and the aligned tensor data. It is written here with the ``gguf``
package's ``GGUFWriter`` (the library llama.cpp's own ``convert_hf_to_gguf.py`` uses), no converter script:

    mlcore                         GGUF (llama.cpp LLAMA arch)       shape (numpy order: out, in)
    embed.weight                   token_embd.weight                 (V, C)
    layers.{i}.attn_norm.weight    blk.{i}.attn_norm.weight          (C,)         always F32
    layers.{i}.attn.q_proj.weight  blk.{i}.attn_q.weight             (H*D, C)     rows permuted, see below
    layers.{i}.attn.k_proj.weight  blk.{i}.attn_k.weight             (Hkv*D, C)   rows permuted
    layers.{i}.attn.v_proj.weight  blk.{i}.attn_v.weight             (Hkv*D, C)
    layers.{i}.attn.o_proj.weight  blk.{i}.attn_output.weight        (C, H*D)
    layers.{i}.mlp_norm.weight     blk.{i}.ffn_norm.weight           (C,)         always F32
    layers.{i}.mlp.gate_proj/up_proj/down_proj   blk.{i}.ffn_gate / ffn_up / ffn_down
    norm.weight                    output_norm.weight                (C,)         always F32
    lm_head.weight                 output.weight (untied only: llama.cpp reuses token_embd when it is absent)

**RoPE layout.** llama.cpp's LLAMA graph rotates *adjacent* pairs ``(x[2i], x[2i+1])`` (Meta's original
layout, ggml "normal" rope); mlcore and transformers rotate ``(x[i], x[i + D/2])`` (rotate-half). The two are
the same rotation of permuted coordinates, so each head's q/k projection rows are permuted with
:func:`mlcore.positional.half_to_interleaved` (``LlamaModel.permute`` in llama.cpp's converter); the scores
``q . k`` do not change, and V / O are untouched. A model built with ``rope_interleaved=True`` is written as is.

**Tensor types** (``dtype``): ``"f32"``, ``"f16"``, ``"bf16"``, ``"q8_0"`` (blocks of 32 weights along the
input dim, one fp16 scale ``d = max|w| / 127``, ``w ~ d * q`` with int8 ``q``: 8.5 bits/weight), ``"q4_0"``
(blocks of 32, ``d = w_absmax_signed / -8``, ``w ~ d * (q - 8)`` with 4-bit ``q``: 4.5 bits/weight). The
quantized types come from ``gguf.quants`` (bit-exact with ggml's reference quantizer); a weight whose input dim
is not a multiple of 32 falls back to F16, as llama.cpp's converter does. K-quants (``q4_K``) have no Python
quantizer: write f32 and run ``llama_model_quantize`` (see ``mlcore.bench.llamacpp.quantize_gguf``).

**Tokenizer.** mlcore's byte-level BPE is llama.cpp's ``"gpt2"`` tokenizer model: tokens are GPT-2's printable
byte strings (``" the"`` -> ``"Ġthe"``), merges are ``"a b"`` lines in rank order (every split of every token,
as in :func:`mlcore.tokenizer.export.all_merges`), specials are CONTROL tokens, ids past the tokenizer's
vocabulary are UNUSED ``[PAD{i}]``. The pre-tokenizer is a name llama.cpp knows: ``GPT4_PATTERN`` (cl100k) and its
older minbpe spelling map to ``"llama-bpe"`` (Llama 3's split, the same up to possessive quantifiers and trailing
white space), ``GPT2_PATTERN`` to ``"gpt-2"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlcore.positional import half_to_interleaved
from mlcore.tokenizer.export import all_merges, byte_level_string
from mlcore.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, GPT4_PATTERN_MINBPE

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
PRE_TOKENIZERS = {GPT4_PATTERN: "llama-bpe", GPT4_PATTERN_MINBPE: "llama-bpe", GPT2_PATTERN: "gpt-2"}
QUANT_BLOCK = 32  # Q8_0 / Q4_0 weights per block, along the input dim

_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.o_proj.weight": "attn_output.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - gguf ships with the [hf] extra
        raise ImportError("save_gguf needs the `gguf` package: pip install gguf (in the [hf] and [anchors] "
                          "extras)") from exc
    return gguf


def check_exportable(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a float mlcore Transformer llama.cpp's LLAMA arch can run."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "rope_interleaved") or not hasattr(model, "layers"):
        raise ValueError(f"model must be an mlcore Transformer, got {type(model).__name__}")
    wanted = {"norm": "rmsnorm", "mlp": "swiglu", "activation": "silu", "position": "rope", "qkv_bias": False,
              "out_bias": False, "mlp_bias": False, "partial_rotary_factor": 1.0}
    for key, value in wanted.items():
        if getattr(config, key) != value:
            raise ValueError(f"model.config.{key} must be {value!r} for llama.cpp's LLAMA architecture, "
                             f"got {getattr(config, key)!r}")
    if any(config.layer_window(i) is not None for i in range(config.n_layers)):  # a window no layer uses is fine
        raise ValueError(f"model.config.sliding_window must be None (or used by no layer) for llama.cpp's LLAMA "
                         f"architecture, got {config.sliding_window!r}")
    scaling = config.rope_scaling
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) != "linear":
        raise ValueError(f"model.config.rope_scaling: only None or linear scaling is exported, got {scaling!r}")
    for name, module in model.named_modules():
        if type(module).__name__ == "QuantizedLinear":
            raise ValueError(f"model has a quantized layer ({name}); export the float model and pick a GGUF "
                             f"dtype from {GGUF_DTYPES} instead")


def gguf_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float32 tensor in llama.cpp's layout (q/k rows permuted to the interleaved RoPE pairs).

    Shapes are PyTorch's ``(out_features, in_features)``; ``GGUFWriter`` stores them reversed (ggml's ``ne``).
    A tied ``lm_head`` is left out (llama.cpp uses ``token_embd`` when ``output.weight`` is absent).
    """
    check_exportable(model)
    c = model.config
    out: dict[str, torch.Tensor] = {"token_embd.weight": model.embed.weight}
    for i, block in enumerate(model.layers):
        sd = block.state_dict()
        for ours, theirs in _LAYER_NAMES.items():
            t = sd[ours]
            if not c.rope_interleaved and ours in ("attn.q_proj.weight", "attn.k_proj.weight"):
                t = half_to_interleaved(t, head_dim=c.head_dim)
            out[f"blk.{i}.{theirs}"] = t
    out["output_norm.weight"] = model.norm.weight
    if not c.tie_embeddings:
        out["output.weight"] = model.lm_head.weight
    return {k: v.detach().to(device="cpu", dtype=torch.float32).contiguous() for k, v in out.items()}


def _encode(gguf: Any, array: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw ggml type or None) for one tensor; 1-D tensors stay F32, unquantizable rows fall back to F16."""
    q = gguf.GGMLQuantizationType
    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), None
    if dtype == "f16" or (dtype in ("q8_0", "q4_0") and array.shape[-1] % QUANT_BLOCK):
        return array.astype(np.float16), None
    qtype = {"bf16": q.BF16, "q8_0": q.Q8_0, "q4_0": q.Q4_0}[dtype]
    return gguf.quants.quantize(array, qtype), qtype


def tokenizer_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """``tokens``, ``token_types``, ``merges``, ``pre``, ``eos_token_id`` of a byte-level BPE tokenizer, padded
    to ``vocab_size`` entries (the model's embedding rows)."""
    for attr in ("vocab", "merges", "special_tokens", "pattern", "ranks"):
        if not hasattr(tokenizer, attr):
            raise ValueError(f"tokenizer must be an mlcore BPETokenizer (missing .{attr}), got "
                             f"{type(tokenizer).__name__}")
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer.vocab_size={tokenizer.vocab_size} exceeds the model's vocab_size={vocab_size}")
    pre = PRE_TOKENIZERS.get(tokenizer.pattern)
    if pre is None:
        raise ValueError("tokenizer.pattern must be GPT4_PATTERN or GPT2_PATTERN (llama.cpp only knows fixed "
                         f"pre-tokenizers), got {tokenizer.pattern!r}")
    normal, control, unused = 1, 3, 5  # gguf.TokenType.NORMAL / CONTROL / UNUSED
    tokens = [byte_level_string(b) for b in tokenizer.vocab]
    types = [normal] * len(tokens)
    specials = {i: s for s, i in tokenizer.special_tokens.items()}
    for i in range(len(tokens), vocab_size):
        tokens.append(specials.get(i, f"[PAD{i}]"))
        types.append(control if i in specials else unused)
    merges = [f"{tokens[a]} {tokens[b]}" for a, b in all_merges(tokenizer)]
    eos = tokenizer.special_tokens.get("<|endoftext|>", next(iter(specials), None))
    return {"tokens": tokens, "token_types": types, "merges": merges, "pre": pre, "eos_token_id": eos}


def save_gguf(model: nn.Module, path: str | Path, *, tokenizer: Any, dtype: str = "f32",
              name: str = "mlcore") -> Path:
    """Write ``model`` (an mlcore Llama-style Transformer) and ``tokenizer`` to a GGUF file llama.cpp loads.

    ``dtype``: one of ``GGUF_DTYPES`` for the 2-D weights (norm gains are always F32). Returns the path.
    """
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"dtype must be one of {GGUF_DTYPES}, got {dtype!r}")
    if not isinstance(name, str):
        raise ValueError(f"name must be a str (general.name), got {name!r}")
    gguf = _import_gguf()
    tensors = gguf_tensors(model)
    c = model.config
    meta = tokenizer_metadata(tokenizer, c.vocab_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.d_ff)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    if c.head_dim * c.n_heads != c.d_model:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_theta))
    if c.rope_scaling is not None:  # linear (position interpolation), checked above
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(c.rope_scaling["factor"]))
    w.add_layer_norm_rms_eps(float(c.norm_eps))

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(meta["pre"])
    w.add_token_list(meta["tokens"])
    w.add_token_types(meta["token_types"])
    w.add_token_merges(meta["merges"])
    if meta["eos_token_id"] is not None:
        w.add_bos_token_id(meta["eos_token_id"])
        w.add_eos_token_id(meta["eos_token_id"])
    w.add_add_bos_token(False)  # mlcore's tokenizer adds nothing; the prompt's ids are fed as they are

    if dtype in ("q8_0", "q4_0"):  # a NaN / inf block casts to arbitrary int codes, with only numpy's warning
        bad = [k for k, t in tensors.items() if t.dim() > 1 and not bool(torch.isfinite(t).all())]
        if bad:
            raise ValueError(f"dtype={dtype!r}: tensors {bad[:4]} hold NaN or inf, which {dtype} blocks cannot store")
    for tname, t in tensors.items():
        data, raw_dtype = _encode(gguf, t.numpy(), dtype)
        w.add_tensor(tname, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
