"""Code books: NF4 / FP4 tables and the signed dynamic map equal bitsandbytes'; nearest-code rounding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.quant import FP4_CODE, NF4_CODE, signed_dynamic_map
from mlcore.quant.codebooks import code_tensor, nearest_code

from ._bnb import bnb_functional


@pytest.mark.parametrize("name", ["nf4", "fp4"])
def test_4bit_tables_equal_bitsandbytes(name):
    assert torch.equal(code_tensor(name), bnb_functional.get_4bit_type(name, device="cpu"))


def test_nf4_follows_the_qlora_construction():
    """QLoRA sec. 3: 8 positive and 7 negative N(0, 1) quantiles between 1/2 and delta = 0.9677083, plus 0,
    normalised to [-1, 1]. Independent of bitsandbytes: scipy's inverse normal CDF."""
    stats = pytest.importorskip("scipy.stats")
    delta = 0.9677083
    positive = stats.norm.ppf(torch.linspace(delta, 0.5, 9, dtype=torch.float64)[:-1].numpy())
    negative = -stats.norm.ppf(torch.linspace(delta, 0.5, 8, dtype=torch.float64)[:-1].numpy())
    values = torch.tensor(sorted([*positive, 0.0, *negative]), dtype=torch.float64)
    values = values / values.abs().max()
    # bitsandbytes normalised in float32: its table sits within 2 float32 ulps of the float64 construction.
    torch.testing.assert_close(torch.tensor(NF4_CODE, dtype=torch.float64), values, rtol=0, atol=2.5e-7)


def test_fp4_is_e2m1_with_bitsandbytes_bias():
    """Sign bit 0b1000; magnitudes 2**(e) * (1 + m / 2) scaled so that the largest (code 0b0011) is 1."""
    code = torch.tensor(FP4_CODE)
    assert torch.equal(code[8:], -code[:8])
    assert code[3] == 1.0 and code.abs().max() == 1.0 and code[0] == 0.0
    assert code[2] / code[3] == 8 / 12 and code[6] / code[7] == 2 / 3


def test_signed_dynamic_map_equals_bitsandbytes():
    ours = signed_dynamic_map()
    assert ours.shape == (256,) and ours.dtype == torch.float32
    assert torch.equal(ours, bnb_functional.create_dynamic_map(signed=True))
    assert bool((ours[1:] >= ours[:-1]).all()) and ours[-1] == 1.0 and (ours == 0).sum() == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), book=st.sampled_from(["nf4", "fp4", "dynamic"]), n=st.integers(1, 300))
def test_nearest_code_is_the_argmin(seed, book, n):
    code = signed_dynamic_map() if book == "dynamic" else code_tensor(book)
    x = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    idx = nearest_code(x, code)
    dist = (x[:, None] - code[None, :]).abs()
    assert torch.equal(dist.gather(1, idx[:, None]).squeeze(1), dist.min(dim=1).values)


def test_fp4_zero_signs_follow_bitsandbytes():
    """+0 and -0 share a value: (-m, 0] rounds to code 0b0000 and (0, m] to 0b1000, as bitsandbytes' CPU
    quantizer writes them (m = half the smallest non-zero magnitude)."""
    code = code_tensor("fp4")
    assert nearest_code(torch.tensor([-1e-4, 0.0, 1e-4]), code).tolist() == [0, 0, 8]
