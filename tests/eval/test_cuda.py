"""The same measurements on CUDA equal the CPU ones (skipped without a GPU)."""

import pytest
import torch

from mlcore.eval import mmd_permutation_test, perplexity
from mlcore.eval.context_window import position_nll

from ._models import random_ids, tiny_pair


@pytest.mark.cuda
def test_perplexity_and_context_window_on_cuda():
    _, ours = tiny_pair(32)
    ids = random_ids(72, rows=2, seed=6)
    cpu_ppl = perplexity(ours, ids, stride=8, max_length=32)
    cpu_sinks = position_nll(ours, ids, "sinks")
    gpu = ours.to("cuda")
    assert perplexity(gpu, ids, stride=8, max_length=32) == pytest.approx(cpu_ppl, rel=1e-4)
    torch.testing.assert_close(position_nll(gpu, ids.cuda(), "sinks").cpu(), cpu_sinks, rtol=1e-3, atol=1e-3)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    assert mmd_permutation_test(x.cuda(), x.cuda() + 1, n_permutations=20).mmd2 == pytest.approx(
        mmd_permutation_test(x, x + 1, n_permutations=20).mmd2, rel=1e-6)
