"""The export as ``transformers`` loads it: ``save_pretrained`` folders through ``AutoTokenizer``, against mlcore,
tiktoken (built from mlcore's merges) and ``tokenizers``."""

import json
import warnings

import pytest

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello , world ! It's a test .", "a  ,\tb\r\n\n  c ?", "x = [1, 2] ; y 'll n't", "日本語 👨‍👩‍👧 e\u0301 ß",
         " " * 40 + "\n" * 5, "123456789 3.14", "\u00a0\u3000\u2028 end"]


@pytest.fixture(scope="module")
def folder(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tok")
    tok.save_pretrained(path, eos_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=128)
    return path


@pytest.fixture(scope="module")
def auto(folder):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def test_roles_and_settings_reach_transformers(tok, auto):
    """Regression: the export was a bare tokenizer.json, so AutoTokenizer had eos_token=None (and no way to set it
    in the file) while the model's config.json names an eos_token_id."""
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == tok.special_tokens["<|endoftext|>"]
    assert auto.pad_token_id == tok.special_tokens["<|im_end|>"] and auto.bos_token is None
    assert auto.model_max_length == 128 and auto.clean_up_tokenization_spaces is False
    assert len(auto) == tok.vocab_size
    padded = auto(["a", "a b c"], padding=True)["input_ids"]
    assert padded[0] == tok.encode("a") + [auto.pad_token_id] * (len(padded[1]) - 1)


def test_ids_and_round_trip_match_mlcore_tiktoken_tokenizers(tok, folder, auto):
    from tokenizers import Tokenizer

    enc, hf = tok.to_tiktoken(), Tokenizer.from_file(str(folder / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == enc.encode(text) == hf.encode(text).ids == auto(text)["input_ids"] == fast.encode(text)
        assert auto.decode(ids) == fast.decode(ids) == text  # no clean-up of " ," / " ?" / " 'll"
        assert auto.convert_tokens_to_ids(auto.convert_ids_to_tokens(ids)) == ids
    assert auto.batch_decode([tok.encode(t) for t in TEXTS]) == TEXTS


def test_special_token_text_is_split_out_and_nothing_is_added(tok, auto):
    """HF always maps special-token text to its id (mlcore's allowed_special="all"), where mlcore and tiktoken refuse
    it by default; split_special_tokens=True is encode_ordinary; add_special_tokens adds no BOS / EOS."""
    text = "<|im_start|>user\nhi<|im_end|>x<|endoftext|>"
    ids = tok.encode(text, allowed_special="all")
    assert auto(text)["input_ids"] == auto.encode(text, add_special_tokens=True) == ids
    assert auto(text, split_special_tokens=True)["input_ids"] == tok.encode_ordinary(text)
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode(text)
    with pytest.raises(ValueError):
        tok.to_tiktoken().encode(text)
    assert auto.decode(ids, skip_special_tokens=True) == "user\nhix"


def test_resaved_by_transformers_is_the_same_tokenizer(tok, auto, tmp_path):
    auto.save_pretrained(tmp_path)
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for key in ("eos_token", "pad_token", "bos_token", "model_max_length", "clean_up_tokenization_spaces"):
        assert ours[key] == getattr(auto, key)
    for text in TEXTS:
        assert again(text)["input_ids"] == tok.encode(text)


def test_shipped_tiny_tokenizer_agrees_with_the_model_config(tmp_path):
    """The tiny models' tokenizer through AutoTokenizer: mlcore's ids on held-out text, and the special-token ids
    the models' config.json names."""
    from mlcore.training.assets import load_tiny_tokenizer, tiny_dir, tiny_heldout_text

    tok = load_tiny_tokenizer()
    config = json.loads((tiny_dir() / "target" / "config.json").read_text())
    eos = tok.inverse_special[config["eos_token_id"]]
    tok.save_pretrained(tmp_path, eos_token=eos, model_max_length=config["max_position_embeddings"])
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert (auto.eos_token_id, auto.bos_token_id, auto.pad_token_id) == (
        config["eos_token_id"], config["bos_token_id"], config.get("pad_token_id"))
    text = tiny_heldout_text()[:20000]
    ids = tok.encode(text)
    assert auto(text)["input_ids"] == ids and auto.decode(ids) == text


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"eos_token": "<eos>"}, "eos_token"), ({"pad_token": 1023}, "pad_token"), ({"bos_token": ["<|endoftext|>"]}, "bos_token"),
    ({"model_max_length": 0}, "model_max_length"), ({"model_max_length": 2.5}, "model_max_length"),
    ({"model_max_length": True}, "model_max_length"),
])
def test_bad_roles_are_named_and_nothing_is_written(tok, tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        tok.save_pretrained(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_save_pretrained_refuses_what_the_json_export_refuses(tmp_path):
    from mlcore.tokenizer import BPETokenizer

    clash = BPETokenizer([], special_tokens={"a": 256})  # the byte-level name of byte 0x61
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="special tokens"):
            clash.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
