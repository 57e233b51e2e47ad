"""LLM.int8() bit for bit against bitsandbytes 0.50 itself on CPU, over seeded random cases.

Which bitsandbytes code runs on CPU (read from the installed package): ``int8_vectorwise_quant``,
``int8_mm_dequant``, ``int8_scaled_mm``, ``int8_mixed_scaled_mm`` and ``int8_vectorwise_dequant`` have no CPU or
native kernel and run the pure-PyTorch "default" ops; ``int8_linear_matmul`` is ``torch._int_mm`` on CPUs with
AVX-512 (torch >= 2.6), else an fp32 matmul. Unlike 8-bit blockwise quantization, nothing here calls
``libbitsandbytes_cpu.so``. The only arithmetic difference is bitsandbytes' rescale constant 6.200124e-05 for
1/127^2 = 6.2000124e-05, which mlcore does not copy; with it patched in, outputs are identical.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from mlcore.quant import llm_int8
from mlcore.quant.llm_int8 import Int8MixedLinear, int8_matmul_i32, int8_vectorwise_quant

bnb = pytest.importorskip("bitsandbytes")

BNB_RESCALE = 6.200124e-05  # bitsandbytes' default-backend constant for 1/127^2
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@pytest.fixture(autouse=True)
def _quiet_bnb_cast_warning():
    # MatMul8bitLt logs a warning on every non-fp16 input; it is expected here
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _x(g: torch.Generator, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    """float32 test activations of ``shape`` (N, K) of one kind."""
    n, k = shape
    x = torch.randn(n, k, generator=g) * torch.empty(1).uniform_(0.05, 4.0, generator=g)
    if kind == "zero_row":
        x[0] = 0.0
    elif kind == "huge":  # finite in float16: 65504 is its largest value
        x[-1, torch.randint(0, k, (1,), generator=g)] = 65504.0
    elif kind == "ties":  # absmax 127 makes the scale exactly 1, so the halves stay ties at rounding
        x = torch.randint(-253, 254, (n, k), generator=g).float() / 2
        x[:, 0] = 127.0
    elif kind == "outlier_cols":
        x[:, torch.randint(0, k, (2,), generator=g)] *= 30.0
    return x


def _same_cols(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    # bitsandbytes returns an empty tensor where threshold > 0 found no outliers; so does mlcore
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


def test_vectorwise_quant_matches_bitsandbytes_fuzz():
    """Codes, row absmax and outlier columns equal ``bitsandbytes.functional.int8_vectorwise_quant``: 300 cases
    over fp16 / bf16 / fp32 (rounded to fp16, as both layers do), thresholds 0 / 6 / tiny / huge, rows of zeros,
    huge finite values, .5 ties and 1-row inputs."""
    g = torch.Generator().manual_seed(13)
    kinds = ("plain", "zero_row", "huge", "ties", "outlier_cols")
    thresholds = (0.0, 6.0, 1e-6, 1e9, 2.0)
    n_ties = 0
    for i in range(300):
        dtype, kind, threshold = DTYPES[i % 3], kinds[i % 5], thresholds[(i // 5) % 5]
        shape = (1 if i % 7 == 0 else int(torch.randint(2, 9, (1,), generator=g)),
                 int(torch.randint(1, 70, (1,), generator=g)))
        x = _x(g, shape, kind).to(dtype).to(torch.float16)
        codes, absmax, cols = int8_vectorwise_quant(x, threshold)
        ref_codes, ref_absmax, ref_cols = bnb.functional.int8_vectorwise_quant(x.clone(), threshold=threshold)
        case = f"case {i}: {dtype} {kind} threshold={threshold} shape={shape}"
        assert torch.equal(absmax, ref_absmax), case
        assert _same_cols(cols, ref_cols), case
        # bitsandbytes scales a row of absmax 0 by 127 / 0 = inf and casts 0 * inf = NaN to int8, which is
        # undefined (x86 happens to give 0); mlcore defines those codes as 0, so only the other rows are compared
        live = ref_absmax > 0
        assert torch.equal(codes[live], ref_codes[live]), case
        assert not codes[~live].any(), case
        if kind == "ties":
            n_ties += int((x.float() * 2 % 2 == 1).sum())
    assert n_ties > 1000  # the round-half-to-even cases were really exercised


def test_round_half_to_even_like_bitsandbytes():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]], dtype=torch.float16)
    codes, _, _ = int8_vectorwise_quant(x)
    ref, _, _ = bnb.functional.int8_vectorwise_quant(x.clone())
    assert codes.tolist() == ref.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126]]


def _pair(g: torch.Generator, in_f: int, out_f: int, dtype: torch.dtype, bias: bool, threshold: float):
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.1)
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    lin = lin.to(dtype)
    ref = bnb.nn.Linear8bitLt(in_f, out_f, bias=bias, has_fp16_weights=False, threshold=threshold)
    ref.load_state_dict(lin.state_dict())
    return ref.to("cpu").eval(), Int8MixedLinear.from_linear(lin, threshold=threshold)  # .to() quantizes


def test_linear_matches_linear8bitlt_fuzz(monkeypatch):
    """``Int8MixedLinear`` vs ``Linear8bitLt(has_fp16_weights=False)``: 150 layers, fp16 / bf16 / fp32, with and
    without bias, 2-D / 3-D inputs, thresholds selecting no columns (0, 1e9), some (2.5, 6) or all (1e-6).
    Weight codes and SCB are identical; outputs differ only by bitsandbytes' rescale constant: bit-identical with
    it patched in, and within its relative 1.8e-5 (plus one rounding to the output dtype) without."""
    g = torch.Generator().manual_seed(8)
    thresholds = (0.0, 6.0, 1e-6, 1e9, 2.5)
    for i in range(150):
        dtype, bias, threshold = DTYPES[i % 3], i % 2 == 0, thresholds[(i // 6) % 5]
        # in_features >= 2: with 1, bitsandbytes' CPU matmul is wrong (see test_in_features_1_...)
        in_f, out_f = int(torch.randint(2, 90, (1,), generator=g)), int(torch.randint(1, 50, (1,), generator=g))
        lead = ((int(torch.randint(1, 7, (1,), generator=g)),), (2, 3))[i % 4 // 2]
        ref, mine = _pair(g, in_f, out_f, dtype, bias, threshold)
        x = torch.randn(*lead, in_f, generator=g) * 2
        if i % 5 == 0:
            x.view(-1, in_f)[0] = 0.0
        x = x.to(dtype)
        case = f"case {i}: {dtype} bias={bias} threshold={threshold} x={tuple(x.shape)} out={out_f}"
        with torch.no_grad():
            y_ref = ref(x)
            y = mine(x)
            with monkeypatch.context() as m:
                m.setattr(llm_int8, "_RESCALE", BNB_RESCALE)
                y_bnb_const = mine(x)
        assert torch.equal(ref.state.CB, mine.weight_int8) and torch.equal(ref.state.SCB, mine.weight_absmax), case
        assert y.dtype == y_ref.dtype == dtype and y.shape == y_ref.shape, case
        assert torch.equal(y_bnb_const, y_ref), case
        # the constant scales the int8 part, which is at most |y| + |bias| (bias is added after the rescale)
        part = y_ref.float().abs().max().item() + (mine.bias.float().abs().max().item() if bias else 0.0)
        tol = 2e-5 * part + (0.0 if dtype == torch.float32 else torch.finfo(dtype).eps * part)
        assert (y.float() - y_ref.float()).abs().max().item() <= tol, case


def test_int8_matmul_matches_bitsandbytes():
    """Exact int32 products, as bitsandbytes' CPU ``int8_linear_matmul``, for K >= 2 (incl. K > 1040, where an
    unchunked fp32 sum of int8 products could stop being exact)."""
    g = torch.Generator().manual_seed(3)
    for n, m, k in ((1, 1, 2), (5, 3, 7), (17, 31, 64), (4, 9, 3000)):
        a = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
        b = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        out = int8_matmul_i32(a, b)
        assert torch.equal(out, bnb.functional.int8_linear_matmul(a, b))
        assert torch.equal(out.long(), a.long() @ b.long().t())


def test_in_features_1_is_right_where_bitsandbytes_cpu_is_not(monkeypatch):
    """A layer with one input feature. On AVX-512 CPUs bitsandbytes computes the int32 product with
    ``torch._int_mm``, which (torch 2.13, CPU) returns uninitialised memory for K = 1 and M >= 2: measured,
    x = [[2.], [3.]] through W = [[.5], [-.2], [.1]] gave [[91122.9, 1.2e-4, 0.], [2.03, -62181.8, 0.41]] from
    ``Linear8bitLt`` instead of [[1., -.4, .2], [1.5, -.6, .3]]. mlcore is not made to copy that: it equals
    bitsandbytes' own dequantization of the exact int32 product."""
    g = torch.Generator().manual_seed(1)
    for dtype in DTYPES:
        for threshold in (0.0, 6.0):
            ref, mine = _pair(g, 1, 3, dtype, bias=True, threshold=threshold)
            x = (torch.randn(4, 1, generator=g) * 2).to(dtype)
            ca, sca, _ = bnb.functional.int8_vectorwise_quant(x.to(torch.float16).clone())
            acc = ca.long() @ ref.weight.CB.long().t()  # exact
            expect = torch.ops.bitsandbytes.int8_mm_dequant(acc.to(torch.int32), sca, ref.weight.SCB, dtype=dtype,
                                                            bias=ref.bias.data.to(dtype))
            with torch.no_grad(), monkeypatch.context() as m:
                m.setattr(llm_int8, "_RESCALE", BNB_RESCALE)
                y = mine(x)
            # |x| < 6 here, so no column is an outlier and the int8 part is the whole output
            assert (x.float().abs() < 6).all() and torch.equal(y, expect), (dtype, threshold)


def test_4d_input_where_bitsandbytes_refuses(monkeypatch):
    """bitsandbytes' ``MatMul8bitLt`` flattens only 3-D inputs; a 4-D one reaches ``int8_vectorwise_quant``, which
    takes the absmax over dim 1 and then fails to broadcast (RuntimeError). mlcore flattens every leading dim:
    its 4-D result equals bitsandbytes' on the same tokens passed as 3-D."""
    g = torch.Generator().manual_seed(4)
    ref, mine = _pair(g, 37, 5, torch.float32, bias=True, threshold=6.0)
    x = torch.randn(2, 2, 3, 37, generator=g) * 3
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            ref(x)
        y_ref = ref(x.reshape(4, 3, 37)).reshape(2, 2, 3, 5)
        monkeypatch.setattr(llm_int8, "_RESCALE", BNB_RESCALE)
        assert torch.equal(mine(x), y_ref)


def test_train_mode_linear8bitlt_is_not_llm_int8_on_cpu():
    """In training mode on CPU, bitsandbytes routes ``Linear8bitLt`` to ``MatMul8bitFp``: the int8 weight
    dequantized and a plain float matmul, with no activation quantization and no outlier decomposition. So the
    layer is compared in eval mode above; this pins that difference (mlcore's layer has no train-mode switch)."""
    g = torch.Generator().manual_seed(5)
    ref, mine = _pair(g, 64, 16, torch.float32, bias=False, threshold=6.0)
    x = torch.randn(8, 64, generator=g)
    with torch.no_grad():
        y_train = ref.train()(x)
        # weight-only: dequantized weight (bitsandbytes multiplies by SCB / 127, mlcore by SCB then 1 / 127, so
        # the weights may differ in the last bit) and a float matmul
        torch.testing.assert_close(y_train, x @ mine.dequantized_weight().t(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(ref.eval()(x), y_train)
