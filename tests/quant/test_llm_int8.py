"""LLM.int8() (Dettmers et al. 2022) against bitsandbytes' Linear8bitLt on CPU, and against its own fp layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcore.quant import llm_int8
from mlcore.quant.llm_int8 import Int8MixedLinear, int8_matmul_i32, int8_vectorwise_quant

bnb = pytest.importorskip("bitsandbytes")

BNB_RESCALE = 6.200124e-05  # bitsandbytes' CPU constant for 1/127^2 (the exact value is 6.2000124e-05)


def _pair(in_f: int, out_f: int, dtype: torch.dtype, *, bias: bool = True, threshold: float = 6.0):
    g = torch.Generator().manual_seed(in_f * 7 + out_f)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g) * 0.1)
    lin = lin.to(dtype)
    ref = bnb.nn.Linear8bitLt(in_f, out_f, bias=bias, has_fp16_weights=False, threshold=threshold)
    ref.load_state_dict(lin.state_dict())
    ref = ref.to("cpu").eval()  # .to(device) quantizes the weight
    return lin, ref, Int8MixedLinear.from_linear(lin, threshold=threshold)


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, outliers: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    if outliers:
        x[..., 5] *= 20.0  # a systematic outlier feature, as in the paper
        x.view(-1, shape[-1])[-1, 40] = -9.0  # a single outlier entry: its whole column goes to fp
    else:
        x = x.clamp(-5.0, 5.0)
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("outliers", [True, False])
@pytest.mark.parametrize("shape", [(3, 17, 256), (1, 256), (40, 256)])
def test_equals_bitsandbytes_linear8bitlt(dtype, outliers, shape, monkeypatch):
    lin, ref, mine = _pair(256, 192, dtype)
    x = _inputs(shape, dtype, outliers)
    with torch.no_grad():
        y_ref = ref(x)
        y = mine(x)
    # Same int8 weight codes and per-row absmax scales.
    assert torch.equal(ref.state.CB, mine.weight_int8)
    assert torch.equal(ref.state.SCB, mine.weight_absmax)
    assert y.dtype == y_ref.dtype == dtype and y.shape == y_ref.shape
    # Our rescale is exactly 1/127^2; bitsandbytes' CPU path multiplies by 6.200124e-05 (1.8e-5 relatively more).
    diff = (y.float() - y_ref.float()).abs().max().item()
    scale = y_ref.float().abs().max().item()
    tol = 2.5e-5 * scale if dtype == torch.float32 else 2 * torch.finfo(dtype).eps * scale
    assert diff <= tol, f"max |mine - bnb| = {diff:.3g} > {tol:.3g}"
    # With bitsandbytes' constant, every other step is the same arithmetic: bit-identical outputs.
    monkeypatch.setattr(llm_int8, "_RESCALE", BNB_RESCALE)
    with torch.no_grad():
        assert torch.equal(mine(x), y_ref)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_equals_bitsandbytes_threshold_and_no_bias(threshold, monkeypatch):
    _, ref, mine = _pair(128, 64, torch.float32, bias=False, threshold=threshold)
    x = _inputs((2, 9, 128), torch.float32, outliers=True)
    monkeypatch.setattr(llm_int8, "_RESCALE", BNB_RESCALE)
    with torch.no_grad():
        assert torch.equal(mine(x), ref(x))


def test_outlier_columns_and_scales_match_bitsandbytes_functional():
    x = _inputs((12, 64), torch.float16, outliers=True)
    codes, absmax, cols = int8_vectorwise_quant(x, threshold=6.0)
    ref_codes, ref_absmax, ref_cols = bnb.functional.int8_vectorwise_quant(x.clone(), threshold=6.0)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax) and torch.equal(cols, ref_cols)
    assert {5, 40} <= set(cols.tolist()) == {i for i in range(64) if (x[:, i].abs() >= 6).any()}
    assert (codes[:, cols] == 0).all()


def test_int8_matmul_is_exact_int32():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (33, 2500), generator=g, dtype=torch.int8)  # K > 1024: several fp32 chunks
    b = torch.randint(-127, 128, (40, 2500), generator=g, dtype=torch.int8)
    exact = a.long() @ b.long().t()
    out = int8_matmul_i32(a, b)
    assert out.dtype == torch.int32 and torch.equal(out.long(), exact)


def test_close_to_fp_layer_within_int8_error():
    """|y - y_fp| is within the worst-case int8 rounding bound, and the outlier columns are exact."""
    lin = nn.Linear(256, 128)
    mine = Int8MixedLinear.from_linear(lin, keep_fp_weight=True)
    x = _inputs((64, 256), torch.float32, outliers=True)
    with torch.no_grad():
        y = mine(x)
        y_fp = lin(x)
        w = lin.weight
        # Half a quantization step of each operand (+ the float16 rounding before quantization).
        keep = x.abs() < 6.0
        cx = torch.where(keep, x, torch.zeros_like(x)).abs().amax(dim=1, keepdim=True)  # (N, 1)
        cw = w.abs().amax(dim=1, keepdim=True)  # (M, 1)
        dx = cx / 254 + x.abs() * 2.0**-11
        dw = cw / 254 + w.abs() * 2.0**-11
        int8_cols = keep.all(dim=0)  # features computed in int8; the others are exact in fp32
        # |x.w - x^.w^| <= sum_k |x_k| |w_k - w^_k| + |w^_k| |x_k - x^_k|  over the int8 features k
        bound = (x.abs() * int8_cols) @ (dw * int8_cols).t() + (dx * int8_cols) @ ((w.abs() + dw) * int8_cols).t()
    err = (y - y_fp).abs()
    assert (err <= bound + 1e-5).all(), f"max excess {(err - bound).max().item():.3g}"
    assert err.max() < 0.1 * y_fp.abs().max()


def test_outlier_decomposition_lowers_error():
    """The point of the paper: one large feature ruins per-token int8; holding it back in fp restores accuracy."""
    lin = nn.Linear(256, 128)
    x = _inputs((32, 256), torch.float32, outliers=False)
    x[:, 7] = 60.0
    with torch.no_grad():
        y_fp = lin(x)
        err_mixed = (Int8MixedLinear.from_linear(lin, threshold=6.0)(x) - y_fp).norm()
        err_plain = (Int8MixedLinear.from_linear(lin, threshold=0.0)(x) - y_fp).norm()
    assert err_mixed * 5 < err_plain, (err_mixed.item(), err_plain.item())


def test_reference_forward_and_dequantized_weight():
    lin = nn.Linear(64, 32)
    mine = Int8MixedLinear.from_linear(lin, keep_fp_weight=True)
    x = torch.randn(4, 64)
    torch.testing.assert_close(mine.reference_forward(x), lin(x))
    step = lin.weight.detach().abs().amax(dim=1, keepdim=True) / 127
    w = lin.weight.detach()
    assert ((mine.dequantized_weight() - w).abs() <= step / 2 + w.abs() * 2.0**-11).all()  # + float16 rounding
    assert F.linear(x, mine.dequantized_weight()).shape == (4, 32)


def test_bad_input():
    lin = nn.Linear(64, 32)
    mine = Int8MixedLinear.from_linear(lin)
    with pytest.raises(ValueError, match="in_features=64"):
        mine(torch.randn(2, 63))
    with pytest.raises(ValueError, match="floating-point"):
        mine(torch.ones(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        Int8MixedLinear.from_linear(lin, threshold=-1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        bad = nn.Linear(8, 4)
        with torch.no_grad():
            bad.weight[0, 0] = float("nan")
        Int8MixedLinear.from_linear(bad)
    with pytest.raises(ValueError, match="nn.Linear"):
        Int8MixedLinear.from_linear(nn.Conv1d(2, 2, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="int8"):
        int8_matmul_i32(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int8))
    with pytest.raises(ValueError, match="share K"):
        int8_matmul_i32(torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="2-D"):
        int8_vectorwise_quant(torch.zeros(3))


@pytest.mark.cuda
def test_cuda_matches_cpu_and_bitsandbytes():
    lin, _, mine = _pair(256, 192, torch.float16)
    x = _inputs((3, 40, 256), torch.float16, outliers=True)
    with torch.no_grad():
        y_cpu = mine(x)
        y_gpu = mine.to("cuda")(x.cuda())
        ref = bnb.nn.Linear8bitLt(256, 192, has_fp16_weights=False, threshold=6.0)
        ref.load_state_dict(lin.state_dict())
        y_bnb = ref.to("cuda").eval()(x.cuda())
    scale = y_cpu.float().abs().max().item()
    # int32 accumulation is exact on both devices; only the final float16 roundings may differ
    assert (y_gpu.cpu().float() - y_cpu.float()).abs().max().item() <= 4 * 2.0**-10 * scale
    assert (y_gpu.float() - y_bnb.float()).abs().max().item() <= 4 * 2.0**-10 * scale


def test_weight_beyond_float16_range_is_refused():
    """Finite in float32 but inf once rounded to float16: bitsandbytes' Linear8bitLt gives a NaN row there."""
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[0, 0] = 1e5
    with pytest.raises(ValueError, match=r"beyond float16's range \(\|w\| <= 65504"):
        Int8MixedLinear.from_linear(lin)
    with torch.no_grad():
        lin.weight[0, 0] = 65504.0  # the largest float16 is accepted, and row 0 stays finite
    assert torch.isfinite(Int8MixedLinear.from_linear(lin)(torch.randn(2, 8))).all()


def test_argument_types_are_checked():
    with pytest.raises(ValueError, match="threshold must be a number >= 0"):
        Int8MixedLinear.from_linear(nn.Linear(64, 16), threshold="6")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_int8 must be a torch.Tensor, got list"):
        Int8MixedLinear([[1]], torch.zeros(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_absmax must be a torch.Tensor, got list"):
        Int8MixedLinear(torch.zeros(1, 1, dtype=torch.int8), [1.0])  # type: ignore[arg-type]
