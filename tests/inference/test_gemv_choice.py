"""The GEMV a compiled batch-1 CPU step uses for its float linear layers (:mod:`mlcore.inference.gemv_choice`).

References: eager ``generate`` (checked against transformers' generate elsewhere) and transformers' own greedy
``generate`` on the same weights, for both kernels; the compiled graph's own code for which kernel it calls.
"""

from __future__ import annotations

import pytest
import torch

import mlcore.inference.gemv_choice as gemv_choice
from mlcore.inference import generate
from mlcore.inference.compiled import CompiledDecoder, decoder_for
from mlcore.inference.hf import hf_generate

from ._gen_testutils import NEW, library_matmuls, pair


@pytest.mark.parametrize("value", ["row_dots", "library", " Library "])
def test_the_environment_pins_the_choice_for_every_dtype(value, monkeypatch):
    monkeypatch.setenv("MLCORE_CPU_GEMV", value)
    for dtype in (torch.float32, torch.bfloat16):
        assert gemv_choice.single_row_gemv(dtype) == value.strip().lower()


def test_a_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("MLCORE_CPU_GEMV", "mkl")
    with pytest.raises(ValueError, match="MLCORE_CPU_GEMV.*'mkl'"):
        gemv_choice.single_row_gemv(torch.float32)


@pytest.mark.parametrize("intel", [True, False])
def test_auto_takes_the_library_for_float32_on_intel_with_mkl_only(intel, monkeypatch):
    monkeypatch.delenv("MLCORE_CPU_GEMV", raising=False)
    monkeypatch.setattr(gemv_choice, "_intel_with_mkl", lambda: intel)
    assert gemv_choice.single_row_gemv(torch.float32) == ("library" if intel else "row_dots")
    assert gemv_choice.single_row_gemv(torch.bfloat16) == "row_dots"
    assert gemv_choice.single_row_gemv(torch.float16) == "row_dots"


def _graph_calls(model, ids) -> set[str]:
    """Library matmul calls in the code of a batch-1 decoder's compiled step (bmm is attention, always there)."""
    from torch._inductor.utils import run_and_get_code

    decoder = CompiledDecoder(model, batch=1, max_len=32)
    with torch.no_grad():
        model(ids, cache=decoder.start())
        _, sources = run_and_get_code(decoder.step, ids[:, -1:], torch.full((1, 1), ids.shape[1]))
    return library_matmuls(sources)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["library", "row_dots"])
def test_both_kernels_decode_the_eager_and_transformers_tokens(kernel, monkeypatch):
    """Each kernel, pinned, gives eager generate's greedy tokens and transformers' (tiny float32 Llama, batch 1),
    keeps what it reads current when a weight is edited in place, and the graph calls the library matmul exactly
    when the library was chosen; the library path keeps no tiles."""
    import copy

    from mlcore.attention.fused_linear import LinearFusion

    monkeypatch.setenv("MLCORE_CPU_GEMV", kernel)
    hf, model = pair("llama")
    model, hf = copy.deepcopy(model), copy.deepcopy(hf)  # own weights: edited below
    ids = torch.randint(0, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(11))
    compiled = generate(model, ids, max_new_tokens=NEW, compile=True)
    assert torch.equal(compiled, generate(model, ids, max_new_tokens=NEW))
    assert torch.equal(compiled, hf_generate(hf, ids, max_new_tokens=NEW))
    decoder = decoder_for(model, batch=1, needed=7 + NEW, mode="default")
    assert decoder.gemv == kernel and decoder._direct is not None
    fusions = [v for m in model.modules() for v in vars(m).values() if isinstance(v, LinearFusion)]
    assert all(f.row_dots is (kernel == "row_dots") for f in fusions)
    if kernel == "library":
        assert decoder.tiles is False and not any(f._tiles for f in fusions)
    with torch.no_grad():  # in place, between two generations: the next one must read it
        model.lm_head.weight.mul_(-1)
        model.layers[0].mlp.down_proj.weight.mul_(0.5)
    assert torch.equal(generate(model, ids, max_new_tokens=NEW, compile=True), generate(model, ids, max_new_tokens=NEW))
    assert bool(_graph_calls(model, ids)) is (kernel == "library")
