"""Inference-time op reduction (attention/fused_linear.py, rope_tables.py, RMSNorm via F.rms_norm): the fast
paths give the same logits as the separate layers, are rebuilt when a weight changes, and step aside for LoRA,
hooks, training and grad mode. References: the unfused forward (grad mode), HF's LlamaRMSNorm formula."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mlcore.finetune import LoraConfig, apply_lora
from mlcore.inference import StaticCache, generate
from mlcore.model import Transformer, TransformerConfig
from mlcore.model.norm import RMSNorm

from ._model_testutils import llama_family


def _model(seed: int = 0) -> Transformer:
    return Transformer.from_hf(llama_family(seed=seed, num_hidden_layers=2)).eval()


def _ids(n: int = 9, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 128, (2, n), generator=torch.Generator().manual_seed(seed))


def _unfused(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # grad mode: every projection runs as its own layer
        return model(ids).detach()


def _fusions(model: Transformer) -> list:
    return [f for m in model.modules() for f in (getattr(m, "qkv_fusion", None), getattr(m, "gate_up_fusion", None))
            if f is not None]


def test_fused_equals_unfused_and_is_used_only_without_grad() -> None:
    model, ids = _model(), _ids()
    with torch.no_grad():
        fused = model(ids)
    assert all(f._fn is not None for f in _fusions(model))  # built: q/k/v and gate/up ran stacked
    unfused = _unfused(model, ids)
    assert all(f._fn is None for f in _fusions(model))  # grad mode drops the stacked copies
    assert torch.equal(fused, unfused)  # same dot products: bit for bit (fp32, CPU)


def test_stacked_weights_are_rebuilt_when_a_source_weight_changes() -> None:
    model, ids = _model(), _ids()
    with torch.no_grad():
        model(ids)
        before = model.layers[0].attn.qkv_fusion._fn.weight.clone()
        model.layers[0].attn.k_proj.weight.add_(0.05)  # in place: only the version counter moves
        model.layers[1].mlp.up_proj.weight.mul_(1.5)
        changed = model(ids)
    assert not torch.equal(model.layers[0].attn.qkv_fusion._fn.weight, before)
    assert torch.equal(changed, _unfused(model, ids))
    with torch.no_grad():  # a new Parameter object (as load_state_dict(assign=True) makes)
        model.layers[1].attn.q_proj.weight = torch.nn.Parameter(model.layers[1].attn.q_proj.weight * 0.5)
        replaced = model(ids)
    assert torch.equal(replaced, _unfused(model, ids))


def test_lora_hooks_and_training_keep_the_separate_layers() -> None:
    model, ids = _model(), _ids()
    apply_lora(model, LoraConfig(4, 8, ["q_proj", "v_proj"]), verbose=False)
    for m in model.modules():  # non-zero B, so that a path skipping LoRA would show in the logits
        if hasattr(m, "lora_B"):
            torch.nn.init.normal_(m.lora_B.weight if hasattr(m.lora_B, "weight") else m.lora_B, std=0.5)
    model.eval()
    with torch.no_grad():
        out = model(ids)
    assert all(m.attn.qkv_fusion._fn is None for m in model.layers)  # q/v are LoRA layers: not stacked
    assert all(m.mlp.gate_up_fusion._fn is not None for m in model.layers)  # untouched layers still are
    assert torch.equal(out, _unfused(model, ids))

    plain, seen = _model(), []
    plain.layers[0].attn.k_proj.register_forward_hook(lambda mod, inp, o: seen.append(o.shape))
    with torch.no_grad():
        plain(ids)
    assert seen == [torch.Size([2, 9, 32])]  # the hook ran: k_proj was called as a module
    plain.train()
    with torch.no_grad():
        plain(ids)
    assert plain.layers[1].attn.qkv_fusion._fn is None


def test_rope_rows_from_the_table_equal_per_forward_tables() -> None:
    model, ids = _model(), _ids(12)
    positions = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        table = model(ids)  # no mask, no position_ids: RoPE rows sliced from the model's table
        per_forward = model(ids, position_ids=positions)  # explicit positions: computed in this forward
        kv = StaticCache(40)
        model(ids, cache=kv)
        step_table = model(ids[:, :1], cache=kv)  # decode step at position 12 from the table
        kv2 = StaticCache(40)
        model(ids, cache=kv2)
        step_direct = model(ids[:, :1], cache=kv2, position_ids=torch.full((2, 1), 12))
    assert model.rope_tables._tables  # the table was used
    assert torch.equal(table, per_forward)
    assert torch.equal(step_table, step_direct)


def test_rmsnorm_forward_equals_the_written_out_formula() -> None:
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        norm = RMSNorm(48, eps=1e-5).to(dtype)
        with torch.no_grad():
            norm.weight.copy_(1 + torch.randn(48, generator=g))
        x = (torch.randn(3, 5, 48, generator=g) * 4).to(dtype)
        assert torch.equal(norm(x), norm.reference(x)), dtype


def test_greedy_generate_unchanged_and_decode_step_op_count() -> None:
    model, ids = _model(), _ids(6)
    out = generate(model, ids[:1], max_new_tokens=6)
    with torch.enable_grad():  # the reference: step by step with the separate layers and no shortcuts
        ref = ids[:1]
        for _ in range(6):
            ref = torch.cat([ref, model(ref)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ref)
    kv = StaticCache(16)
    with torch.no_grad():
        model(ids[:1], cache=kv)
        model(ids[:1, :1], cache=kv, validate=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(ids[:1, :1], cache=kv, logits_to_keep=1, validate=False)
    ops = [e.name for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
    # measured: 22 top-level aten ops per layer + 28 per step (before: ~55 per layer + ~40 per step)
    assert len(ops) <= 2 * 23 + 30, ops
    assert ops.count("aten::linear") == 2 * 4 + 1  # qkv, o, gate+up, down per layer; the vocabulary head


@pytest.mark.parametrize("scheme", [None, "int8", "int4"])
def test_weights_made_under_inference_mode_run_and_match(scheme):
    """Inference tensors keep no version counter: the caches must still work (regression: RuntimeError)."""
    from mlcore.quant import quantize_model

    cfg = TransformerConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    torch.manual_seed(0)
    ref = Transformer(cfg).eval()
    if scheme:
        ref = quantize_model(ref, scheme, **({"group_size": 32} if scheme == "int4" else {}))
    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids)
    with torch.inference_mode():
        model = copy.deepcopy(ref)
        for t in model.state_dict(keep_vars=True).values():
            t.data = t.data.clone()  # clone under inference_mode: inference tensors
        got = model(ids)
        assert torch.equal(got, model(ids))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_decode_layout_is_column_major_only_where_it_reads_faster() -> None:
    from mlcore.attention.fused_linear import decode_layout

    g = torch.Generator().manual_seed(0)
    wide, tall = torch.randn(96, 32, generator=g), torch.randn(32, 96, generator=g)
    laid = decode_layout(wide)
    assert laid.shape == wide.shape and laid.stride() == (1, 96) and torch.equal(laid, wide)
    assert decode_layout(tall) is tall  # in > out: row-major reads faster (measured), keep it
    assert decode_layout(wide.bfloat16()).stride() == (32, 1)  # bfloat16 reads slower column-major


def test_head_copy_is_column_major_at_inference_and_dropped_in_grad_mode() -> None:
    model, ids = _model(), _ids()
    vocab, hidden = model.lm_head.weight.shape
    assert vocab > hidden
    kv = StaticCache(16)
    with torch.no_grad():
        model(ids, cache=kv)
        step = model(ids[:, :1], cache=kv, logits_to_keep=1, validate=False)  # batch-1-row matmuls (M = 2)
    head = model.head_layout._fn
    assert head is not None and head.weight.stride() == (1, vocab)
    assert head.weight.data_ptr() != model.lm_head.weight.data_ptr()  # a copy: the tied embedding is untouched
    assert model.embed.weight.stride() == (hidden, 1)
    kv_ref = StaticCache(16)
    with torch.enable_grad():  # reference: the separate, row-major layers
        model(ids, cache=kv_ref)
        ref = model(ids[:, :1], cache=kv_ref, logits_to_keep=1, validate=False).detach()
    assert model.head_layout._fn is None  # grad mode drops the copy
    # the same dot products; a GEMV may sum them in another order than the row-major kernel (fp32 rounding)
    torch.testing.assert_close(step, ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_decode_through_onednn_packed_weights_is_bit_identical() -> None:
    from mlcore._onednn import onednn_bf16_available
    from mlcore.attention.fused_linear import _OneDnnBf16Call

    if not onednn_bf16_available():
        pytest.skip("this CPU / torch build has no oneDNN bfloat16 linear")
    model, ids = _model().to(torch.bfloat16), _ids()
    kv, kv_ref = StaticCache(16), StaticCache(16)
    with torch.no_grad():
        prefill = model(ids, cache=kv)
        step = model(ids[:, :1], cache=kv, logits_to_keep=1, validate=False)
    layer = model.layers[0]
    for fusion in (layer.attn.qkv_fusion, layer.attn.o_fusion, layer.mlp.gate_up_fusion, layer.mlp.down_fusion,
                   model.head_layout):
        assert isinstance(fusion._fn, _OneDnnBf16Call)  # every projection read through the packed weight
    with torch.enable_grad():  # reference: plain nn.Linear layers, bf16 F.linear
        ref_prefill = model(ids, cache=kv_ref).detach()
        ref_step = model(ids[:, :1], cache=kv_ref, logits_to_keep=1, validate=False).detach()
    assert torch.equal(prefill, ref_prefill) and torch.equal(step, ref_step)
    clone = copy.deepcopy(model)  # cached packed weights are not copied (oneDNN tensors cannot be): rebuilt
    assert clone.head_layout._fn is None
    with torch.no_grad():
        assert torch.equal(clone(ids), prefill)


def test_fp32_single_layers_without_a_faster_layout_get_no_copy() -> None:
    model, ids = _model(), _ids()
    with torch.no_grad():
        model(ids)
    attn, mlp = model.layers[0].attn, model.layers[0].mlp
    assert attn.o_fusion._fn is None  # square: no faster float32 layout, so no copy
    assert mlp.down_fusion._fn is None  # in > out: row-major is the faster one


def test_release_all_picks_up_a_write_through_data() -> None:
    """A write through ``.data`` bypasses the version counter the fused copies are keyed on; release_all drops
    them, after which the forward reads the edited weights (documented in fused_linear.py)."""
    from mlcore.attention.fused_linear import release_all
    from mlcore.model import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                          max_seq_len=16)).eval()
    ids = torch.arange(8)[None]
    with torch.no_grad():
        model(ids)  # builds the copies
        for block in model.layers:
            block.attn.k_proj.weight.data.mul_(3)
        assert release_all(model) > 0
        after = model(ids)
    with torch.enable_grad():  # grad mode: the layers' own weights, no copy
        reference = model(ids).detach()
    torch.testing.assert_close(after, reference)
