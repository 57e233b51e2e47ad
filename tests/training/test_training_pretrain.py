"""The pretraining recipe end to end on its 'smoke' preset (seconds; the numbers mean nothing)."""

import json

import pytest

from mlcore.training.assets import load_tiny
from mlcore.training.pretrain import pretrain, split_corpus


def test_split_holds_out_whole_topics():
    from pydoc_data.topics import topics

    train, held = split_corpus(holdout=0.05, seed=0)
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(topics)
    frac = sum(map(len, held.values())) / sum(map(len, topics.values()))
    assert 0.05 <= frac < 0.25
    assert split_corpus(holdout=0.05, seed=0) == (train, held)
    with pytest.raises(ValueError, match="holdout"):
        split_corpus(holdout=0.9, seed=0)


def test_smoke_preset_writes_loadable_artefacts(tmp_path):
    log = pretrain("smoke", out=tmp_path, progress=False, command="python -m mlcore.training.pretrain --preset smoke")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer.bpe", "tokenizer.json", "train_log.json", "loss_curve.png", "COMMAND.txt",
            "target", "draft"} <= names
    assert json.loads((tmp_path / "train_log.json").read_text())["seed"] == 0
    for kind in ("target", "draft"):
        model, tok = load_tiny(kind, folder=tmp_path)
        assert model.config.vocab_size == tok.vocab_size == 512
        assert len(log[kind]["history"]) == log[kind]["train_config"]["max_steps"]
        assert log[kind]["heldout_perplexity"] == pytest.approx(log[kind]["heldout_perplexity_fp32"], rel=0.05)
    with pytest.raises(ValueError, match="preset"):
        pretrain("huge", out=tmp_path)


def test_smoke_preset_resumes_from_its_checkpoints(tmp_path):
    first = pretrain("smoke", out=tmp_path / "a", progress=False, work_dir=tmp_path / "work")
    assert (tmp_path / "work" / "target" / "checkpoints" / "step_000003").is_dir()
    again = pretrain("smoke", out=tmp_path / "b", progress=False, work_dir=tmp_path / "work", resume=True)
    for kind in ("target", "draft"):
        assert again[kind]["history"] == first[kind]["history"]        # nothing retrained, history restored
        assert again[kind]["heldout_loss"] == pytest.approx(first[kind]["heldout_loss"], abs=1e-6)
