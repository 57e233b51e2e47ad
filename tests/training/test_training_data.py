"""Local data through datasets, packing, the seeded batch order, and the loss-curve PNG."""

import json

import pytest
import torch

from mlcore.training import batch_indices, load_text_dataset, pack_tokens, plot_loss_curves, tokenize_and_pack


def test_load_text_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    ds = load_text_dataset(tmp_path / "a.txt")
    assert ds["text"] == ["first line\nsecond line\n"]
    assert load_text_dataset(tmp_path / "a.txt", sample_by="line")["text"] == ["first line", "second line"]
    rows = [{"text": "hello", "id": 1}, {"text": "world", "id": 2}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_text_dataset(tmp_path / "b.jsonl")["text"] == ["hello", "world"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_dataset(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_text_dataset(tmp_path / "empty.txt")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="'text' column"):
        load_text_dataset(tmp_path / "c.jsonl")
    (tmp_path / "d.csv").write_text("a,b")
    with pytest.raises(ValueError, match="suffix"):
        load_text_dataset(tmp_path / "d.csv")


def test_tokenize_and_pack(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["abc", "de", "fghij"]))
    ds = load_text_dataset(tmp_path / "a.jsonl")
    packed = tokenize_and_pack(ds, lambda s: [ord(c) for c in s], 4, separator_id=0)
    stream = [97, 98, 99, 0, 100, 101, 0, 102, 103, 104, 105, 106, 0]
    assert packed["input_ids"].tolist() == [stream[0:4], stream[4:8], stream[8:12]]
    with pytest.raises(ValueError, match="fewer than block_size"):
        pack_tokens([[1, 2]], 8)


def test_batch_order_is_a_seeded_permutation_per_epoch():
    n, b = 10, 4
    stream = torch.cat([batch_indices(n, b, i, seed=3) for i in range(5)])   # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert stream[:10].tolist() == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert torch.equal(batch_indices(n, b, 3, seed=3), batch_indices(n, b, 3, seed=3))
    assert not torch.equal(torch.cat([batch_indices(n, b, i, seed=4) for i in range(3)]), stream[:12])


def test_loss_curve_png(tmp_path):
    run = {"history": [{"step": s, "loss": 5 / s} for s in range(1, 20)],
           "evals": [{"step": 10, "loss": 0.7, "perplexity": 2.01}]}
    path = plot_loss_curves({"toy": run}, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_loss_curves({}, tmp_path / "x.png")


def test_packing_and_loading_arguments_are_named(tmp_path) -> None:
    import datasets

    with pytest.raises(ValueError, match="token ids"):
        pack_tokens([[1.5, 2, 3, 4]], 2)  # torch.tensor would have truncated 1.5 to 1
    with pytest.raises(ValueError, match="token ids"):
        pack_tokens([[-1, 2, 3, 4]], 2)
    with pytest.raises(ValueError, match="separator_id"):
        pack_tokens([[1, 2, 3, 4]], 2, separator_id=-1)
    with pytest.raises(ValueError, match="block_size"):
        pack_tokens([[1, 2, 3, 4]], 4.0)
    text = tmp_path / "a.txt"
    text.write_text("one line\nanother line\n")
    with pytest.raises(ValueError, match="sample_by"):
        load_text_dataset(text, sample_by="sentence")
    with pytest.raises(ValueError, match="text_field"):
        load_text_dataset(text, text_field=3)
    with pytest.raises(ValueError, match="text_field='body' is no column"):
        tokenize_and_pack(datasets.Dataset.from_dict({"text": ["a b"]}), lambda t: [1, 2], 2, text_field="body")


def test_batch_indices_refuses_bad_arguments_by_name():
    """A negative batch_size failed inside torch.arange, a float index inside manual_seed, and a negative index
    silently served an 'epoch -1' permutation."""
    for kwargs, name in (({"batch_size": -1}, "batch_size"), ({"batch_size": 2.0}, "batch_size"),
                         ({"index": -1}, "index"), ({"index": 1.5}, "index"), ({"seed": "0"}, "seed")):
        with pytest.raises(ValueError, match=f"batch_indices: {name}"):
            batch_indices(**{"num_examples": 10, "batch_size": 2, "index": 0, "seed": 0, **kwargs})


def test_labels_and_loss_mask_together_are_refused():
    """labels are used as given, so a loss_mask beside them was silently ignored (the prompt was trained on)."""
    from mlcore.training.data import check_data

    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="both 'labels' and 'loss_mask'"):
        check_data({"input_ids": ids, "labels": ids, "loss_mask": torch.ones_like(ids)})
