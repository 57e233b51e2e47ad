"""Embedder: mean pooling + L2 normalisation written out, held to sentence-transformers on the same weights."""

import warnings

import pytest
import torch

from mlcore.rag import default_model_dir, l2_normalize, mean_pool

SENTENCES = [
    "The assert statement inserts debugging assertions into a program.",
    "A coroutine can be suspended and resumed at many points.",
    "Hi",
    "Literals: Python supports string and bytes literals and various numeric literals, "
    "integers, floating point numbers and imaginary numbers, each evaluated to an object of the given type.",
]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(default_model_dir(), device="cpu")


def test_equals_sentence_transformers(embedder, st_model):
    ours = embedder.encode(SENTENCES)
    ref = torch.from_numpy(st_model.encode(SENTENCES, batch_size=4, convert_to_numpy=True))
    assert ours.shape == (4, 384) and ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    assert err < 1e-5, err
    assert torch.allclose(ours.norm(dim=-1), torch.ones(4), atol=1e-6)


def test_padding_does_not_change_a_row(embedder):
    alone = embedder.encode(SENTENCES[2:3])
    batched = embedder.encode(SENTENCES)[2:3]                      # padded to the longest sentence
    assert (alone - batched).abs().max().item() < 1e-5


def test_mean_pool_and_normalize_by_hand():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])   # (1, 3, 2), the last position is padding
    m = torch.tensor([[1, 1, 0]])
    pooled = mean_pool(h, m)
    assert torch.equal(pooled, torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(l2_normalize(pooled), torch.tensor([[2.0, 3.0]]) / 13 ** 0.5)


def test_long_input_truncated_with_warning(embedder, st_model):
    long = "the quick brown fox jumps over the lazy dog " * 60     # ~540 tokens > 256
    assert embedder.count_tokens([long])[0] > embedder.max_length
    with pytest.warns(UserWarning, match="truncated") as record:
        ours = embedder.encode([long, "short"])
    assert record[0].filename == __file__                              # the warning points at the caller
    ref = torch.from_numpy(st_model.encode([long, "short"], convert_to_numpy=True))   # truncates at 256 too
    assert (ours - ref).abs().max().item() < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedder.encode(["short"])                                    # no warning when nothing is cut


def test_bad_input(embedder):
    with pytest.raises(ValueError, match="list of str"):
        embedder.encode("one string")
    with pytest.raises(ValueError, match="non-str"):
        embedder.encode(["ok", 3])
    assert embedder.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="model_dir"):
        type(embedder)("/nonexistent")
