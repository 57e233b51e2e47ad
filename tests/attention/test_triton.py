"""The Triton FlashAttention-2 kernels (forward, and backward for dQ, dK, dV) against torch SDPA + autograd.

Without a GPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors. That
switch must be set before triton is first imported, so those checks run in a fresh subprocess. The
interpreter handles fp32 and fp16 but not bf16 (its bf16 dot is wrong), so bf16 is checked on CUDA only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from mlcore.attention.flash import flash_attention

INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, math, torch, torch.nn.functional as F
    from mlcore.attention.flash import FlashAttentionFunction, Tiling
    torch.manual_seed(0)
    cases = [  # B, H, Hkv, Tq, Tk, D, causal, dtype
        (1, 2, 2, 64, 64, 64, False, "float32"),
        (2, 4, 2, 37, 53, 64, True, "float32"),   # GQA, Tq < Tk, T not a multiple of the 32-row block
        (1, 4, 1, 70, 30, 16, True, "float32"),   # MQA, Tq > Tk: rows that see nothing
        (1, 2, 1, 45, 45, 128, True, "float16"),
        (1, 2, 2, 33, 40, 64, False, "float16"),
    ]
    report = []
    for B, H, Hkv, Tq, Tk, D, causal, dt in cases:
        dtype = getattr(torch, dt)
        q = torch.randn(B, H, Tq, D, dtype=dtype, requires_grad=True)
        k = torch.randn(B, Hkv, Tk, D, dtype=dtype, requires_grad=True)
        v = torch.randn(B, Hkv, Tk, D, dtype=dtype, requires_grad=True)
        G = H // Hkv
        t = Tiling(B=B, Hkv=Hkv, G=G, Tq=Tq, Tk=Tk, block_q=64, block_k=64, scale=1 / math.sqrt(D),
                   offset=Tk - Tq if causal else None, mask=None, dropout_p=0.0, seed=0)
        out = FlashAttentionFunction.apply(q.reshape(B, Hkv, G, Tq, D), k, v, None, t, True).reshape(B, H, Tq, D)
        # reference: torch SDPA in fp64 on expanded K/V with a dense bottom-right causal mask
        kk, vv = k.double().repeat_interleave(G, 1), v.double().repeat_interleave(G, 1)
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq) if causal else torch.ones(Tq, Tk, dtype=torch.bool)
        dead = ~allowed.any(-1, keepdim=True)
        ref = F.scaled_dot_product_attention(q.double(), kk, vv, attn_mask=allowed | dead) * (~dead)
        scores = (q.double() @ kk.transpose(-1, -2)) / math.sqrt(D)
        lse_ref = torch.logsumexp(scores.masked_fill(~allowed, float("-inf")), -1)
        from mlcore.attention.triton_kernel import triton_flash_forward
        _, lse = triton_flash_forward(q.detach().reshape(B, Hkv, G, Tq, D), k.detach(), v.detach(), t)
        lse = lse.reshape(B, H, Tq).double()
        fin = torch.isfinite(lse_ref)
        d_out = torch.randn(out.shape, dtype=torch.float64)
        g = torch.autograd.grad(out, (q, k, v), d_out.to(dtype))
        g_ref = torch.autograd.grad(ref, (q, k, v), d_out)
        report.append({
            "case": [B, H, Hkv, Tq, Tk, D, causal, dt],
            "out": (out.double() - ref).abs().max().item(),
            "lse": (lse[fin] - lse_ref[fin]).abs().max().item(),
            "lse_dead_inf": bool(torch.isinf(lse[~fin]).all()),
            "grad": max((a.double() - b).abs().max().item() for a, b in zip(g, g_ref)),
        })
    print("RESULT" + json.dumps(report))
    """
)


def test_triton_kernel_in_interpreter_matches_torch_sdpa():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETER_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("RESULT", 1)[1])
    for row in report:
        fp32 = row["case"][-1] == "float32"
        assert row["out"] < (2e-5 if fp32 else 3e-3), row
        assert row["lse"] < 1e-4, row
        assert row["lse_dead_inf"], row
        assert row["grad"] < (5e-5 if fp32 else 2e-2), row  # the Triton backward kernels vs torch autograd


def test_module_imports_and_reports_availability():
    from mlcore.attention import triton_kernel

    assert isinstance(triton_kernel.triton_available(), bool)


def test_cpu_falls_back_to_pytorch():
    q = torch.randn(1, 2, 20, 64, dtype=torch.float16)
    out = flash_attention(q, q, q, is_causal=True)  # CPU: never the Triton path, even for fp16 D=64
    ref = F.scaled_dot_product_attention(q.float(), q.float(), q.float(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_triton_matches_sdpa(dtype, D, causal):
    pytest.importorskip("triton")
    dev = torch.device("cuda")
    B, H, Hkv, Tq, Tk = 2, 8, 2, 1000, 1000 if not causal else 1200
    q = torch.randn(B, H, Tq, D, dtype=dtype, device=dev, requires_grad=True)
    k = torch.randn(B, Hkv, Tk, D, dtype=dtype, device=dev, requires_grad=True)
    v = torch.randn(B, Hkv, Tk, D, dtype=dtype, device=dev, requires_grad=True)
    out = flash_attention(q, k, v, is_causal=causal, use_triton=True)
    auto = flash_attention(q, k, v, is_causal=causal)  # the automatic choice is the same kernel
    torch.testing.assert_close(out, auto, atol=0, rtol=0)
    kk, vv = k.float().repeat_interleave(4, 1), v.float().repeat_interleave(4, 1)
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=dev).tril(Tk - Tq) if causal else None
    ref = F.scaled_dot_product_attention(q.float(), kk, vv, attn_mask=mask)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    d_out = torch.randn_like(ref)
    g = torch.autograd.grad(out, (q, k, v), d_out.to(dtype))
    g_ref = torch.autograd.grad(ref, (q, k, v), d_out)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.cuda
def test_cuda_masked_or_odd_head_dim_falls_back_to_pytorch():
    dev = torch.device("cuda")
    q = torch.randn(1, 4, 300, 48, dtype=torch.bfloat16, device=dev)  # D = 48: not a Triton case
    mask = torch.rand(1, 1, 300, 300, device=dev) > 0.2
    with pytest.raises(ValueError, match="use_triton"):
        flash_attention(q, q, q, attn_mask=mask, use_triton=True)
    out = flash_attention(q, q, q, attn_mask=mask)
    ref = F.scaled_dot_product_attention(q.float(), q.float(), q.float(), attn_mask=mask)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


BIG_OFFSET_SCRIPT = textwrap.dedent(
    """
    import json, math, torch, torch.nn.functional as F
    from mlcore.attention.flash import Tiling
    from mlcore.attention.triton_kernel import triton_flash_backward, triton_flash_forward
    torch.manual_seed(0)
    B, Tq, Tk, D = 3, 4, 5, 16
    sb = 2**30 + 2**20  # q's batch stride fits int32, but batch 2 starts at 2 * sb > 2**31 elements
    store = torch.empty(2 * sb + Tq * D, dtype=torch.float16)  # ~4 GiB of address space; only 3 slices are touched
    q5 = store.as_strided((B, 1, 1, Tq, D), (sb, Tq * D, Tq * D, D, 1))
    for b in range(B):
        q5[b].copy_(torch.randn(1, 1, Tq, D))
    k, v = torch.randn(B, 1, Tk, D, dtype=torch.float16), torch.randn(B, 1, Tk, D, dtype=torch.float16)
    t = Tiling(B=B, Hkv=1, G=1, Tq=Tq, Tk=Tk, block_q=64, block_k=64, scale=1 / math.sqrt(D), offset=Tk - Tq,
               mask=None, dropout_p=0.0, seed=0)
    out, lse = triton_flash_forward(q5, k, v, t)
    d_out = torch.randn(out.shape, dtype=torch.float16)
    dq, dk, dv = triton_flash_backward(q5, k, v, out, lse, d_out, t)
    qd, kd, vd = (x.double().reshape(B, 1, -1, D).requires_grad_() for x in (q5, k, v))
    ref = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq))
    g_ref = torch.autograd.grad(ref, (qd, kd, vd), d_out.double().reshape(ref.shape))
    err = (out.double().reshape(ref.shape) - ref).abs().max().item()
    gerr = max((a.double().reshape(b.shape) - b).abs().max().item() for a, b in zip((dq, dk, dv), g_ref))
    print("RESULT" + json.dumps({"out": err, "grad": gerr}))
    """
)


def test_triton_kernels_address_past_2_31_elements_in_interpreter():
    """Batch / head base offsets are int64: q's third batch starts 2**31 + 2**21 elements in. With int32 program
    ids, ``b * stride`` wrapped to a negative offset (a segfault in the interpreter, a bad read on a GPU)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", BIG_OFFSET_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    row = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert row["out"] < 3e-3 and row["grad"] < 2e-2, row


def test_inputs_whose_row_offsets_pass_int32_take_the_pytorch_path():
    """Row offsets inside one (batch, head) slice stay int32 in the kernels: a (B, T, H, D) layout transposed
    with T * H * D >= 2**31 must not be handed to Triton (meta tensors: shapes and strides only, no memory)."""
    from mlcore.attention.flash import _slice_offsets_fit_int32

    T, H, D = 2**19 + 1, 32, 128
    bthd = torch.empty(1, T, H, D, device="meta", dtype=torch.float16).transpose(1, 2)  # stride_T = H * D
    assert not _slice_offsets_fit_int32(bthd)
    assert _slice_offsets_fit_int32(torch.empty(1, H, T, D, device="meta", dtype=torch.float16))  # stride_T = D
