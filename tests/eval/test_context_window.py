"""Context-window measurement: scaled models equal transformers' RoPE scalings; sinks equal a full forward
inside the window; the table's shape and contents."""

import pytest
import torch
from matplotlib.figure import Figure

from mlcore.eval.context_window import (
    plot_position_perplexity,
    position_nll,
    position_perplexity,
    scaled_model,
)

from ._models import random_ids, tiny_llama, tiny_pair


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(32)  # "trained" context 32


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "factor": 2.5},
    {"rope_type": "dynamic", "factor": 2.5},
    {"rope_type": "yarn", "factor": 2.5, "original_max_position_embeddings": 32},
])
def test_scaled_model_equals_transformers(pair, rope):
    hf, ours = pair
    # transformers' dynamic NTK reads max_position_embeddings as the original length; the others the new one
    ref = tiny_llama(32 if rope["rope_type"] == "dynamic" else 80, **rope)
    ref.load_state_dict(hf.state_dict())
    ids = random_ids(80)
    scaled = scaled_model(ours, rope["rope_type"], max_seq_len=80, factor=2.5)
    with torch.no_grad():
        torch.testing.assert_close(scaled(ids), ref(ids).logits, rtol=1e-4, atol=1e-4)


def test_sinks_and_plain_rope_inside_the_window(pair):
    _, ours = pair
    ids = random_ids(72, rows=2, seed=4)
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(ours(ids[:, :32]).transpose(1, 2)[:, :, :-1], ids[:, 1:32],
                                                 reduction="none")
    rope = position_nll(ours, ids, "rope")
    sinks = position_nll(ours, ids, "sinks", sinks=4)  # window 28
    assert rope.shape == sinks.shape == (2, 71)
    torch.testing.assert_close(rope[:, :31], full, rtol=1e-4, atol=1e-4)  # causal: the prefix is unchanged
    torch.testing.assert_close(sinks[:, :27], full[:, :27], rtol=1e-4, atol=1e-4)  # prefill of the window
    assert (sinks[:, 40:] - rope[:, 40:]).abs().max() > 1e-3  # past the window the two differ


def test_table_and_plot(pair):
    _, ours = pair
    ids = random_ids(64, rows=1, seed=5)
    table = position_perplexity(ours, ids, bin_size=16)
    assert list(table.columns) == ["method", "start", "end", "perplexity", "nll", "trained"]
    assert len(table) == 5 * 4 and set(table["method"]) == {"rope", "linear", "dynamic", "yarn", "sinks"}
    assert (table["perplexity"] > 1).all() and table["trained"].sum() == 5 * 2
    assert isinstance(plot_position_perplexity(table, trained_length=32), Figure)


def test_bad_input(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="method"):
        position_nll(ours, random_ids(40), "alibi")
    with pytest.raises(ValueError, match="input_ids"):
        position_nll(ours, random_ids(40)[0], "rope")
    with pytest.raises(ValueError, match="bin_size"):
        position_perplexity(ours, random_ids(40), bin_size=0)


def test_sinks_on_a_text_inside_the_window_equals_a_full_forward(pair):
    # a text no longer than the window is all prefill: was a RuntimeError (one logit column too many)
    _, ours = pair
    ids = random_ids(20, rows=2, seed=6)
    with torch.no_grad():
        full = torch.nn.functional.cross_entropy(ours(ids).transpose(1, 2)[:, :, :-1], ids[:, 1:], reduction="none")
    torch.testing.assert_close(position_nll(ours, ids, "sinks"), full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(position_nll(ours, ids[:, :2], "sinks", window=2), full[:, :1], rtol=1e-4, atol=1e-4)


def test_sinks_window_past_the_trained_length_and_a_methods_str_are_named(pair):
    _, ours = pair
    ids = random_ids(48)
    with pytest.raises(ValueError, match="window must be an int in \\[1, max_seq_len - sinks = 28\\], got 29"):
        position_nll(ours, ids, "sinks", window=29, sinks=4)  # 33 cached tokens > the 32 trained positions
    with pytest.raises(ValueError, match="sinks must be an int in \\[0, max_seq_len=32\\)"):
        position_nll(ours, ids, "sinks", sinks=40)  # was "window must be an int >= 1, got -8"
    with pytest.raises(ValueError, match="methods must be a sequence"):
        position_perplexity(ours, ids, methods="rope")  # was "method must be one of ..., got 'r'"


def test_heldout_batch_names_a_bad_length_or_rows():
    from mlcore.eval.context_window import heldout_batch

    tok = object()  # never read: the arguments are checked first
    for length, rows in ((0, 2), (8, 0), (8.5, 2)):  # (0, 2) was a ZeroDivisionError, (8, 0) blamed the length
        with pytest.raises(ValueError, match="(length|rows) must be an int >= 1"):
            heldout_batch(tok, length, rows)
