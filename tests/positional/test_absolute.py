"""Sinusoidal (vs transformers' XLM ``create_sinusoidal_embeddings``) and learned absolute encodings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2Model
from transformers.models.xlm.modeling_xlm import create_sinusoidal_embeddings

from mlcore.positional import LearnedEncoding, SinusoidalEncoding


@pytest.mark.parametrize("dim", [1, 2, 7, 16, 33, 64])
def test_sinusoidal_matches_xlm(dim: int) -> None:
    """Odd dims too: XLM's formula ends with a lone sin column (PE(p, dim - 1), no cos partner)."""
    n = 300
    ref = create_sinusoidal_embeddings(n, dim, torch.empty(n, dim))
    enc = SinusoidalEncoding(dim, max_len=n)
    torch.testing.assert_close(enc(torch.arange(n)), ref, rtol=0, atol=2e-6)
    # batched positions, and positions past the precomputed table (the formula extrapolates)
    pos = torch.tensor([[0, 5, 299], [3, 2, 1]])
    torch.testing.assert_close(enc(pos), ref[pos])
    far = create_sinusoidal_embeddings(n + 50, dim, torch.empty(n + 50, dim))
    torch.testing.assert_close(enc(torch.arange(n, n + 50)), far[n:], rtol=0, atol=2e-6)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(-50, 200))
def test_sinusoidal_shift_is_one_linear_map(k: int) -> None:
    """PE(p + k) = M_k PE(p) for every p, with M_k block-diagonal 2x2 rotations independent of p."""
    dim = 32
    enc = SinusoidalEncoding(dim, max_len=600)
    p = torch.arange(max(0, -k), 300)
    pe, pe_k = enc(p).double(), enc(p + k).double()  # (P, dim)
    # least-squares fit of one matrix M with pe @ M.T = pe_k over all positions
    m = torch.linalg.lstsq(pe, pe_k).solution.T
    torch.testing.assert_close(pe @ m.T, pe_k, rtol=0, atol=1e-5)
    # ... and it is the predicted rotation: [[cos kw, sin kw], [-sin kw, cos kw]] on each (sin, cos) pair
    w = enc.inv_freq.double()
    pred = torch.zeros(dim, dim, dtype=torch.float64)
    c, s = torch.cos(k * w), torch.sin(k * w)
    pred[0::2, 0::2] = torch.diag(c)
    pred[0::2, 1::2] = torch.diag(s)
    pred[1::2, 0::2] = torch.diag(-s)
    pred[1::2, 1::2] = torch.diag(c)
    torch.testing.assert_close(pe @ pred.T, pe_k, rtol=0, atol=1e-5)


def test_learned_encoding_is_gpt2_wpe() -> None:
    """A GPT-2 wpe table loaded into LearnedEncoding gives GPT-2's position embeddings."""
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=50)
    gpt2 = GPT2Model(config).eval()
    enc = LearnedEncoding(32, 16)
    enc.load_state_dict({"weight": gpt2.wpe.weight.detach().clone()})
    pos = torch.tensor([[0, 1, 2, 31], [5, 6, 7, 8]])
    torch.testing.assert_close(enc(pos), gpt2.wpe(pos), rtol=0, atol=0)
    assert enc.weight.requires_grad


def test_learned_encoding_beyond_max_len() -> None:
    enc = LearnedEncoding(8, 4)
    with pytest.raises(ValueError, match="max_len"):
        enc(torch.arange(9))
    with pytest.raises(ValueError, match="positions"):
        enc(torch.tensor([-1]))
    with pytest.raises(ValueError, match="max_len"):
        LearnedEncoding(0, 4)


def test_sinusoidal_bad_input() -> None:
    with pytest.raises(ValueError, match="dim"):
        SinusoidalEncoding(0)
    with pytest.raises(ValueError, match="positions"):
        SinusoidalEncoding(8)(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="positions"):
        SinusoidalEncoding(8)(torch.tensor([-2]))


def test_sinusoidal_dtype_does_not_depend_on_the_positions():
    """After .half(), positions past the table come back in float16 too (they came back float32)."""
    enc = SinusoidalEncoding(8, max_len=4).half()
    inside, past = enc(torch.arange(3)), enc(torch.arange(6))
    assert inside.dtype == past.dtype == torch.float16
    torch.testing.assert_close(past[:3], inside)
    with pytest.raises(ValueError, match="max_len"):
        SinusoidalEncoding(4, max_len=True)


def test_bool_sizes_non_tensor_positions_and_infinite_base_are_named() -> None:
    """``LearnedEncoding(64, True)`` built a 1-wide table, ``LearnedEncoding(True, 4)`` failed inside torch.empty,
    a list of positions raised AttributeError and ``base=inf`` encoded every position alike (w_i = 0 past the
    first pair); each is now a ValueError naming the argument."""
    with pytest.raises(ValueError, match="dim"):
        LearnedEncoding(64, True)
    with pytest.raises(ValueError, match="max_len"):
        LearnedEncoding(True, 4)
    with pytest.raises(ValueError, match="positions"):
        LearnedEncoding(8, 4)([0, 1])
    with pytest.raises(ValueError, match="positions"):
        SinusoidalEncoding(4)([0, 1])
    for base in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="base"):
            SinusoidalEncoding(4, base=base)
    assert SinusoidalEncoding(4, base=1e300)(torch.arange(3)).isfinite().all()  # huge but finite is fine


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16])
def test_narrow_integer_positions_are_named(dtype: torch.dtype) -> None:
    """Regression: uint8 positions were read by torch indexing as a boolean mask -- [0, 1, 2] gave rows 1 and 2
    (two rows, silently) -- and int8 / int16 failed deep inside indexing. nn.Embedding (GPT-2's wpe) takes int64 /
    int32 only; so do both encodings, with a ValueError naming positions. int32 gives the int64 rows."""
    torch.manual_seed(0)
    learned, sinus = LearnedEncoding(3, 4), SinusoidalEncoding(4, max_len=3)
    pos = torch.arange(3, dtype=dtype)
    for enc in (learned, sinus):
        with pytest.raises(ValueError, match="positions must be an int64 or int32"):
            enc(pos)
        torch.testing.assert_close(enc(pos.to(torch.int32)), enc(pos.long()), rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # the reference refuses it too
        torch.nn.Embedding(3, 4)(pos)
