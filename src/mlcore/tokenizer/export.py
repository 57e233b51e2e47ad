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

Special-token text is always split out of the text by HF (as ``encode(text, allowed_special="all")``; transformers'
``split_special_tokens=True`` gives ``encode_ordinary``), while mlcore's and tiktoken's ``encode`` refuse it by
default. HF adds nothing around the text (no post-processor: no BOS / EOS, as the shipped models expect), and its
decode round trips exactly (``clean_up_tokenization_spaces`` would drop the space in ``"a ,"``: transformers 5.25
skips it for BPE models, and the config below sets it off for every version).

A ``tokenizer.json`` cannot say which special token is the EOS / BOS / padding token: transformers reads that from
``tokenizer_config.json``, which :func:`save_pretrained` writes beside it (without it ``AutoTokenizer`` has
``eos_token=None`` while the model's ``config.json`` names an ``eos_token_id``).

Decoding special tokens. HF's decoder also runs on added tokens (tokenizers 0.23; no ``added_tokens`` flag changes
that): ``ByteLevel`` reads a token whose characters are all in GPT-2's byte table as byte-level text, so ``"«sep»"``
or ``"<|día|>"`` would decode to other bytes (a token with any character outside the table is passed through as
its UTF-8 text, so ASCII tokens and ``"<|日本|>"`` are fine). For such a token the decoder starts with a ``Replace``
of its text by its byte-level spelling (``"«"`` -> ``"Â«"``), which ``ByteLevel`` then maps back to its UTF-8
bytes. ``Replace`` also runs on ordinary tokens, so the export checks that it changes none of them (else it warns).

Merges. HF applies a merge only to the exact pair of symbols it lists, while tiktoken merges any two
adjacent parts whose concatenated bytes are a token, ranked by that token. So for each token, in rank
order, we list every split ``x + y`` into two tokens (the learned pair first). The lowest-rank pair then
means the same in both; the one case left is a tie between two *different* splits of the same token
overlapping in one word (``ab|a|ba``), where HF takes list order and tiktoken the leftmost.
"""

from __future__ import annotations

import json
import numbers
import string
import warnings
from functools import lru_cache
from pathlib import Path

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
    if not _warn_on_pattern_gaps(tok):  # one warning about the split is enough
        _warn_on_engine_differences(tok)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    replaces = special_token_replaces(tok, names)
    decoder = {"type": "Sequence", "decoders": [*replaces, byte_level]} if replaces else byte_level
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
        "decoder": decoder,
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


def save_pretrained(
    tok: BaseTokenizer,
    folder: str | Path,
    *,
    eos_token: str | None = None,
    bos_token: str | None = None,
    pad_token: str | None = None,
    model_max_length: int | None = None,
) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``folder`` (created), for
    ``transformers.AutoTokenizer.from_pretrained(folder)``. ``eos_token`` / ``bos_token`` / ``pad_token`` name
    special tokens of ``tok`` (None: the role is unset); ``model_max_length`` is the model's context length
    (None: transformers' "very large" default). The other special tokens are listed as
    ``additional_special_tokens``, so transformers' ``all_special_ids`` holds every one. Nothing is added to encoded
    text (module docstring)."""
    roles = {"eos_token": eos_token, "bos_token": bos_token, "pad_token": pad_token}
    for name, value in roles.items():
        if value is not None and (not isinstance(value, str) or value not in tok.special_tokens):
            raise ValueError(f"{name} must be one of the special tokens {sorted(tok.special_tokens)} or None, "
                             f"got {value!r}")
    if model_max_length is not None and (
        isinstance(model_max_length, bool) or not isinstance(model_max_length, numbers.Integral)
        or model_max_length < 1
    ):
        raise ValueError(f"model_max_length must be a positive int or None, got {model_max_length!r}")
    spec = to_hf_json(tok)  # before creating anything: it may raise
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **roles}
    # Every special token is special to transformers too: without this list its ``all_special_tokens`` /
    # ``all_special_ids`` (which ``get_special_tokens_mask`` and data collators read) hold only the roles above, so
    # ``<|im_start|>`` counted as ordinary text. ``additional_special_tokens`` is the key transformers 4 reads and 5
    # renames to ``extra_special_tokens`` (in 4, ``extra_special_tokens`` is a dict of named tokens, not a list).
    others = [s for s, _ in sorted(tok.special_tokens.items(), key=lambda x: x[1]) if s not in roles.values()]
    if others:
        config["additional_special_tokens"] = others
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(spec, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    return out


def special_token_replaces(tok: BaseTokenizer, names: list[str]) -> list[dict]:
    """``Replace`` decoders that make HF's ``ByteLevel`` decoder give back each special token's text (module
    docstring); warns for a special token this cannot fix."""
    table = set(bytes_to_unicode().values())
    needed = [s for s in tok.special_tokens if set(s) <= table and byte_level_string(s.encode("utf-8")) != s]
    needed.sort(key=lambda s: (-len(s), s))  # longest first, so a token inside another is replaced after it
    pairs = [(s, byte_level_string(s.encode("utf-8"))) for s in needed]

    def run(text: str) -> str:  # what HF's Replace decoders do to one token
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    changed = [name for name in names if run(name) != name]
    wrong = [s for s in needed if run(s) != byte_level_string(s.encode("utf-8"))]
    if changed or wrong:
        bad = wrong or [s for s in needed if any(s in name for name in changed)]
        warnings.warn(
            f"special tokens {bad} cannot be exported so that Hugging Face tokenizers decodes them right: every "
            "character is in GPT-2's byte table, so HF's ByteLevel decoder turns them into other bytes, and "
            "the fix (a Replace decoder) would also change ordinary tokens. Encoding is unaffected; rename the "
            "tokens (e.g. ASCII only) for an exact HF decode.",
            stacklevel=4,
        )
        return []
    return [{"type": "Replace", "pattern": {"String": old}, "content": new} for old, new in pairs]


# A text with a character of every common kind: a split pattern that leaves one of them unmatched drops it.
_COVERAGE_PROBE = string.printable + "\u00a0\u3000é日本👍\u0301«»—\u200d"


def _warn_on_pattern_gaps(tok: BaseTokenizer) -> bool:
    """Warn if the split pattern leaves characters of a probe text unmatched: mlcore and tiktoken drop them, while
    HF's ``Split`` (``behavior="Isolated"``) keeps them as pieces, so the ids differ. (Whether a pattern covers every
    character cannot be decided cheaply in general; a probe text catches the usual cases, e.g. ``\\p{L}+``.)
    Returns whether it warned."""
    kept = "".join(tok.compiled_pattern.findall(_COVERAGE_PROBE))
    if kept != _COVERAGE_PROBE:
        missing = sorted(set(_COVERAGE_PROBE) - set(kept))[:10]
        warnings.warn(
            f"split pattern {tok.pattern!r} does not match every character (e.g. {''.join(missing)!r}): mlcore and "
            "tiktoken drop unmatched text while the Hugging Face export keeps it, so their ids will differ on such "
            "text. Add a catch-all alternative such as '|\\s+|.' to the pattern.",
            stacklevel=4,
        )
        return True
    return False


# Digit runs of every length, contractions in every case and white-space runs: where regex engines read the same
# pattern differently (tiktoken's cl100k spelling ``\p{N}{1,3}+`` is possessive in Rust and Python's ``regex``, a
# repetition ``(?:\p{N}{1,3})+`` in Oniguruma, so HF would keep "12345" whole).
_ENGINE_PROBE = _COVERAGE_PROBE + " 1 12 123 1234 12345 1234567 x12345y 'S 'LL don't I'M\r\n\n  \t x  \n\n"


def _warn_on_engine_differences(tok: BaseTokenizer) -> None:
    """Warn if Hugging Face ``tokenizers``' regex engine (Oniguruma) splits a probe text differently from mlcore
    (and tiktoken) with the same pattern, or cannot compile it; skipped where ``tokenizers`` is not installed."""
    try:
        from tokenizers import Regex, pre_tokenizers
    except ImportError:
        return
    try:
        pieces = [p for p, _ in pre_tokenizers.Split(Regex(tok.pattern), "isolated").pre_tokenize_str(_ENGINE_PROBE)]
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own Exception type for a bad regex
        problem = f"Hugging Face tokenizers cannot compile it ({exc}), so the export will not load"
    else:
        ours = tok.compiled_pattern.findall(_ENGINE_PROBE)
        if pieces == ours:
            return
        n = next(i for i, (a, b) in enumerate(zip(pieces + [""], ours + [""])) if a != b)
        problem = (f"Hugging Face tokenizers splits text differently (HF piece {pieces[n:n + 1]}, mlcore "
                   f"{ours[n:n + 1]}), so the exported tokenizer's ids will differ on such text")
    warnings.warn(
        f"split pattern {tok.pattern!r}: {problem}. GPT4_PATTERN is cl100k's split spelled so that both engines "
        "agree.",
        stacklevel=4,
    )
