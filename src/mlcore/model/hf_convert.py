"""Hugging Face checkpoints <-> mlcore ``Transformer``: configs and weights, both ways.

Architectures (transformers class -> what it needs from mlcore):

- ``LlamaForCausalLM``: RMSNorm, SwiGLU, RoPE (default / linear / dynamic / yarn / llama3), GQA/MQA,
  ``attention_bias`` (on q, k, v *and* o), ``mlp_bias``.
- ``MistralForCausalLM``: Llama plus a sliding window over the last ``sliding_window`` keys.
- ``Qwen2ForCausalLM``: Llama plus a bias on q, k, v only (not o); with ``use_sliding_window`` the window applies
  to the layers ``layer_types`` marks ``"sliding_attention"`` (from ``max_window_layers`` on).
- ``GPT2LMHeadModel``: LayerNorm, GELU (tanh) MLP, learned positions, biases everywhere, tied (or untied) head.
  GPT-2 stores its projections as ``Conv1D`` with weight shape (in, out) -- the transpose of ``nn.Linear`` -- and
  fuses q, k, v into one ``c_attn`` matrix whose output columns are [q | k | v]. Its optional score scalings
  (``scale_attn_weights=False``, ``scale_attn_by_inverse_layer_idx``) are folded into the query projection.

Config fields are checked against a list of what is understood: a field mlcore does not implement, or does not
know, is refused with a ``ValueError`` rather than silently producing different logits. Dropout settings only
matter in training and are not copied (the converted model has ``dropout=0``).

Tensor names and layouts (and the tied-embedding rule) live in ``hf_weights.py``; the meta-device build and
tensor-by-tensor fill that ``from_hf`` and ``from_pretrained`` share live in ``streaming.py``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from mlcore.model.config import TransformerConfig
from mlcore.model.hf_weights import import_plan, stored_head_differs

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
_DYNAMIC_HEADROOM = 8  # max_seq_len of a dynamic-NTK model, in multiples of max_position_embeddings * factor

# Fields of every transformers config that do not change the forward pass of a causal LM.
_GENERIC_KEYS = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type",
    "return_dict", "transformers_version", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
    "initializer_range", "tokenizer_class", "_attn_implementation_autoset", "task_specific_params",
    # generation defaults and framework flags that older config.json files carry
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "temperature",
    "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "diversity_penalty",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "decoder_start_token_id", "sep_token_id", "prefix", "finetuning_task", "torchscript", "tf_legacy_loss",
    "use_bfloat16", "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size",
}
_LLAMA_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
    "rope_parameters", "rope_theta", "rope_scaling", "attention_dropout", "head_dim",
}
_ARCH_KEYS = {
    "llama": _LLAMA_KEYS | {"attention_bias", "mlp_bias", "pretraining_tp"},
    "mistral": _LLAMA_KEYS | {"sliding_window", "layer_types"},
    "qwen2": _LLAMA_KEYS | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
    "gpt2": {
        "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
        "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "summary_type", "summary_use_proj",
        "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention",
        "tie_word_embeddings",
    },
}
# What transformers' config classes fill in for a field a config.json leaves out, where it changes the forward:
# a file without "sliding_window" is a Mistral with a 4096-token window (MistralConfig's default), not one without.
_HF_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048},
    "mistral": {"max_position_embeddings": 4096 * 32, "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768, "max_window_layers": 28},
    "gpt2": {"n_positions": 1024},
}
# transformers activation names -> mlcore activation names, each the same formula with the same roundings (bit for
# bit in every dtype: gelu_python_tanh and gelu_accurate are gelu_new's formula, swish is silu; the fused
# gelu_pytorch_tanh, the factored gelu_fast and the written-out gelu_python are kept apart, model/config.py)
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_python": "gelu_python",
                "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_pytorch_tanh", "gelu_python_tanh": "gelu_tanh",
                "gelu_fast": "gelu_fast", "gelu_accurate": "gelu_tanh", "relu": "relu", "quick_gelu": "quick_gelu",
                "relu2": "relu2", "relu6": "relu6", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid",
                "mish": "mish"}


def _refuse(arch: str, what: str) -> ValueError:
    return ValueError(f"{arch}: {what} is not implemented by mlcore's Transformer; refusing to convert rather than "
                      "produce different logits")


def architecture_of(config: dict[str, Any]) -> str:
    """The mlcore family name (``"llama"``, ``"mistral"``, ``"qwen2"``, ``"gpt2"``) of an HF config dict.

    ``model_type`` decides when it names a supported family, as in ``AutoModelForCausalLM.from_pretrained`` (its
    config class picks the model class; ``architectures`` is not read): a config.json saying ``model_type="qwen2"``
    with ``architectures=["LlamaForCausalLM"]`` is a Qwen2 model. ``architectures`` is the fallback.
    """
    if config.get("model_type") in _ARCH_KEYS:
        return config["model_type"]
    archs = config.get("architectures") or []
    for name in archs:
        if name in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[name]
    if not archs and config.get("model_type") in _ARCH_KEYS:
        return config["model_type"]
    seen = archs or config.get("model_type")
    raise ValueError(f"unsupported architecture {seen!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}")


def _rope_parameters(d: dict[str, Any], arch: str) -> dict[str, Any]:
    """One flat HF-style RoPE dict from either the v5 ``rope_parameters`` or the v4 ``rope_theta``/``rope_scaling``."""
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    if any(isinstance(v, dict) for v in rope.values()):
        raise _refuse(arch, f"per-layer-type rope_parameters {sorted(rope)}")
    if rope.get("rope_theta") is None:  # absent or null here: the top-level field, else transformers' default base
        if d.get("rope_theta") is None and ("rope_theta" in rope or "rope_theta" in d):
            # a null base with no number anywhere (transformers fails deep in RoPE on it): refuse, not guess 10000
            raise ValueError(f"{arch} config: rope_theta is null and no RoPE base is given elsewhere")
        rope["rope_theta"] = 10000.0 if d.get("rope_theta") is None else d["rope_theta"]
    rope["rope_type"] = rope.get("rope_type", rope.pop("type", "default"))
    rope.pop("type", None)
    if rope["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise _refuse(arch, f"rope_type={rope['rope_type']!r} (supported: {SUPPORTED_ROPE_TYPES})")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse(arch, f"partial_rotary_factor={rope['partial_rotary_factor']}")
    rope.pop("partial_rotary_factor", None)
    if rope["rope_type"] in ("yarn", "llama3", "longrope"):
        rope.setdefault("original_max_position_embeddings", d["max_position_embeddings"])
    return rope


_REQUIRED_DECODER = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_REQUIRED_GPT2 = ("vocab_size", "n_embd", "n_layer", "n_head")
# Integer fields read (None = absent where the field is optional), and the number fields with their lower bound.
_INT_FIELDS = {
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner"),
    "llama": _REQUIRED_DECODER + ("max_position_embeddings", "num_key_value_heads", "head_dim"),
}
_NUMBER_FIELDS = {"rms_norm_eps": 0.0, "layer_norm_epsilon": 0.0, "rope_theta": 0.0, "initializer_range": 0.0}
# Boolean fields that change the forward pass (transformers 5.25's config classes refuse non-bools in them too).
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "scale_attn_weights",
                "scale_attn_by_inverse_layer_idx", "add_cross_attention", "reorder_and_upcast_attn")


def _check_field_types(d: dict[str, Any], arch: str) -> None:
    """ValueError naming the field when a size is not a positive int (or ``max_window_layers`` a count), an epsilon
    or RoPE base not a finite number, ``rope_parameters`` not a dict or an activation not a name: transformers'
    config classes refuse these too, where a plain ``int()`` / ``float()`` here would fail without naming the field
    (or, for a NaN epsilon, not fail at all and give NaN logits)."""
    ints = [(k, 1) for k in _INT_FIELDS["gpt2" if arch == "gpt2" else "llama"]]
    if arch in ("mistral", "qwen2"):
        ints += [("sliding_window", 1), ("max_window_layers", 0)]
    for key, low in ints:
        v = d.get(key)
        if isinstance(v, float) and v.is_integer():
            v = d[key] = int(v)  # 128.0 in a hand-written config.json: the same size
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{arch} config: {key} must be an int >= {low}, got {v!r}")
    for key, low in _NUMBER_FIELDS.items():
        if d.get(key, 0.0) is None and key in ("rope_theta", "initializer_range"):
            continue  # null = absent (the base then comes from rope_parameters; the init scale is unused here)
        if key in d and not (isinstance(d[key], (int, float)) and not isinstance(d[key], bool)
                             and math.isfinite(d[key]) and d[key] >= low):
            raise ValueError(f"{arch} config: {key} must be a finite number >= {low}, got {d[key]!r}")
    for key in ("rope_parameters", "rope_scaling"):
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise ValueError(f"{arch} config: {key} must be a dict (or null), got {d[key]!r}")
    for key in ("hidden_act", "activation_function"):
        if key in d and not isinstance(d[key], str):
            raise ValueError(f"{arch} config: {key} must be an activation name, got {d[key]!r}")
    for key in _BOOL_FIELDS:  # bool("false") is True: a string or number here would silently flip the model
        if d.get(key) is not None and not isinstance(d[key], bool):
            raise ValueError(f"{arch} config: {key} must be true or false (a JSON boolean), got {d[key]!r}")
    types = d.get("layer_types")
    if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
        raise ValueError(f"{arch} config: layer_types must be a list of layer type names, got {types!r}")


def _flag(d: dict[str, Any], key: str, default: bool) -> bool:
    """A boolean config field (checked by ``_check_field_types``); null or absent = transformers' default."""
    return default if d.get(key) is None else d[key]


def config_from_hf(d: dict[str, Any]) -> TransformerConfig:
    """Translate an HF config dict (``config.to_dict()`` or a ``config.json``) to a ``TransformerConfig``."""
    arch = architecture_of(d)
    d = {**_HF_DEFAULTS[arch], **d}
    unknown = sorted(k for k in set(d) - _GENERIC_KEYS - _ARCH_KEYS[arch]
                     if d[k] is not None and d[k] != {} and d[k] != [])  # null / empty = absent (pruned_heads={})
    if unknown:
        raise _refuse(arch, f"config fields {unknown}")
    required = (*_REQUIRED_GPT2, "n_positions") if arch == "gpt2" else (*_REQUIRED_DECODER, "max_position_embeddings")
    missing = [k for k in required if d.get(k) is None]
    if missing:  # transformers would fill its own defaults and then fail on the weights' shapes
        raise ValueError(f"the {arch} config lacks the size field(s) {missing}: every size of the checkpoint must be "
                         "stated (a config.json saved by transformers has them)")
    _check_field_types(d, arch)
    if arch == "gpt2":
        return _gpt2_config(d)

    act = d.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise _refuse(arch, f"hidden_act={act!r} (supported: {sorted(_ACTIVATIONS)})")
    rope = _rope_parameters(d, arch)
    theta = rope.pop("rope_theta")
    _check_field_types({"rope_theta": theta}, arch)
    theta = float(theta)
    max_pos = int(d["max_position_embeddings"])
    max_seq_len = max_pos
    if rope["rope_type"] == "dynamic":  # dynamic NTK exists to run past the trained length: its base grows with
        # the sequence, with no hard end in transformers; allow a generous multiple of the factor-scaled length
        max_seq_len = _DYNAMIC_HEADROOM * int(max_pos * max(float(rope.get("factor", 1.0)), 1.0))
    sliding_window, layer_types = None, None
    attn_bias = _flag(d, "attention_bias", False)
    qkv_bias, out_bias = attn_bias, attn_bias
    if arch in ("mistral", "qwen2"):
        if arch == "qwen2":
            qkv_bias, out_bias = True, False
            sliding_window = d.get("sliding_window") if _flag(d, "use_sliding_window", False) else None
            types = d.get("layer_types")
            if sliding_window is None and types is not None and "sliding_attention" in types:
                # Qwen2Config then sets sliding_window=None and its forward fails building the sliding mask:
                # no reference output exists, and full attention would be a guess
                raise ValueError(f"{arch} config: layer_types marks sliding_attention layers but "
                                 f"use_sliding_window={d.get('use_sliding_window')!r} / sliding_window="
                                 f"{d.get('sliding_window')!r} gives them no window (transformers fails on this "
                                 "config too); set use_sliding_window=true with a sliding_window, or mark every "
                                 "layer full_attention")
        else:  # MistralForCausalLM slides every layer when sliding_window is set, whatever layer_types says
            sliding_window, types = d.get("sliding_window"), None
        if types is None and arch == "qwen2":  # what Qwen2Config derives when config.json has no layer_types
            types = ["sliding_attention" if sliding_window is not None and i >= d["max_window_layers"]
                     else "full_attention" for i in range(int(d["num_hidden_layers"]))]
        if types is not None:
            if len(types) != int(d["num_hidden_layers"]) or not set(types) <= {"full_attention", "sliding_attention"}:
                raise _refuse(arch, f"layer_types {types}")
            if sliding_window is None or "sliding_attention" not in types:
                sliding_window = None  # no layer slides
            elif "full_attention" in types:
                layer_types = list(types)  # some layers slide, the others attend to everything
    n_heads = int(d["num_attention_heads"])
    return TransformerConfig(
        vocab_size=int(d["vocab_size"]), d_model=int(d["hidden_size"]), n_layers=int(d["num_hidden_layers"]),
        n_heads=n_heads, n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
        head_dim=int(d.get("head_dim") or d["hidden_size"] // n_heads), d_ff=int(d["intermediate_size"]),
        max_seq_len=max_seq_len, norm="rmsnorm", norm_eps=float(d.get("rms_norm_eps", 1e-6)), mlp="swiglu",
        activation=_ACTIVATIONS[act], mlp_bias=_flag(d, "mlp_bias", False), position="rope",
        rope_theta=theta, rope_scaling=None if rope["rope_type"] == "default" else rope,
        rope_max_position_embeddings=max_pos, qkv_bias=qkv_bias, out_bias=out_bias,
        sliding_window=sliding_window, layer_types=layer_types,
        tie_embeddings=_flag(d, "tie_word_embeddings", False), dropout=0.0,
        initializer_range=float(d.get("initializer_range") or 0.02),
    )


def _gpt2_config(d: dict[str, Any]) -> TransformerConfig:
    # reorder_and_upcast_attn only changes the order of float operations (it upcasts to float32): same values.
    # scale_attn_weights / scale_attn_by_inverse_layer_idx change the score scale; gpt2_query_scales folds
    # them into the query projection.
    if _flag(d, "add_cross_attention", False):
        raise _refuse("gpt2", "add_cross_attention=True")
    act = d.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise _refuse("gpt2", f"activation_function={act!r} (supported: {sorted(_ACTIVATIONS)})")
    d_model = int(d["n_embd"])
    return TransformerConfig(
        vocab_size=int(d["vocab_size"]), d_model=d_model, n_layers=int(d["n_layer"]), n_heads=int(d["n_head"]),
        d_ff=int(d.get("n_inner") or 4 * d_model), max_seq_len=int(d["n_positions"]), norm="layernorm",
        norm_eps=float(d.get("layer_norm_epsilon", 1e-5)), mlp="gelu", activation=_ACTIVATIONS[act],
        mlp_bias=True, position="learned", qkv_bias=True, out_bias=True,
        tie_embeddings=_flag(d, "tie_word_embeddings", True), dropout=0.0,
        initializer_range=float(d.get("initializer_range") or 0.02),
    )


# --- weights (names and layouts: hf_weights.py; streaming: streaming.py) ----------------------------------

def gpt2_query_scales(d: dict[str, Any]) -> list[float] | None:
    """Per-layer factors that turn GPT-2's score scale into mlcore's ``1/sqrt(D)``, or None when all are 1.

    transformers' GPT-2 divides the scores ``q . k`` by ``sqrt(D)`` only if ``scale_attn_weights`` and also by
    ``layer_idx + 1`` if ``scale_attn_by_inverse_layer_idx``. Both are linear in ``q``, so multiplying the query
    projection (weight and bias) by ``s_l = sqrt(D)^[not scale_attn_weights] / (l + 1)^[by_inverse_layer_idx]``
    gives the same scores with mlcore's fixed ``1/sqrt(D)``.
    """
    if architecture_of(d) != "gpt2":
        return None
    head_dim = int(d["n_embd"]) // int(d["n_head"])
    base = 1.0 if _flag(d, "scale_attn_weights", True) else head_dim ** 0.5
    inverse = _flag(d, "scale_attn_by_inverse_layer_idx", False)
    scales = [base / (i + 1 if inverse else 1) for i in range(int(d["n_layer"]))]
    return None if all(x == 1.0 for x in scales) else scales


def untie_if_stored_head_differs(config: TransformerConfig, keys: Iterable[str], arch: str,
                                 read: Callable[[str], Any]) -> TransformerConfig:
    """``config`` untied when it says ``tie_embeddings`` but the checkpoint's ``lm_head.weight`` holds other values
    than the embedding (``hf_weights.stored_head_differs``); transformers 5 keeps that head too, and warns."""
    if config.tie_embeddings and stored_head_differs(keys, arch, read):
        warnings.warn("tie_word_embeddings=True, but the checkpoint's lm_head.weight differs from the input "
                      "embedding: keeping both (untied), as transformers does", stacklevel=4)
        return dataclasses.replace(config, tie_embeddings=False)
    return config


def from_hf(hf_model: nn.Module) -> nn.Module:
    """A transformers causal LM (Llama, Mistral, Qwen2, GPT-2) -> mlcore ``Transformer`` with the same weights
    (copied, in the HF model's dtype), built on the meta device and filled tensor by tensor."""
    from mlcore.model.streaming import DictSource, build_on_meta, stream_into
    from mlcore.model.transformer import Transformer

    cls_name = type(hf_model).__name__
    if cls_name not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"hf_model: unsupported architecture {cls_name!r}; supported: {sorted(SUPPORTED_ARCHITECTURES)}")
    d = hf_model.config.to_dict()
    d["architectures"], d["model_type"] = [cls_name], SUPPORTED_ARCHITECTURES[cls_name]  # the class that runs
    config = config_from_hf(d)
    sd = hf_model.state_dict()
    config = untie_if_stored_head_differs(config, sd.keys(), SUPPORTED_ARCHITECTURES[cls_name], sd.__getitem__)
    plan = import_plan(sd.keys(), SUPPORTED_ARCHITECTURES[cls_name], tie_embeddings=config.tie_embeddings,
                       query_scales=gpt2_query_scales(d))
    model = build_on_meta(Transformer, config)
    first = next(hf_model.parameters())
    stream_into(model, plan, DictSource(sd, cls_name), dtype=first.dtype, device=first.device)
    return model.eval()


# --- export (Llama family) -----------------------------------------------------------------------------------

def config_to_hf(config: TransformerConfig) -> dict[str, Any]:
    """A ``TransformerConfig`` of the Llama family -> an HF ``config.json`` dict (Llama, Mistral or Qwen2)."""
    c = config
    problems = [f"{k}={getattr(c, k)!r}" for k, ok in (("norm", "rmsnorm"), ("mlp", "swiglu"), ("position", "rope"),
                                                       ("rope_interleaved", False), ("partial_rotary_factor", 1.0))
                if getattr(c, k) != ok]
    qwen2_shape = c.qkv_bias and not c.out_bias and not c.mlp_bias
    types = [("sliding_attention" if c.layer_window(i) else "full_attention") for i in range(c.n_layers)]
    window = c.sliding_window if "sliding_attention" in types else None  # None when no layer slides
    if window is not None and (c.qkv_bias or c.out_bias or c.mlp_bias) and not qwen2_shape:
        problems.append("sliding_window together with biases other than Qwen2's (q, k, v only)")
    if len(set(types)) > 1 and not qwen2_shape:
        problems.append("sliding_window on some layers only, without Qwen2's q/k/v biases")
    if c.qkv_bias and not c.out_bias and c.mlp_bias:
        problems.append("qkv_bias without out_bias together with mlp_bias")
    if c.out_bias and not c.qkv_bias:
        problems.append("out_bias without qkv_bias")
    # mlcore's written-out tanh GELU is transformers' gelu_new (gelu_pytorch_tanh is torch's fused kernel: other
    # roundings); every other mlcore name is transformers' name for the same formula
    act = {"gelu_tanh": "gelu_new"}.get(c.activation, c.activation)
    if problems:
        raise ValueError(f"to_hf exports Llama-family models (RMSNorm, SwiGLU, RoPE); this config has {problems}")
    rope: dict[str, Any] = {**(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    # transformers 4's spelling "type" (which mlcore's RoPE reads too) becomes "rope_type": a dict holding both a
    # default "rope_type" and "type": "linear" loads in transformers 5 as unscaled RoPE
    rope = {"rope_type": rope.pop("rope_type", rope.pop("type", "default")), **rope}
    rope.pop("type", None)
    max_pos = c.rope_max_position_embeddings or c.max_seq_len
    d: dict[str, Any] = {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim, "hidden_act": act, "max_position_embeddings": max_pos, "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, "rope_parameters": rope, "initializer_range": c.initializer_range,
        "attention_dropout": 0.0,
    }
    if qwen2_shape:
        d.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=window is not None,
                 sliding_window=window, layer_types=types,
                 max_window_layers=types.index("sliding_attention") if window is not None else c.n_layers)
    elif window is not None:
        d.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=window)
    else:
        d.update(model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=c.qkv_bias,
                 mlp_bias=c.mlp_bias)
    return d


def to_hf(model: nn.Module, *, dequantize: bool = False) -> nn.Module:
    """mlcore ``Transformer`` (Llama family) -> transformers ``*ForCausalLM`` with the same weights, in eval mode.

    Quantized layers are refused unless ``dequantize`` (then their dequantized weights are copied)."""
    import transformers

    from mlcore.model.hf_weights import hf_state_dict
    from mlcore.model.pretrained import exportable_state_dict

    d = config_to_hf(model.config)
    plain, _ = exportable_state_dict(model, dequantize=dequantize, caller="to_hf")
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[d["model_type"]]
    arch = d.pop("architectures")
    d.pop("model_type")
    hf_config = cfg_cls(**d, architectures=arch)
    hf_model = getattr(transformers, arch[0])(hf_config)
    sd = hf_state_dict(plain, tie_embeddings=model.config.tie_embeddings)
    missing, unexpected = hf_model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: state dict mismatch, missing {missing}, unexpected {unexpected}")
    if model.config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.to(model.embed.weight.dtype).eval()
