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


@pytest.mark.parametrize("value", ["row_dots", "library", "template", " Library "])
def test_the_environment_pins_the_choice_for_every_dtype(value, monkeypatch):
    monkeypatch.setenv("MLCORE_CPU_GEMV", value)
    for dtype in (torch.float32, torch.bfloat16):
        assert gemv_choice.single_row_gemv(dtype) == value.strip().lower()


def test_a_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("MLCORE_CPU_GEMV", "mkl")
    with pytest.raises(ValueError, match="MLCORE_CPU_GEMV.*'mkl'"):
        gemv_choice.single_row_gemv(torch.float32)


@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize("intel", [True, False])
def test_auto_takes_mkl_for_float32_on_intel_and_the_template_for_bfloat16_with_amx(intel, amx, monkeypatch):
    monkeypatch.delenv("MLCORE_CPU_GEMV", raising=False)
    monkeypatch.setattr(gemv_choice, "_intel_with_mkl", lambda: intel)
    monkeypatch.setattr(gemv_choice, "_has_amx", lambda: amx)
    assert gemv_choice.single_row_gemv(torch.float32) == ("library" if intel else "row_dots")
    assert gemv_choice.single_row_gemv(torch.bfloat16) == ("template" if amx else "row_dots")
    assert gemv_choice.single_row_gemv(torch.float16) == "row_dots"


def test_amx_detection_answers_a_bool():
    assert isinstance(gemv_choice._has_amx(), bool)


def _graph_calls(model, ids) -> tuple[set[str], list[str]]:
    """(library matmul calls, generated code) of a batch-1 decoder's compiled step (bmm is attention, always
    there, and not counted)."""
    from torch._inductor.utils import run_and_get_code

    decoder = CompiledDecoder(model, batch=1, max_len=32)
    with torch.no_grad():
        model(ids, cache=decoder.start())
        _, sources = run_and_get_code(decoder.step, ids[:, -1:], torch.full((1, 1), ids.shape[1]))
    return library_matmuls(sources), sources


def _template_kernels(sources: list[str]) -> bool:
    """True when generated code holds inductor's C++ GEMM template kernels (their micro-GEMM)."""
    return any("micro_gemm" in src for src in sources)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["library", "row_dots", "template"])
def test_every_kernel_decodes_the_eager_and_transformers_tokens(kernel, monkeypatch):
    """Each kernel, pinned, gives eager generate's greedy tokens and transformers' (tiny float32 Llama, batch 1),
    keeps what it reads current when a weight is edited in place (the template's frozen graph compiles again),
    and the graph calls the library matmul exactly when the library was chosen, template kernels exactly when
    the template was; the library and template paths keep no tiles."""
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
    assert decoder.freeze is (kernel == "template")
    if kernel != "row_dots":
        assert decoder.tiles is False and not any(f._tiles for f in fusions)
    with torch.no_grad():  # in place, between two generations: the next one must read it
        model.lm_head.weight.mul_(-1)
        model.layers[0].mlp.down_proj.weight.mul_(0.5)
    assert torch.equal(generate(model, ids, max_new_tokens=NEW, compile=True), generate(model, ids, max_new_tokens=NEW))
    calls, sources = _graph_calls(model, ids)
    assert bool(calls) is (kernel == "library"), sorted(calls)
    assert _template_kernels(sources) is (kernel == "template")


@pytest.mark.parametrize("why", ["freeze=False", "inference tensors", "int8 layers"])
def test_the_template_falls_back_to_row_dots_where_it_cannot_freeze(why, monkeypatch):
    """The template serves frozen weights only; freezing int8 row dots would fold widened weight copies."""
    import copy

    from mlcore.quant import quantize_model

    monkeypatch.setenv("MLCORE_CPU_GEMV", "template")
    _, model = pair("llama")
    if why == "inference tensors":
        with torch.inference_mode():
            model = copy.deepcopy(model)
    elif why == "int8 layers":
        model = quantize_model(copy.deepcopy(model), "int8")
    decoder = CompiledDecoder(model, batch=1, max_len=32, freeze=False if why == "freeze=False" else None)
    assert decoder.gemv == "row_dots" and decoder.freeze is False and decoder.tiles is None


def test_a_model_quantized_after_its_decoder_was_made_leaves_the_template():
    import copy

    from mlcore.attention.fused_linear import LinearFusion
    from mlcore.quant import quantize_model

    _, model = pair("llama")
    model = copy.deepcopy(model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCORE_CPU_GEMV", "template")
        decoder = CompiledDecoder(model, batch=1, max_len=32)
    assert decoder.gemv == "template" and decoder.freeze
    quantize_model(model, "int8")
    decoder.start()
    assert decoder.gemv == "row_dots" and decoder.freeze is False and decoder.tiles is None
    fusions = [v for m in model.modules() for v in vars(m).values() if isinstance(v, LinearFusion)]
    assert fusions and all(f.trace_tiles for f in fusions)  # this very prefill keeps tiles for the row dots
