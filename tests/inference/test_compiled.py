"""Compiled decoding (``generate(compile=...)``, :mod:`mlcore.inference.compiled`) against eager decoding.

References: the tokens of eager ``generate(cache="static")`` (itself checked against transformers' generate in
test_generate_hf_parity.py) and of transformers' own ``generate``; for the cache writes, StaticCache's eager
``update``. Recompilation is watched with dynamo's own counters and ``error_on_recompile``. The compiled tests
use the 2-layer, hidden-64 test models (a cold compile takes ~10-35 s on 2 CPU cores; inductor's on-disk cache
makes reruns take seconds), hence ``slow``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.utils

from mlcore.inference import StaticCache, generate
from mlcore.inference.compiled import CompiledDecoder, bucket_length, decoder_for
from mlcore.inference.hf import hf_generate
from mlcore.model import Transformer, TransformerConfig

from ._gen_testutils import NEW, batch, library_matmuls, pair


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["single", "padded"])
def test_greedy_matches_eager_and_transformers(kind):
    hf, model = pair("llama")
    ids, mask = batch(kind)
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, cache="static")
    compiled = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, cache="static", compile=True)
    assert torch.equal(compiled, eager)
    twin = hf_generate(hf, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(compiled[:, -NEW:], twin[:, -NEW:])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "mistral"])
def test_learned_positions_and_sliding_window(arch):
    """GPT-2 reads learned position rows; Mistral's window (5) is shorter than the context in every step."""
    _, model = pair(arch)
    ids, mask = batch("padded")
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=NEW, compile=True), eager)


@pytest.mark.slow
def test_sampling_eos_and_stop_match_eager():
    """The general loop (sampling, EOS padding, stop sequences) runs on the compiled step's logits."""
    _, model = pair("llama")
    ids, mask = batch("padded")
    kw = dict(attention_mask=mask, max_new_tokens=NEW, temperature=0.9, top_k=20, top_p=0.9, seed=7,
              eos_token_id=[3, 5], repetition_penalty=1.3)
    assert torch.equal(generate(model, ids, compile=True, **kw), generate(model, ids, **kw))
    greedy = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    stop = [greedy[0, -NEW + 2: -NEW + 4].tolist()]  # row 0 stops after its 4th new token
    kw = dict(attention_mask=mask, max_new_tokens=NEW, stop=stop, pad_token_id=0)
    assert torch.equal(generate(model, ids, compile=True, **kw), generate(model, ids, **kw))


@pytest.mark.slow
def test_one_graph_for_every_step_and_call():
    """After the first compile, more steps and other lengths in the same bucket compile nothing again."""
    _, model = pair("llama")
    ids, _ = batch("single")
    generate(model, ids, max_new_tokens=3, compile=True)  # compiled here (or by an earlier test)
    decoder = decoder_for(model, batch=1, needed=ids.shape[1] + 3, mode="default")
    graphs, steps = _graphs(), decoder.steps
    with torch._dynamo.config.patch(error_on_recompile=True):
        eager = generate(model, ids, max_new_tokens=20)
        assert torch.equal(generate(model, ids, max_new_tokens=20, compile=True), eager)
        shorter = ids[:, 3:]  # another prompt length, same bucket: the same decoder and graph
        assert torch.equal(generate(model, shorter, max_new_tokens=25, compile=True),
                           generate(model, shorter, max_new_tokens=25))
    assert _graphs() == graphs
    assert decoder.steps == steps + 19 + 24
    assert decoder_for(model, batch=1, needed=shorter.shape[1] + 25, mode="default") is decoder


def test_bucket_length():
    assert [bucket_length(n, 512) for n in (1, 64, 65, 192, 300, 512)] == [64, 64, 128, 256, 512, 512]
    assert bucket_length(100, 96) == 100  # never below what is needed (callers check max_seq_len)
    assert bucket_length(90, 96) == 96


# -- StaticCache's tensor-position writes (eager; no compile) ---------------------------------------------------

def test_update_at_writes_what_update_writes():
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    index = torch.tensor([[0, 1, 2, 3, 4], [-1, -1, 2, 3, 4]])
    ref, got = StaticCache(8), StaticCache(8)
    ref.update(0, k[:, :, :3], v[:, :, :3], index[:, :3])
    got.update(0, k[:, :, :3], v[:, :, :3], index[:, :3])
    ref_k, ref_v, ref_i = ref.update(0, k[:, :, 3:], v[:, :, 3:], index[:, 3:])
    got_k, got_v, got_i = got.update_at(0, k[:, :, 3:], v[:, :, 3:], index[:, 3:], torch.tensor([3, 4]))
    assert got_k.shape == (2, 3, 8, 4) and got_i.shape == (2, 8)  # the whole buffers
    assert got.get_seq_length() == 3  # lengths untouched until advance
    got.advance(2)
    assert got.get_seq_length() == ref.get_seq_length() == 5
    assert torch.equal(got_k[:, :, :5], ref_k) and torch.equal(got_v[:, :, :5], ref_v)
    assert torch.equal(got_i[:, :5], ref_i) and bool((got_i[:, 5:] == -1).all())


def test_update_at_and_advance_refuse_bad_input():
    cache = StaticCache(4)
    k = torch.zeros(1, 2, 1, 4)
    with pytest.raises(ValueError, match="not allocated"):
        cache.update_at(0, k, k, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))
    cache.update(0, k, k, torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="slots"):
        cache.update_at(0, k, k, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="slots"):
        cache.update_at(0, k, k, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="full"):
        cache.advance(4)
    with pytest.raises(ValueError, match="advance"):
        cache.advance(-1)


# -- refused requests (all raise before anything is compiled) -----------------------------------------------------

def _config(**kw) -> TransformerConfig:
    base = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    base.update(kw)
    return TransformerConfig(**base)


@pytest.mark.parametrize("compile_arg", ["fast", 1, None, "max_autotune"])
def test_bad_compile_argument(compile_arg):
    _, model = pair("llama")
    ids, _ = batch("single")
    with pytest.raises(ValueError, match="compile must be"):
        generate(model, ids, max_new_tokens=2, compile=compile_arg)


@pytest.mark.parametrize("cache", ["dynamic", "paged", "object"])
def test_compile_needs_the_static_cache_it_owns(cache):
    _, model = pair("llama")
    ids, _ = batch("single")
    if cache == "object":
        cache = StaticCache.for_model(model, 1, 32)
    with pytest.raises(ValueError, match="compile needs cache='static'"):
        generate(model, ids, max_new_tokens=2, cache=cache, compile=True)


def test_unsupported_models_are_refused():
    ids = torch.zeros(1, 3, dtype=torch.long)
    hf, model = pair("llama")
    with pytest.raises(ValueError, match="mlcore Transformer"):
        generate(hf, ids, max_new_tokens=2, compile=True)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            generate(model, ids, max_new_tokens=2, compile=True)
    finally:
        model.eval()
    flash = Transformer(_config(attn_backend="flash")).eval()
    with pytest.raises(ValueError, match="attn_backend"):
        generate(flash, ids, max_new_tokens=2, compile=True)
    ntk = Transformer(_config(rope_scaling={"rope_type": "dynamic", "factor": 2.0})).eval()
    with pytest.raises(ValueError, match="dynamic NTK"):
        generate(ntk, ids, max_new_tokens=2, compile=True)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(Transformer(_config()).eval(), ids, max_new_tokens=40, compile=True)


def test_decoder_refuses_bad_arguments_and_a_full_cache():
    model = Transformer(_config()).eval()
    for kw, word in ((dict(batch=0, max_len=8), "batch"), (dict(batch=1, max_len=33), "max_len"),
                     (dict(batch=1, max_len=8, mode="turbo"), "mode")):
        with pytest.raises(ValueError, match=word):
            CompiledDecoder(model, **kw)
    decoder = CompiledDecoder(model, batch=1, max_len=4)
    tok = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(1, 1\)"):
        decoder.step(torch.zeros(2, 1, dtype=torch.long), tok)
    with pytest.raises(ValueError, match="int64"):  # later steps skip dynamo's guards: step checks dtypes itself
        decoder.step(tok.float(), tok)
    with pytest.raises(ValueError, match="token and positions must be int64"):
        decoder.step([[1]], [[1]])
    for kw, word in ((dict(dtype="float32"), "dtype"), (dict(dtype=torch.int64), "dtype"),
                     (dict(dtype=torch.float16), "differs from the model"), (dict(device="xyz"), "device"),
                     (dict(device="meta"), "device=meta differs from the model's cpu"),
                     (dict(freeze="yes"), "freeze must be None, True or False")):
        with pytest.raises(ValueError, match=word):
            CompiledDecoder(model, batch=1, max_len=4, **kw)
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long), cache=decoder.start())
    # the compiled kernels index without bounds checks: values are checked before the graph runs
    vocab, limit = model.config.vocab_size, model.config.max_seq_len
    for bad_token, bad_pos, word in ((vocab, 2, "token"), (-1, 2, "token"), (1, limit, "positions")):
        with pytest.raises(ValueError, match=word):
            decoder.step(torch.full((1, 1), bad_token), torch.full((1, 1), bad_pos))
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long), cache=decoder.cache, position_ids=torch.tensor([[2, 3]]))
    with pytest.raises(ValueError, match="full"):
        decoder.step(tok, tok)
    assert decoder.steps == 0


@pytest.mark.parametrize("kernel", ["row_dots", "library"])
def test_a_decoder_first_used_under_inference_mode_serves_later_calls(kernel, monkeypatch):
    """The decoder is kept per model: built under torch.inference_mode its cache (and batch-1 tiles) were
    inference tensors, and every later compile=True call outside that mode failed writing them in place. For both
    single-row GEMVs (inference/gemv_choice.py): the library one reads stacked copies instead of tiles."""
    monkeypatch.setenv("MLCORE_CPU_GEMV", kernel)
    model = Transformer(_config()).eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    eager = generate(model, ids, max_new_tokens=4)
    with torch.inference_mode():
        assert torch.equal(generate(model, ids, max_new_tokens=4, compile=True), eager)
    assert torch.equal(generate(model, ids, max_new_tokens=4, compile=True), eager)
    # and the tiles the step reads are plain copies: leaving inference mode must not turn grad mode on for them
    # (tiles that required grad made the compiled 27M step ~1.6x slower)
    from mlcore.attention.fused_linear import LinearFusion

    fusions = [v for m in model.modules() for v in vars(m).values() if isinstance(v, LinearFusion)]
    tiles = [t for v in fusions for t in (v._tiles or []) if t is not None]
    assert bool(tiles) is (kernel == "row_dots")
    read = [t for v in fusions for t in v.tensors()]  # what the step reads besides the parameters
    assert read and not any(t.requires_grad for t in read)
    assert not any(t.is_inference() for t in tiles)
    assert not any(t.requires_grad for t in decoder_tensors(model))


@pytest.mark.slow
def test_a_step_dynamo_cannot_trace_is_refused_with_advice():
    """A forward hook reading a value on the host breaks the graph: fullgraph refuses, generate says what to do."""
    model = Transformer(_config()).eval()
    model.layers[0].register_forward_hook(lambda mod, args, out: float(out.sum().item()) and None)
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="compile=False"):
        generate(model, ids, max_new_tokens=3, compile=True)
    assert torch.equal(generate(model, ids, max_new_tokens=3)[:, :3], ids)  # eager decoding still works


@pytest.mark.slow
def test_each_decoder_compiles_its_own_graph_once():
    """A second decoder (another batch size) compiles its own graph: not a recompile of the first one's."""
    model = Transformer(_config()).eval()
    ids = torch.randint(0, 64, (1, 5))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for rows in (1, 2):
            prompt = ids.expand(rows, -1)
            eager = generate(model, prompt, max_new_tokens=6)
            assert torch.equal(generate(model, prompt, max_new_tokens=6, compile=True), eager)


@pytest.mark.slow
@pytest.mark.parametrize("rows", [2, 1])
def test_changed_weights_reach_the_compiled_step(rows):
    """On CPU a batched step has the weights frozen into the graph: a changed weight compiles it again, never a
    stale graph. A batch-1 step is not frozen (constant folding would widen bf16 / int8 weights to float32, see
    ROW_DOT_OPTIONS): it reads the weights as inputs, so an edit reaches the same graph."""
    model = Transformer(_config()).eval()
    ids = torch.randint(0, 64, (rows, 5), generator=torch.Generator().manual_seed(5))
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), generate(model, ids, max_new_tokens=6))
    decoder = decoder_for(model, batch=rows, needed=11, mode="default")
    assert decoder.freeze is (rows > 1) and decoder.row_dots is (rows == 1) and decoder.compiles == 1
    generate(model, ids, max_new_tokens=6, compile=True)
    assert decoder.compiles == 1  # unchanged weights: the same graph
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight.mul_(-3.0)
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    eager = generate(model, ids, max_new_tokens=6)
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), eager)
    assert decoder.compiles == (2 if rows > 1 else 1)


@pytest.mark.slow
def test_reduce_overhead_mode_off_cuda_gives_the_same_tokens():
    """The CUDA-graph mode, asked for by name, still decodes correctly where there are no CUDA graphs (CPU)."""
    model = Transformer(_config(n_layers=2)).eval()
    ids = torch.randint(0, 64, (2, 4))
    eager = generate(model, ids, max_new_tokens=5)
    assert torch.equal(generate(model, ids, max_new_tokens=5, compile="reduce-overhead"), eager)
    assert decoder_for(model, batch=2, needed=9, mode="reduce-overhead").mode == "reduce-overhead"


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_graphs_match_eager_without_recompiles():
    """compile=True on CUDA: mode "reduce-overhead" (CUDA graphs over the static-address cache buffers)."""
    _, cpu_model = pair("llama")
    model = Transformer(cpu_model.config).cuda().eval()
    model.load_state_dict(cpu_model.state_dict())
    ids, mask = (t.cuda() for t in batch("padded"))
    eager = generate(model, ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=NEW, compile=True), eager)
    decoder = decoder_for(model, batch=ids.shape[0], needed=ids.shape[1] + NEW, mode="reduce-overhead")
    assert decoder.cudagraphs and not decoder.freeze
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n in (NEW, NEW + 5):
            eager = generate(model, ids, attention_mask=mask, max_new_tokens=n)
            assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=n, compile=True), eager)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_weight_only_quantized_models_compile_to_the_same_tokens(scheme):
    """QuantizedLinear traces its CPU kernels (aten's, with the buffers ``prepare_traced`` keeps) inside the
    compiled step.

    float32 activations with the packed kernel forced (``prefer``): in bfloat16 inductor keeps the fused
    element-wise ops in float32 between roundings, so a random tiny model's near-tied logits can flip a token."""
    import copy

    from mlcore.quant import quantize_model

    _, model = pair("llama")
    options = {"group_size": 32} if scheme == "int4" else {}
    qmodel = quantize_model(copy.deepcopy(model), scheme, prefer=f"{scheme}pack", **options)
    ids, mask = batch("padded")
    eager = generate(qmodel, ids, attention_mask=mask, max_new_tokens=NEW)
    kernels = {m.last_kernel for m in qmodel.modules() if hasattr(m, "last_kernel")}
    assert kernels == {f"{scheme}pack"}  # the eager run used the packed kernel the graph must trace too
    assert torch.equal(generate(qmodel, ids, attention_mask=mask, max_new_tokens=NEW, compile=True), eager)
    single = ids[:1, -4:]  # one row: the stacked copies' buffers are graph inputs the direct plan must know
    assert torch.equal(generate(qmodel, single, max_new_tokens=NEW, compile=True),
                       generate(qmodel, single, max_new_tokens=NEW))
    single_decoder = decoder_for(qmodel, batch=1, needed=4 + NEW, mode="default")
    assert single_decoder._direct is not None
    # row dots over int8 codes need realize_opcount_threshold=0, where a tiled layer would be slow: no tiles kept
    assert single_decoder.tiles is False
    assert not any(t for m in qmodel.modules() for v in vars(m).values() for t in (getattr(v, "_tiles", None) or ()))
    seen = set()
    for m in qmodel.modules():
        if hasattr(m, "last_kernel"):
            seen |= set(m._kernels.values())
    assert seen == {f"{scheme}pack"}  # the traced layers (q/k/v separately) chose the packed kernel too


@pytest.mark.slow
def test_int8_model_with_bfloat16_activations_compiles():
    """The fast CPU case (int8 weights, bf16 activations) compiles, and the graph calls the aten kernel itself,
    not the ``mlcore::int8pack_mm`` custom op (QuantizedLinear.prepare_traced gives it bf16 scales). Token
    equality is the float32 test's job: in bf16 the fused graph rounds less often than eager, which can flip
    near-ties; the first step's logits are compared with eager's at bf16 tolerance instead."""
    import copy

    from torch._inductor.utils import run_and_get_code

    from mlcore.quant import quantize_model

    _, model = pair("llama")
    qmodel = quantize_model(copy.deepcopy(model), "int8").to(torch.bfloat16)
    ids, mask = batch("padded")
    out, sources = run_and_get_code(generate, qmodel, ids, attention_mask=mask, max_new_tokens=NEW, compile=True)
    assert out.shape == (ids.shape[0], ids.shape[1] + NEW)
    assert {m.kernel_for(torch.bfloat16) for m in qmodel.modules() if hasattr(m, "kernel_for")} == {"int8pack"}
    # The compiled step's code (a C++ wrapper on a CPU, invisible to torch.profiler) calls the aten kernel:
    # [q|k|v] and [gate|up] stacked, o and down alone -> 4 calls a layer; never the mlcore custom op.
    lines = [line for src in sources for line in src.splitlines()
             if "int8pack_mm" in line and not line.strip().startswith(("#", "//"))]
    assert lines and all("_weight_int8pack_mm" in line and "mlcore" not in line for line in lines)
    assert len(lines) == 4 * len(qmodel.layers)

    decoder = decoder_for(qmodel, batch=ids.shape[0], needed=ids.shape[1] + NEW, mode="default")
    with torch.no_grad():
        token = out[:, ids.shape[1]:ids.shape[1] + 1]
        positions = mask.long().sum(-1, keepdim=True)  # each row's next position
        cache = StaticCache.for_model(qmodel, ids.shape[0], decoder.max_len, dtype=torch.bfloat16)
        qmodel(ids, attention_mask=mask, cache=cache)
        eager = qmodel(token, attention_mask=torch.cat([mask, torch.ones_like(token)], 1), cache=cache)
        qmodel(ids, attention_mask=mask, cache=decoder.start())
        compiled = decoder.step(token, positions)
    torch.testing.assert_close(compiled.float(), eager[:, -1:].float(), atol=0.1, rtol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_scales_edited_in_place_reach_the_compiled_graph(scheme):
    """prepare_traced rebuilds the graph's kernel buffers when weight_scales changed: no stale compiled step."""
    import copy

    from mlcore.quant import quantize_model

    _, model = pair("llama")
    options = {"group_size": 32} if scheme == "int4" else {}
    qmodel = quantize_model(copy.deepcopy(model), scheme, prefer=f"{scheme}pack", **options)
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(qmodel, ids, max_new_tokens=6, compile=True), generate(qmodel, ids, max_new_tokens=6))
    layers = [m for m in qmodel.modules() if hasattr(m, "prepare_traced")]
    assert all(m._traced_scales is not None for m in layers)  # the graph reads them (the direct aten path)
    with torch.no_grad():
        for m in layers:
            if hasattr(m, "prepare_traced"):
                m.weight_scales.mul_(torch.linspace(0.5, 2.0, m.weight_scales.numel()).view_as(m.weight_scales))
    assert torch.equal(generate(qmodel, ids, max_new_tokens=6, compile=True), generate(qmodel, ids, max_new_tokens=6))


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["dense", "int8"])
@pytest.mark.parametrize("kind", ["single", "padded"])
def test_single_row_steps_run_row_dots_and_batched_steps_the_library_matmul(kind, scheme, monkeypatch):
    """With row dots chosen (``MLCORE_CPU_GEMV=row_dots``; the default on CPUs other than Intel + MKL, see
    inference/gemv_choice.py) a batch-1 CPU step computes every linear layer as row dot products
    (mlcore._row_dot): the compiled graph calls no library matmul at all; with more rows it calls MKL's packed
    GEMM (frozen dense weights) or torch's int8 kernel. The tokens stay those of eager decoding."""
    import copy

    from torch._inductor.utils import run_and_get_code

    from mlcore.quant import quantize_model

    monkeypatch.setenv("MLCORE_CPU_GEMV", "row_dots")
    _, model = pair("llama")
    if scheme == "int8":
        model = quantize_model(copy.deepcopy(model), "int8", prefer="int8pack")
    ids, mask = batch(kind)
    rows = ids.shape[0]
    compiled = generate(model, ids, attention_mask=mask, max_new_tokens=NEW, compile=True)
    assert torch.equal(compiled, generate(model, ids, attention_mask=mask, max_new_tokens=NEW))
    # The graph's own code, from a decoder compiled here: a CPU step's C++ wrapper calls its kernels unseen by
    # torch.profiler (this test once profiled a recompile, made for a strided token, without that wrapper)
    decoder = CompiledDecoder(model, batch=rows, max_len=32)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=decoder.start())
        token, positions = ids[:, -1:], mask.long().sum(-1, keepdim=True)  # each row's next position
        _, sources = run_and_get_code(decoder.step, token, positions)
    calls = library_matmuls(sources)
    assert bool(calls) is (rows > 1), sorted(calls)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["row_dots", "template"])
def test_bfloat16_dense_model_compiles_with_stacked_projections(kernel, monkeypatch):
    """In bf16 the eager step reads oneDNN-packed stacked weights, which a graph cannot trace: a batch-1 graph
    computes row dot products on the layers' own weights instead, or (``template``, the default on a CPU with
    AMX) inductor's GEMM template over the plain stacked weight, frozen; a batched one gets the plain stacked
    weight (inductor packs it again). Its first step matches eager at bf16 tolerance."""
    import copy

    monkeypatch.setenv("MLCORE_CPU_GEMV", kernel)
    _, model = pair("llama")
    model = copy.deepcopy(model).to(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(4))
    out = generate(model, ids, max_new_tokens=3, compile=True)
    decoder = decoder_for(model, batch=1, needed=8, mode="default")
    assert decoder.gemv == kernel
    with torch.no_grad():
        token, positions = out[:, 5:6], torch.full((1, 1), 5)
        cache = StaticCache.for_model(model, 1, decoder.max_len, dtype=torch.bfloat16)
        model(ids, cache=cache)
        eager = model(token, cache=cache)
        model(ids, cache=decoder.start())
        compiled = decoder.step(token, positions)
    torch.testing.assert_close(compiled.float(), eager[:, -1:].float(), atol=0.05, rtol=0.05)


@pytest.mark.slow
def test_steps_without_the_guard_skipping_stance_give_the_same_tokens(monkeypatch):
    """torch < 2.6 has no skip_guard_eval_unsafe: every step then runs with its guards, with the same result."""
    import mlcore.inference.compile_options as compile_options

    model = Transformer(_config()).eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(5))
    fast = generate(model, ids, max_new_tokens=6, compile=True)
    monkeypatch.setattr(compile_options, "can_skip_guards", lambda: False)
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), fast)
    assert torch.equal(fast, generate(model, ids, max_new_tokens=6))


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(n_kv_heads=1, position="rope"), dict(n_heads=4, position="alibi"),
                                dict(position="rope", sliding_window=3), dict(position="learned")],
                         ids=["mqa-rope", "alibi", "window", "learned"])
def test_compiled_step_logits_equal_the_full_forward(kw):
    """Every compiled step's logits (attention through naive.single_query_attention inside the CPU graph, the
    graph called directly after the first step) against one forward over the whole sequence without a cache."""
    model = Transformer(_config(n_layers=2, **kw)).eval()
    ids = torch.randint(0, 64, (1, 11), generator=torch.Generator().manual_seed(9))
    decoder = CompiledDecoder(model, batch=1, max_len=16)
    with torch.no_grad():
        full = model(ids)  # (1, 11, V)
        model(ids[:, :4], cache=decoder.start())
        steps = [decoder.step(ids[:, t: t + 1], torch.full((1, 1), t)) for t in range(4, 11)]
    assert decoder._direct is not None  # steps after the first ran the captured graph
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 4:], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 2])
def test_lora_applied_after_eager_decoding_reaches_the_compiled_step(rows):
    """An eager call keeps a stacked q | k | v copy (attention/fused_linear.py); a LoRA wrapper then makes the
    layers run as themselves eagerly, but the traced step -- which cannot check the layers -- read the copy it
    found: the compiled tokens were the base model's, LoRA ignored (merged or not), silently."""
    from mlcore.finetune.config import LoraConfig
    from mlcore.finetune.inject import apply_lora, merge_lora

    model = Transformer(_config(n_layers=1, tie_embeddings=False, initializer_range=0.3)).eval()
    ids = torch.randint(0, 64, (rows, 5), generator=torch.Generator().manual_seed(1))
    base = generate(model, ids, max_new_tokens=6)  # eager: builds the stacked copy
    apply_lora(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    eager = generate(model, ids, max_new_tokens=6)
    assert not torch.equal(eager, base)  # the adapters matter
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), eager)
    merge_lora(model)
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), generate(model, ids, max_new_tokens=6))


@pytest.mark.slow
def test_a_decoder_past_dynamos_recompile_limit_compiles_a_new_function():
    """Every new forward hook is a recompile of the decoder's step; past dynamo's recompile_limit a fullgraph
    function refuses to run, and every later compile=True call of that model raised FailOnRecompileLimitHit."""
    model = Transformer(_config(n_layers=1)).eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    shift = torch.randn(32, generator=torch.Generator().manual_seed(4))
    with torch._dynamo.config.patch(recompile_limit=2):
        for i in range(4):
            handle = model.layers[0].register_forward_hook(lambda m, a, out, i=i: out + shift * i)
            try:
                eager = generate(model, ids, max_new_tokens=4)
                assert torch.equal(generate(model, ids, max_new_tokens=4, compile=True), eager)
            finally:
                handle.remove()
    assert decoder_for(model, batch=1, needed=9, mode="default").compiles == 2


@pytest.mark.slow
def test_steps_given_strided_token_and_position_views_read_the_right_rows():
    """The graph is called directly after the first step, without dynamo's stride guards: a token column sliced
    from a (B, T) batch (strides (T, 1)) or expanded positions (stride 0) after a contiguous first step were
    read at the first step's strides -- another row's ids, logits off by ~0.6, silently."""
    model = Transformer(_config()).eval()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(9))
    decoder = CompiledDecoder(model, batch=2, max_len=16)
    with torch.no_grad():
        full = model(ids)  # (2, 9, V): the reference, one forward without a cache
        model(ids[:, :4], cache=decoder.start())
        steps = [decoder.step(ids[:, 4:5].clone(), torch.full((2, 1), 4))]  # contiguous: the traced strides
        steps += [decoder.step(ids[:, t: t + 1], torch.tensor([[t]]).expand(2, 1)) for t in range(5, 9)]
    assert decoder._direct is not None
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 4:], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("d_ff", [64, 40], ids=["all-tiled", "one-untiled"])
def test_batch1_cpu_step_reads_tiled_weights_refreshed_each_generation(d_ff, monkeypatch):
    """With row dots chosen, a batch-1 CPU step reads each linear layer's weight as tiles
    (mlcore._row_dot.tiled_weight) that the prefill keeps current: an in-place edit between two generations
    reaches the second one. With d_ff=40 (not a multiple of a tile) gate_proj and up_proj can have none, so no
    layer reads tiles (all row dots, compiled with realize_opcount_threshold=0, where a tiled layer would be
    slow) and none are kept."""
    from mlcore.attention.fused_linear import LinearFusion
    from mlcore.inference.compiled import _tiled_everywhere

    monkeypatch.setenv("MLCORE_CPU_GEMV", "row_dots")

    model = Transformer(_config(n_layers=2, d_ff=d_ff, tie_embeddings=False)).eval()
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(8))
    first = generate(model, ids, max_new_tokens=6, compile=True)
    assert torch.equal(first, generate(model, ids, max_new_tokens=6))
    fusions = [v for m in model.modules() for v in vars(m).values() if isinstance(v, LinearFusion)]
    tiled = sum(f.tiled_layers() for f in fusions)
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    decoder = decoder_for(model, batch=1, needed=12, mode="default")
    assert decoder.tiles is (d_ff == 64) and _tiled_everywhere(model) is (d_ff == 64)
    assert tiled == (linears if d_ff == 64 else 0)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1)  # in place: same tensor, new version
        model.layers[0].mlp.up_proj.weight.mul_(0.5)
    tiles = [id(t) for f in fusions for t in (f._tiles or ())]
    second = generate(model, ids, max_new_tokens=6, compile=True)
    assert torch.equal(second, generate(model, ids, max_new_tokens=6))
    assert [id(t) for f in fusions for t in (f._tiles or ())] == tiles  # refilled in place: the same graph inputs
    assert decoder._direct is not None


def decoder_tensors(model) -> list[torch.Tensor]:
    """The cache buffers and column of every CompiledDecoder kept for ``model``."""
    from mlcore.inference.compiled import _DECODERS

    out = []
    for d in _DECODERS.get(model, []):
        out += [*d.cache.keys.values(), *d.cache.values.values(), d._column]
    return out



@pytest.mark.slow
def test_a_hook_added_after_the_first_trace_reaches_the_compiled_step_with_its_settings(monkeypatch):
    """dynamo skips guards on module hooks by default: a hook added after the decoder's first trace was ignored
    by compile=True (tokens unlike eager's). Now the guarded call recompiles, and that second graph compiles
    under the decoder's compiler settings (here ``size_asserts``, which the decoder switches off; inductor reads
    settings only while compiling)."""
    from torch._inductor import config as inductor_config

    from mlcore.inference import direct_graph

    seen: list[bool] = []
    original = direct_graph.GraphCapture.__call__

    def spy(self, gm, example_inputs, **kwargs):
        seen.append(inductor_config.size_asserts)
        return original(self, gm, example_inputs, **kwargs)

    monkeypatch.setattr(direct_graph.GraphCapture, "__call__", spy)
    model = Transformer(_config(n_layers=1, tie_embeddings=False)).eval()  # untied: tokens do not repeat
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(5))
    plain = generate(model, ids, max_new_tokens=6, compile=True)
    shift = torch.randn(32, generator=torch.Generator().manual_seed(6)) * 4
    handle = model.layers[0].register_forward_hook(lambda module, args, out: -out + shift)
    try:
        eager = generate(model, ids, max_new_tokens=6)
        assert not torch.equal(eager, plain)  # the hook changes the tokens: the check below can fail
        assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), eager)
    finally:
        handle.remove()
    assert seen == [False, False], seen


@pytest.mark.slow
def test_a_prompt_reaching_the_last_position_compiles_as_eager_generates():
    """The last new token is never fed back: prompt + max_new_tokens - 1 cached columns may fill every position.
    Eager generate accepts that (as transformers does); compile=True asked for one column more and refused it."""
    model = Transformer(_config(n_layers=1, tie_embeddings=False)).eval()  # max_seq_len=32
    ids = torch.randint(0, 64, (1, 30), generator=torch.Generator().manual_seed(7))
    eager = generate(model, ids, max_new_tokens=3)
    assert torch.equal(generate(model, ids, max_new_tokens=3, compile=True), eager)
