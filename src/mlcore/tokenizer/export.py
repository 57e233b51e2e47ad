"""Export to the ecosystem: a ``tiktoken.Encoding`` and a Hugging Face ``tokenizers`` JSON.

tiktoken needs ``mergeable_ranks: dict[bytes, int]`` with rank == id — which our ids are by
construction — plus the split pattern and the special tokens.

HF ``tokenizers`` describes the same tokenizer as a pipeline:

- pre-tokenizer: ``Split`` with our regex (``behavior="Isolated"``: every match is its own piece),
  then ``ByteLevel(use_regex=False)``, which only maps each byte to a printable character (GPT-2's
  ``bytes_to_unicode``: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100..U+0143);
- model: ``BPE`` over those byte-level strings, with ``ignore_merges=True`` (a pre-token that is already a
  token is taken whole, as tiktoken does), ``byte_fallback=False`` (no ``<0xNN>`` tokens: every byte is a
  token already), no unknown token, no dropout;
- decoder ``ByteLevel``; special tokens as ``added_tokens`` with ``special=True``.

Merges. HF applies a merge only to the exact pair of symbols it lists, while tiktoken merges any two
adjacent parts whose concatenated bytes are a token, ranked by that token. So for each token, in rank
order, we list every split ``x + y`` into two tokens (the learned pair first). The lowest-rank pair then
means the same in both; the one case left is a tie between two *different* splits of the same token
overlapping in one word (``ab|a|ba``), where HF takes list order and tiktoken the leftmost.
"""

from __future__ import annotations

import json
from functools import lru_cache

from .base import BaseTokenizer


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (Radford et al. 2019, ``encoder.py``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_level_string(data: bytes) -> str:
    """Bytes as the printable string HF byte-level BPE stores, e.g. ``b" the"`` -> ``"Ġthe"``."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in data)


def to_tiktoken(tok: BaseTokenizer, name: str = "mlcore-bpe"):
    """Build a ``tiktoken.Encoding`` with ``tok``'s ranks, pattern and special tokens."""
    import tiktoken

    return tiktoken.Encoding(
        name=name,
        pat_str=tok.pattern,
        mergeable_ranks={b: i for i, b in enumerate(tok.vocab)},
        special_tokens=dict(tok.special_tokens),
        explicit_n_vocab=tok.vocab_size,
    )


def all_merges(tok: BaseTokenizer) -> list[tuple[int, int]]:
    """Every split of every learned token into two tokens, in rank order (learned pair first)."""
    learned = {new_id: pair for pair, new_id in reversed(list(tok.merges.items()))}  # first pair per id
    out: list[tuple[int, int]] = []
    for token_id in range(256, len(tok.vocab)):
        data = tok.vocab[token_id]
        first = learned[token_id]
        out.append(first)
        for cut in range(1, len(data)):
            x, y = tok.ranks.get(data[:cut]), tok.ranks.get(data[cut:])
            if x is not None and y is not None and (x, y) != first:
                out.append((x, y))
    return out


def to_hf_json(tok: BaseTokenizer) -> str:
    """The tokenizer as a Hugging Face ``tokenizers`` JSON string (see the module docstring)."""
    names = [byte_level_string(b) for b in tok.vocab]
    clashes = sorted(set(tok.special_tokens) & set(names))
    if clashes:
        # HF's added vocabulary gives a token whose text is already in the model vocab that vocab's id, so
        # the special token would silently turn into an ordinary one (e.g. "a", or "é" = byte 0xE9's name).
        raise ValueError(
            f"special tokens {clashes} have the same text as ordinary tokens of the byte-level vocabulary; "
            "Hugging Face tokenizers would encode them as those ordinary ids. Rename the special tokens."
        )
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for s, i in sorted(tok.special_tokens.items(), key=lambda x: x[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
                byte_level,
            ],
        },
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {name: i for i, name in enumerate(names)},
            "merges": [[names[a], names[b]] for a, b in all_merges(tok)],
        },
    }
    return json.dumps(spec, ensure_ascii=False)
