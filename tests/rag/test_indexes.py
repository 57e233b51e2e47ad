"""Exact cosine index (torch), its persistence with an embedder manifest, and HNSW (faiss) recall against it."""

import pytest
import torch

from mlcore.rag import ApproxIndex, DenseIndex, recall_vs_exact


def _clustered(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, d, generator=g)
    x = centres[torch.randint(0, 40, (n,), generator=g)] + 0.6 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def test_exact_search_is_brute_force():
    x, q = _clustered(500, 32, 0), _clustered(20, 32, 1)
    scores, ids = DenseIndex(x).search(q, k=7)
    ref = torch.topk(q @ x.T, 7)
    assert torch.equal(ids, ref.indices) and torch.allclose(scores, ref.values)


def test_hnsw_recall_at_10_against_exact():
    x, q = _clustered(4000, 384, 2), _clustered(100, 384, 3)
    exact = DenseIndex(x).search(q, k=10)[1]
    good = recall_vs_exact(ApproxIndex(x, M=32, ef_search=128).search(q, k=10)[1], exact)
    poor = recall_vs_exact(ApproxIndex(x, M=2, ef_construction=4, ef_search=1).search(q, k=10)[1], exact)
    assert good >= 0.93, good                                          # the floor the report quotes
    assert poor < good                                                 # the knob really trades recall


def test_save_load_and_refusals(tmp_path, embedder):
    texts = ["The assert statement.", "Coroutines and await.", "Class definitions."]
    index = DenseIndex.build(texts, embedder)
    index.save(tmp_path / "ix")
    back = DenseIndex.load(tmp_path / "ix", embedder=embedder)
    assert torch.equal(back.embeddings, index.embeddings) and back.texts == texts
    q = embedder.encode(["what does await do"])
    assert back.search(q, 1)[1].item() == 1
    other = dict(embedder.identity, name="intfloat/e5-small", fingerprint="0" * 16)
    with pytest.raises(ValueError, match="built with embedder"):
        DenseIndex.load(tmp_path / "ix", embedder=other)
    with pytest.raises(ValueError, match="dimension 384"):
        DenseIndex.load(tmp_path / "ix", embedder=dict(embedder.identity, dim=768))
    with pytest.raises(ValueError, match="no saved index"):
        DenseIndex.load(tmp_path / "missing", embedder=embedder)
    with pytest.raises(ValueError, match="no embedder identity"):
        DenseIndex(torch.randn(2, 4)).save(tmp_path / "anon")


def test_bad_input():
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match="empty"):
        DenseIndex(torch.empty(0, 8))
    with pytest.raises(ValueError, match="empty corpus"):
        DenseIndex.build([], embedder=None)
    with pytest.raises(ValueError, match="NaN"):
        DenseIndex(torch.full((2, 8), float("nan")))
    with pytest.raises(ValueError, match="dimension 4, the index expects 8"):
        DenseIndex(x).search(torch.randn(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        DenseIndex(x).search(torch.full((1, 8), float("nan")))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        ApproxIndex(torch.randn(8))
    with pytest.raises(ValueError, match="k must be"):
        ApproxIndex(x).search(torch.randn(1, 8), k=0)


def test_approx_search_near_n_returns_real_ids_only():
    # with k close to N the HNSW walk leaves slots unreached, which faiss marks with id -1 (score -FLT_MAX);
    # those must be filled with real documents, and the top of each row must stay the exact top
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(300, 16, generator=g), torch.randn(4, 16, generator=g)
    index = ApproxIndex(x)
    scores, ids = index.search(q, k=300)
    assert ids.shape == (4, 300) and bool((ids >= 0).all())
    assert all(len(set(row.tolist())) == 300 for row in ids)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())  # best first
    exact_scores, _ = DenseIndex(x).search(q, k=300)
    torch.testing.assert_close(scores, exact_scores)  # every document returned, so the sorted scores agree


def test_degenerate_inputs_are_named():
    """texts="abc" was indexed as three texts 'a', 'b', 'c'; D = 0 vectors were indexed (every score 0); an
    empty (B, 0) pair gave recall_vs_exact a ZeroDivisionError."""
    with pytest.raises(ValueError, match="single str"):
        DenseIndex(torch.randn(3, 4), texts="abc")
    for index in (DenseIndex, ApproxIndex):
        with pytest.raises(ValueError, match="D >= 1"):
            index(torch.zeros(3, 0))
    with pytest.raises(ValueError, match="B, k >= 1"):
        recall_vs_exact(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))


def test_corrupt_saved_index_is_refused_by_name(tmp_path):
    # each was a KeyError / AttributeError / StopIteration / SafetensorError, or loaded silently (texts not str,
    # an extra tensor whose shape was checked in place of the embeddings)
    import json

    from safetensors.torch import save_file

    ident = {"name": "m", "dim": 4, "fingerprint": "f"}

    def saved(name):
        DenseIndex(torch.randn(3, 4), texts=["a", "b", "c"], embedder=ident).save(tmp_path / name)
        return tmp_path / name

    def edit(folder, **fields):
        m = json.loads((folder / "manifest.json").read_text())
        m.update(fields)
        (folder / "manifest.json").write_text(json.dumps(m))

    cases = [
        (lambda f: (f / "manifest.json").write_text("{not json"), "not a readable JSON manifest"),
        (lambda f: (f / "manifest.json").write_text("[1, 2]"), "must hold a JSON object"),
        (lambda f: edit(f, embedder=None), "'embedder' must be the identity dict"),
        (lambda f: edit(f, dim="four"), "'dim' must be a positive int"),
        (lambda f: edit(f, texts=[1, 2, 3]), "'texts' must be null or a list of 3 str"),
        (lambda f: edit(f, texts={"a": 1, "b": 2, "c": 3}), "'texts' must be null or a list of 3 str"),
        (lambda f: (f / "index.safetensors").write_bytes(b"\0" * 64), "not a readable safetensors file"),
        (lambda f: save_file({"foo": torch.randn(3, 4)}, str(f / "index.safetensors")), "holds tensors \\['foo'\\]"),
        (lambda f: save_file({"aaa": torch.randn(3, 4), "embeddings": torch.randn(3, 4)},
                             str(f / "index.safetensors")), "holds tensors \\['aaa', 'embeddings'\\]"),
    ]
    for i, (corrupt, message) in enumerate(cases):
        folder = saved(f"ix{i}")
        corrupt(folder)
        with pytest.raises(ValueError, match=message):
            DenseIndex.load(folder, embedder=ident)
    with pytest.raises(ValueError, match="embedder must be an Embedder or its identity dict"):
        DenseIndex.load(saved("ok"), embedder={"name": "m"})  # was KeyError: 'dim'
    with pytest.raises(ValueError, match="texts must hold str"):
        DenseIndex(torch.randn(2, 4), texts=[1, 2])
    with pytest.raises(ValueError, match="embedder must be an identity dict"):
        DenseIndex(torch.randn(2, 4), embedder="m")
