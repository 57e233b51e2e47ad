"""perplexity() against transformers' own loss and against the docs' strided procedure run with transformers."""

import math

import pytest
import torch

from mlcore.eval import perplexity, token_nll

from ._models import random_ids, tiny_pair


@pytest.fixture(scope="module")
def models():
    return tiny_pair(64)


def test_equals_exp_of_transformers_loss(models):
    hf, ours = models
    ids = random_ids(50)
    with torch.no_grad():
        ref = math.exp(float(hf(ids, labels=ids).loss))
    for model in (hf, ours):
        assert perplexity(model, ids) == pytest.approx(ref, rel=1e-5)


def _docs_strided(hf, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, float]:
    """The loop of transformers' "Perplexity of fixed-length models" page; returns (docs count, exact count)."""
    seq_len = ids.size(1)
    nll_sum = nll_exact = 0.0
    n_tokens = n_exact = 0
    prev_end = 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        window = ids[:, begin:end]
        target = window.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = float(hf(window, labels=target).loss)
        n_docs = int((target != -100).sum()) - target.size(0)  # the docs' count
        n_true = int((target[:, 1:] != -100).sum())  # labels the shifted loss really averaged
        nll_sum, n_tokens = nll_sum + loss * n_docs, n_tokens + n_docs
        nll_exact, n_exact = nll_exact + loss * n_true, n_exact + n_true
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens), math.exp(nll_exact / n_exact)


@pytest.mark.parametrize("max_length,stride,rows", [(64, 16, 1), (32, 32, 1), (40, 7, 1), (48, 20, 2)])
def test_strided_equals_docs_procedure(models, max_length, stride, rows):
    hf, ours = models
    ids = random_ids(200, rows=rows, seed=2)
    docs, exact = _docs_strided(hf, ids, max_length, stride)
    for model in (hf, ours):
        assert perplexity(model, ids, stride=stride, max_length=max_length) == pytest.approx(docs, rel=1e-5)
        token = perplexity(model, ids, stride=stride, max_length=max_length, weighting="token")
        assert token == pytest.approx(exact, rel=1e-5)
    if stride < max_length:  # the docs' count is one token per row short in every later window
        assert abs(docs - exact) / exact > 1e-5


def test_every_token_scored_once_and_small_stride_sees_more_context(models):
    _, ours = models
    ids = random_ids(100, rows=2, seed=3)
    nll = token_nll(ours, ids, stride=8, max_length=32)
    assert nll.shape == (2, 99) and torch.isfinite(nll).all()
    disjoint = token_nll(ours, ids, max_length=32)  # windows at 0, 32, 64, 96: their first tokens unscored
    assert torch.isnan(disjoint).sum() == 2 * 3 and torch.isnan(disjoint[:, [31, 63, 95]]).all()
    # with a window as long as the text, the strided value is the plain one
    assert perplexity(ours, ids, stride=5, max_length=64) != perplexity(ours, ids, max_length=64)
    assert perplexity(ours, ids[:, :64], stride=5) == pytest.approx(perplexity(ours, ids[:, :64]), rel=1e-6)


def test_bad_input(models):
    _, ours = models
    with pytest.raises(ValueError, match="input_ids"):
        perplexity(ours, torch.tensor([3]))
    with pytest.raises(ValueError, match="input_ids"):
        perplexity(ours, torch.rand(1, 10))
    with pytest.raises(ValueError, match="stride"):
        perplexity(ours, random_ids(10), stride=0, max_length=8)
    with pytest.raises(ValueError, match="stride"):
        perplexity(ours, random_ids(10), stride=9, max_length=8)
    with pytest.raises(ValueError, match="weighting"):
        perplexity(ours, random_ids(10), max_length=8, weighting="mean")
    with pytest.raises(ValueError, match="max_length"):
        perplexity(ours, random_ids(10), max_length=1)


def test_a_transformers_model_gets_the_same_clear_errors():
    """Out-of-vocabulary ids and a window past the context are named for a transformers model too (it raised a
    bare IndexError from its embedding)."""
    hf, _ = tiny_pair()
    vocab = hf.config.vocab_size
    with pytest.raises(ValueError, match="vocab_size"):
        perplexity(hf, torch.full((1, 8), vocab))
    with pytest.raises(ValueError, match="context"):
        perplexity(hf, random_ids(100), max_length=100)


def test_metric_arguments_are_named():
    from mlcore.eval import psi, token_f1
    from mlcore.eval.embedding_drift import mmd_permutation_test
    from mlcore.training.dp_accountant import RDPAccountant

    with pytest.raises(ValueError, match="gold"):
        token_f1("a", 5)
    with pytest.raises(ValueError, match="eps"):
        psi([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], eps=2.0)
    with pytest.raises(ValueError, match="chunk"):
        mmd_permutation_test(torch.randn(8, 3), torch.randn(8, 3), chunk=0)
    with pytest.raises(ValueError, match="orders"):
        RDPAccountant(orders=())
