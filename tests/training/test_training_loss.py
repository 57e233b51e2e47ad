"""Next-token cross-entropy against transformers' ForCausalLMLoss, with padding and SFT-style loss masks."""

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from mlcore.training import causal_lm_labels, causal_lm_loss, causal_lm_loss_sum


def test_loss_matches_transformers_with_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    ids = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, -3:] = 0   # right padding
    mask[2, :2] = 0    # left padding
    hf_labels = ids.masked_fill(mask == 0, -100)
    expected = ForCausalLMLoss(logits, hf_labels, vocab_size=11)
    got = causal_lm_loss(logits, ids, attention_mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    total, count = causal_lm_loss_sum(logits, hf_labels)
    assert count == int((hf_labels[:, 1:] != -100).sum())
    torch.testing.assert_close(total / count, expected, rtol=1e-6, atol=1e-6)


def test_loss_mask_counts_only_the_answer():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 9, generator=g)
    ids = torch.randint(0, 9, (2, 6), generator=g)
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 0]])
    got = causal_lm_loss(logits, ids, loss_mask=loss_mask)
    # reference: plain torch cross-entropy over exactly the unmasked targets
    picks = [(b, t) for b in range(2) for t in range(1, 6) if loss_mask[b, t] == 1]
    ref = torch.stack([F.cross_entropy(logits[b, t - 1][None], ids[b, t][None]) for b, t in picks]).mean()
    torch.testing.assert_close(got, ref)
    assert causal_lm_labels(ids, loss_mask=loss_mask)[0, :3].tolist() == [-100] * 3


def test_loss_bad_input():
    with pytest.raises(ValueError, match="attention_mask"):
        causal_lm_labels(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="input_ids"):
        causal_lm_labels(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="no target"):
        causal_lm_loss(torch.randn(1, 4, 5), torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.zeros(1, 4))


def test_bad_labels_are_refused():
    from mlcore.training.loss import causal_lm_loss_sum

    logits = torch.zeros(2, 5, 9)
    good = torch.randint(0, 9, (2, 5), generator=torch.Generator().manual_seed(0))
    for labels, message in ((good.float(), "LongTensor"), (good.int(), "LongTensor"),
                            (good.masked_fill(good == good[0, 0], -1), "token ids"), (good + 9, "token ids"),
                            (good.tolist(), "tensors")):
        with pytest.raises(ValueError, match=message):
            causal_lm_loss_sum(logits, labels)


def test_batch_indices_and_evaluate_refuse_bad_sizes(toy_factory, token_data):
    from mlcore.training import evaluate
    from mlcore.training.data import batch_indices, check_data

    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_examples"):
            batch_indices(n, 2, 0, seed=0)
    for kwargs in ({"batch_size": 0}, {"batch_size": -1}, {"max_batches": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            evaluate(toy_factory(), token_data, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        check_data({**token_data, "labels": token_data["input_ids"].float()})
