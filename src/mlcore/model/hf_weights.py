"""Hugging Face tensor names and layouts <-> mlcore's, on state dicts (parameters and buffers alike).

**Llama family (Llama, Mistral, Qwen2), both ways.** One table of module paths, read left to right on import
and right to left on export:

    mlcore                    transformers
    embed                     model.embed_tokens
    layers.{i}.attn_norm      model.layers.{i}.input_layernorm
    layers.{i}.attn           model.layers.{i}.self_attn          (q_proj, k_proj, v_proj, o_proj)
    layers.{i}.mlp_norm       model.layers.{i}.post_attention_layernorm
    layers.{i}.mlp            model.layers.{i}.mlp                (gate_proj, up_proj, down_proj)
    norm                      model.norm
    lm_head                   lm_head

Only the module path changes; what follows it (``weight``, ``bias``, a quantized layer's ``weight_data``,
``weight_scales``, ...) is kept, so a state dict of any content converts, and
``from_hf_name(to_hf_name(n)) == n``.
Checkpoints of the bare ``LlamaModel`` (names without ``model.``) are read too.

**GPT-2, import only.** ``Conv1D`` stores (in, out), the transpose of ``nn.Linear``; ``c_attn`` fuses q, k, v
with output columns [q | k | v]; the optional score scalings are folded into the query projection
(``gpt2_query_scales`` in ``hf_convert``). Each mlcore tensor is read from one HF tensor through a small
``transform``, so that a loader can stream tensor by tensor.

**Tied embeddings (the rule).** With ``tie_embeddings`` (HF ``tie_word_embeddings``) the vocabulary matrix is
one tensor, ``embed.weight``; ``lm_head.weight`` is the same object. On import an ``lm_head.weight`` in the file
equal to the embedding is ignored; one with other values means the model is not tied, whatever the config says
(transformers 5 keeps both then, with a warning, and so does :func:`stored_head_differs`'s caller); a tied file that
stores the matrix as ``lm_head.weight`` only gives the embedding from it, as transformers' tying does. On export only
``model.embed_tokens.weight`` is written. Untied, both are separate tensors and both must be present.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

_LLAMA_TABLE: tuple[tuple[str, str], ...] = (
    ("embed", "model.embed_tokens"),
    ("layers.{i}.attn_norm", "model.layers.{i}.input_layernorm"),
    ("layers.{i}.attn", "model.layers.{i}.self_attn"),
    ("layers.{i}.mlp_norm", "model.layers.{i}.post_attention_layernorm"),
    ("layers.{i}.mlp", "model.layers.{i}.mlp"),
    ("norm", "model.norm"),
    ("lm_head", "lm_head"),
)
# Buffers transformers may keep in a state dict that mlcore computes itself (RoPE frequencies, GPT-2 masks).
_HF_BUFFERS = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias)$")


def _pattern(template: str) -> re.Pattern[str]:
    """'layers.{i}.attn' -> regex matching 'layers.<int>.attn.' at the start of a name (groups: i, rest)."""
    body = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(rf"^{body}\.(?P<rest>.+)$")


_TO_HF = [(_pattern(m), h) for m, h in _LLAMA_TABLE]
_FROM_HF = [(_pattern(h), m) for m, h in _LLAMA_TABLE]


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.replace("{i}", match.groupdict().get("i") or "") + "." + match.group("rest")
    return None


def to_hf_name(name: str) -> str:
    """An mlcore tensor name -> its transformers Llama-family name (ValueError if the table has no entry)."""
    out = _rename(name, _TO_HF)
    if out is None:
        raise ValueError(f"tensor {name!r} has no Hugging Face Llama-family name (known module paths: "
                         f"{[m for m, _ in _LLAMA_TABLE]})")
    return out


def from_hf_name(name: str) -> str | None:
    """A transformers Llama-family tensor name -> mlcore's, or None when the table has no entry."""
    out = _rename(name, _FROM_HF)
    if out is None and not name.startswith(("model.", "lm_head.")):
        out = _rename("model." + name, _FROM_HF)  # a bare LlamaModel checkpoint
    return out


def hf_state_dict(sd: Mapping[str, torch.Tensor], *, tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """mlcore state dict -> transformers Llama-family names (a tied ``lm_head.weight`` is left out)."""
    return {to_hf_name(k): v for k, v in sd.items() if not (tie_embeddings and k == "lm_head.weight")}


# --- import plans ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where one mlcore tensor comes from: HF tensor ``key``, passed through ``transform`` (None = as stored)."""

    key: str
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.transform is None else self.transform(t)

    def shape(self, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The mlcore shape this source yields from a stored tensor of ``stored_shape`` (computed on meta)."""
        return tuple(self.apply(torch.empty(stored_shape, device="meta")).shape)


@dataclass
class ImportPlan:
    """``sources``: mlcore name -> Source; ``ignored``: HF keys deliberately not read (buffers mlcore computes, a
    tied ``lm_head``); ``unknown``: HF keys with no mlcore counterpart."""

    sources: dict[str, Source]
    ignored: list[str]
    unknown: list[str]


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.t()


def _qkv_part(j: int, transpose: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def part(t: torch.Tensor) -> torch.Tensor:  # c_attn (in, 3C) weight / (3C,) bias -> part j
        width = t.shape[-1] // 3
        piece = t[..., j * width:(j + 1) * width]
        return piece.t() if transpose else piece
    return part


def _scaled(source: Source, scale: float) -> Source:
    def transform(t: torch.Tensor) -> torch.Tensor:
        # A half-precision checkpoint is scaled in float32: the loader then rounds once, to the dtype asked for.
        # Scaling in bfloat16 first would round twice and give a float32 load other logits than transformers'
        # (which reads the same bfloat16 weights and scales the scores in float32).
        t = source.apply(t)
        return t.to(torch.promote_types(t.dtype, torch.float32)) * scale
    return Source(source.key, transform)


def _gpt2_sources(key: str) -> dict[str, Source] | None:
    """mlcore tensors read from GPT-2 tensor ``key`` (None when unknown)."""
    name = key.removeprefix("transformer.")
    top = {"wte.weight": "embed.weight", "wpe.weight": "pos_emb.weight", "ln_f.weight": "norm.weight",
           "ln_f.bias": "norm.bias", "lm_head.weight": "lm_head.weight"}
    if name in top:
        return {top[name]: Source(key)}
    m = re.match(r"^h\.(\d+)\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)$", name)
    if not m:
        return None
    p, module, kind = f"layers.{m.group(1)}.", m.group(2), m.group(3)
    if module in ("ln_1", "ln_2"):
        return {p + ("attn_norm." if module == "ln_1" else "mlp_norm.") + kind: Source(key)}
    if module == "attn.c_attn":
        return {p + f"attn.{n}_proj.{kind}": Source(key, _qkv_part(j, kind == "weight"))
                for j, n in enumerate("qkv")}
    target = {"attn.c_proj": "attn.o_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}[module]
    return {p + target + "." + kind: Source(key, _transpose if kind == "weight" else None)}


def import_plan(keys: Iterable[str], arch: str, *, tie_embeddings: bool,
                query_scales: list[float] | None = None) -> ImportPlan:
    """Which HF tensor (and transform) fills each mlcore tensor, for a checkpoint holding ``keys``.

    ``arch``: ``"llama"``, ``"mistral"``, ``"qwen2"`` or ``"gpt2"``; ``query_scales``: per-layer factors folded
    into ``q_proj`` weight and bias (GPT-2's score scalings). Two HF keys mapping to one mlcore name (``model.x``
    and a bare ``x``) raise ValueError.
    """
    sources: dict[str, Source] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key in keys:
        if _HF_BUFFERS.search(key):
            ignored.append(key)
            continue
        if arch == "gpt2":
            found = _gpt2_sources(key)
        else:
            name = from_hf_name(key)
            found = None if name is None else {name: Source(key)}
        if found is None:
            unknown.append(key)
            continue
        for name, source in found.items():
            if tie_embeddings and name == "lm_head.weight":
                ignored.append(key)
                continue
            if name in sources:
                raise ValueError(f"checkpoint tensors {sources[name].key!r} and {key!r} both map to mlcore's "
                                 f"{name!r}")
            sources[name] = source
    if tie_embeddings and "embed.weight" not in sources:
        # a tied checkpoint may keep the shared matrix under the head's name only; transformers ties it back into
        # the input embedding (both are (V, C), in GPT-2 too), so read the embedding from there
        heads = [k for k in ignored if _head_name(k, arch) == "lm_head.weight"]
        if heads:
            ignored.remove(heads[0])
            sources["embed.weight"] = Source(heads[0])
    if query_scales is not None:
        for i, scale in enumerate(query_scales):
            for kind in ("weight", "bias"):
                name = f"layers.{i}.attn.q_proj.{kind}"
                if name in sources:
                    sources[name] = _scaled(sources[name], scale)
    return ImportPlan(sources, ignored, unknown)


def _head_name(key: str, arch: str) -> str | None:
    """The mlcore name HF tensor ``key`` maps to when it is a single tensor (None otherwise)."""
    found = _gpt2_sources(key) if arch == "gpt2" else {from_hf_name(key): None}
    return next(iter(found)) if found is not None and len(found) == 1 else None


def stored_head_differs(keys: Iterable[str], arch: str, read: Callable[[str], torch.Tensor]) -> bool:
    """True when a checkpoint holding ``keys`` has a vocabulary head (``lm_head.weight``) whose values differ from its
    input embedding's, read through ``read(key)``: then the model is untied, even where ``tie_word_embeddings``
    says otherwise (transformers 5 keeps the stored head in that case too)."""
    sources = import_plan(keys, arch, tie_embeddings=False).sources
    embed, head = sources.get("embed.weight"), sources.get("lm_head.weight")
    if embed is None or head is None:
        return False
    a, b = read(embed.key), read(head.key)
    return not (a.data_ptr() == b.data_ptr() or (a.shape == b.shape and torch.equal(a, b)))


def state_dict_from_hf(sd: Mapping[str, torch.Tensor], arch: str, *, tie_embeddings: bool = False,
                       query_scales: list[float] | None = None) -> dict[str, torch.Tensor]:
    """A whole HF state dict -> mlcore names and layouts (unknown names are dropped: see ``import_plan``)."""
    plan = import_plan(sd.keys(), arch, tie_embeddings=tie_embeddings, query_scales=query_scales)
    return {name: src.apply(sd[src.key]) for name, src in plan.sources.items()}
