"""The shipped tiny models: transformers loads them and computes the same held-out perplexity we logged."""

import math

import pytest
import torch

from mlcore.training.assets import load_tiny, tiny_dir, tiny_heldout_text, tiny_train_log

pytestmark = pytest.mark.skipif(not (tiny_dir() / "train_log.json").exists(),
                                reason="tiny models not built (python -m mlcore.training.pretrain --preset tiny)")


def _heldout_blocks(tokenizer, block_size):
    from pydoc_data.topics import topics

    eot = tokenizer.special_tokens["<|endoftext|>"]
    stream = []
    for name in tiny_train_log()["heldout_topics"]:
        stream += tokenizer.encode_ordinary(topics[name]) + [eot]
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


@pytest.mark.parametrize("kind", ["target", "draft"])
def test_transformers_reproduces_logged_perplexity(kind):
    from transformers import AutoModelForCausalLM

    log = tiny_train_log()
    model, tokenizer = load_tiny(kind)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir() / kind, dtype=torch.float32).eval()
    blocks = _heldout_blocks(tokenizer, log["block_size"])
    with torch.no_grad():
        losses = [hf(input_ids=b, labels=b).loss for b in blocks.split(8)]
        sizes = [len(b) for b in blocks.split(8)]
        hf_loss = sum(float(x) * n for x, n in zip(losses, sizes)) / sum(sizes)
        torch.testing.assert_close(model(blocks[:2]), hf(input_ids=blocks[:2]).logits, rtol=1e-4, atol=1e-4)
    assert math.exp(hf_loss) == pytest.approx(log[kind]["heldout_perplexity"], rel=1e-3)
    assert (tiny_dir() / kind / "model.safetensors").stat().st_size < 10.5e6
    assert model.config.vocab_size == tokenizer.vocab_size == 4096


def test_tiny_models_share_the_tokenizer_and_beat_chance():
    log = tiny_train_log()
    assert log["target"]["heldout_perplexity"] < log["draft"]["heldout_perplexity"] < 4096
    _, tokenizer = load_tiny("draft")
    text = tiny_heldout_text()[:2000]
    assert tokenizer.decode(tokenizer.encode_ordinary(text)) == text
    assert (tiny_dir() / "COMMAND.txt").read_text().startswith("python -m mlcore.training.pretrain --preset tiny")


def test_load_tiny_bad_input(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        load_tiny("huge")
    with pytest.raises(FileNotFoundError, match="pretrain"):
        load_tiny("target", folder=tmp_path)


@pytest.mark.parametrize("kind", ["target", "draft"])
def test_hf_folder_names_the_tokenizers_end_of_text(kind):
    """Without eos_token_id in config.json transformers fell back to LlamaConfig's eos 2 (an ordinary token here),
    so its generate on the shipped folder stopped on the wrong token."""
    from transformers import AutoModelForCausalLM

    _, tok = load_tiny(kind)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir() / kind)
    assert hf.config.eos_token_id == hf.generation_config.eos_token_id == tok.special_tokens["<|endoftext|>"]
    assert hf.config.bos_token_id is None


def test_transformers_auto_tokenizer_reads_the_shipped_folder():
    """tokenizer_config.json beside tokenizer.json: AutoTokenizer knows the end-of-text token the models'
    config.json names, the context length, and encodes the held-out text as our tokenizer does."""
    from pydoc_data.topics import topics

    from transformers import AutoConfig, AutoTokenizer

    _, tok = load_tiny("target")
    hf_tok = AutoTokenizer.from_pretrained(tiny_dir())
    eot = tok.special_tokens["<|endoftext|>"]
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == eot
    assert AutoConfig.from_pretrained(tiny_dir() / "target").eos_token_id == hf_tok.eos_token_id
    assert hf_tok.model_max_length == tiny_train_log()["block_size"]
    text = topics[tiny_train_log()["heldout_topics"][0]][:4000]
    ids = tok.encode_ordinary(text)
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids) == text
