"""``BPETokenizer``: train, encode, decode, save/load, export — byte-level BPE as in GPT-2/GPT-4.

References: Sennrich et al. 2016 (BPE for subwords), Radford et al. 2019 (byte-level BPE with regex
pre-tokenization, GPT-2), OpenAI's tiktoken (encoding by rank; the ``allowed_special`` rules).

    tok = BPETokenizer.train(text, 4096, special_tokens=["<|endoftext|>"])
    ids = tok.encode("Hello world")              # == tok.to_tiktoken().encode("Hello world")
    tok.decode(ids)                              # "Hello world"
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Literal

import regex

from .base import BaseTokenizer, Pair, check_special_text, strict_id
from .encoder import ChunkEncoder
from .export import save_pretrained
from .fast_trainer import train_fast
from .naive_trainer import train_naive
from .patterns import GPT4_PATTERN, compile_pattern

TRAINERS = {"fast": train_fast, "naive": train_naive}


def count_pretokens(
    text: str, pattern: str = GPT4_PATTERN, special_tokens: Iterable[str] | None = ()
) -> Counter[bytes]:
    """Distinct pre-tokens of ``text`` as UTF-8 bytes with their frequencies; special tokens are cut out."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    if isinstance(special_tokens, str):  # would be cut out character by character
        raise ValueError(f"special_tokens must be a list of strings, not a single str: use [{special_tokens!r}]")
    specials = list(special_tokens or ())  # None: none, as in train
    for special in specials:
        # "" would cut the text between every two characters (nothing merges); a lone surrogate never matches the
        # repaired text below, so it would not be cut out: both silently wrong, as train refuses them
        if not isinstance(special, str) or not special:
            raise ValueError(f"special_tokens must be non-empty strings, got {type(special).__name__} {special!r}")
        check_special_text(special)
    compiled = compile_pattern(pattern)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _fix_surrogates(text)
    specials.sort(key=len, reverse=True)
    pieces = regex.split("|".join(regex.escape(s) for s in specials), text) if specials else [text]
    counts: Counter[str] = Counter()
    for piece in pieces:
        counts.update(compiled.findall(piece))
    return Counter({chunk.encode("utf-8"): n for chunk, n in counts.items()})


class BPETokenizer(BaseTokenizer):
    """A trained byte-level BPE tokenizer (state and decoding in :class:`BaseTokenizer`)."""

    def __init__(
        self,
        merges: Mapping[Pair, int] | Iterable[tuple[Pair, int]],
        *,
        pattern: str = GPT4_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(merges, pattern=pattern, special_tokens=special_tokens)
        self._chunks = ChunkEncoder(self.compiled_pattern, self.ranks)
        self._special_regex_cache: dict[frozenset[str], regex.Pattern[str]] = {}

    # -- training --------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        *,
        pattern: str = GPT4_PATTERN,
        special_tokens: Iterable[str] | Mapping[str, int] | None = None,
        trainer: Literal["fast", "naive"] = "fast",
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        ``vocab_size`` counts everything: 256 bytes, learned tokens and special tokens (which take the
        last ids, in the order given). Special tokens occurring in ``text`` are cut out before counting.

        ``special_tokens`` is a list (or any iterable) of distinct strings, or a dict ``{text: id}`` whose ids
        are exactly the last ones, ``vocab_size - n .. vocab_size - 1`` (tiktoken's ``special_tokens`` shape);
        other ids raise ValueError rather than being silently renumbered. A set is taken in sorted order (its
        own order changes from run to run). A single ``str`` is rejected (it would otherwise be read as one
        special token per character).
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
            raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
        vocab_size = int(vocab_size)  # a NumPy integer too, as HF's BpeTrainer takes it
        specials = _special_list(special_tokens, vocab_size)
        if vocab_size < 256 + len(specials):
            raise ValueError(
                f"vocab_size must be an int >= 256 + {len(specials)} special tokens = {256 + len(specials)}, "
                f"got {vocab_size!r}"
            )
        if not isinstance(trainer, str) or trainer not in TRAINERS:
            raise ValueError(f"trainer must be one of {sorted(TRAINERS)}, got {trainer!r}")
        num_tokens = vocab_size - len(specials)
        word_counts = count_pretokens(text, pattern, specials)
        merges = TRAINERS[trainer](word_counts, num_tokens, vocab_size=vocab_size)
        special_ids = {s: num_tokens + k for k, s in enumerate(specials)}
        return cls(merges, pattern=pattern, special_tokens=special_ids)

    # -- encoding --------------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, treating special-token text as ordinary text."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        try:
            return self._chunks.encode(text)
        except UnicodeEncodeError:
            # Lone surrogates cannot be UTF-8: repair as tiktoken does (pairs join, the rest -> U+FFFD).
            return self._chunks.encode(_fix_surrogates(text))

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Text -> ids with tiktoken's rules for special tokens.

        Special-token text listed in ``allowed_special`` ("all" = every special token) becomes its id.
        Text of a special token in ``disallowed_special`` (default "all" = every one not allowed) raises
        ValueError — so a user's "<|endoftext|>" cannot silently end a document. Pass
        ``disallowed_special=()`` to encode it as ordinary text instead.

        Where two allowed special tokens match at the same place (``"<s"`` and ``"<s>"``), the longest wins,
        as in Hugging Face ``tokenizers``; tiktoken tries them in its internal hash-map order, so for such
        overlapping sets its choice is arbitrary and may differ.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        if disallowed_special is None:  # tiktoken takes None (any falsy value) as "check nothing"
            disallowed_special = ()
        allowed_set = _special_arg("allowed_special", allowed_special)
        disallowed_set = _special_arg("disallowed_special", disallowed_special)
        known = set(self.special_tokens)
        allowed = known if allowed_set is None else allowed_set & known  # unknown: ignored
        disallowed = known - allowed if disallowed_set is None else disallowed_set
        if disallowed:
            match = self._special_regex(frozenset(disallowed)).search(text)
            if match:
                raise ValueError(
                    f"text contains the special token {match.group()!r}, which is not allowed: pass "
                    f"allowed_special={{{match.group()!r}}} to encode it as a special token, or "
                    "disallowed_special=() to encode it as ordinary text"
                )
        if not allowed:
            return self.encode_ordinary(text)
        if _has_surrogates(text):
            # As tiktoken: the disallowed check above saw the text as given; special tokens are looked for in the
            # repaired text, so "<|a\ud800b|>" is the allowed special token "<|a\ufffdb|>".
            text = _fix_surrogates(text)
        ids: list[int] = []
        start = 0
        for match in self._special_regex(frozenset(allowed)).finditer(text):
            ids.extend(self.encode_ordinary(text[start : match.start()]))
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def _special_regex(self, tokens: frozenset[str]) -> regex.Pattern[str]:
        if tokens not in self._special_regex_cache:
            ordered = sorted(tokens, key=lambda s: (-len(s), s))  # longest first
            self._special_regex_cache[tokens] = regex.compile("|".join(regex.escape(s) for s in ordered))
        return self._special_regex_cache[tokens]

    # -- export ----------------------------------------------------------------------------------
    def to_tiktoken(self, name: str = "mlcore-bpe"):
        """A ``tiktoken.Encoding`` with the same ranks, split pattern and special tokens."""
        from .export import to_tiktoken

        return to_tiktoken(self, name)

    def to_hf_json(self) -> str:
        """Hugging Face ``tokenizers`` JSON (load with ``tokenizers.Tokenizer.from_str``)."""
        from .export import to_hf_json

        return to_hf_json(self)

    def save_hf(self, path: str | Path) -> None:
        """Write :meth:`to_hf_json` to ``path`` (conventionally ``tokenizer.json``). It names no EOS / BOS / padding
        token: for ``transformers.AutoTokenizer``, write a folder with :meth:`save_pretrained`."""
        Path(path).write_text(self.to_hf_json(), encoding="utf-8")

    # a transformers folder (tokenizer.json + tokenizer_config.json); ``self`` is the function's ``tok``
    save_pretrained = save_pretrained

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")


def _special_list(special_tokens: Iterable[str] | Mapping[str, int] | None, vocab_size: int) -> list[str]:
    """The special tokens in id order, checked (see :meth:`BPETokenizer.train`)."""
    if special_tokens is None:
        return []
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, not a single str: use [{special_tokens!r}]")
    if not isinstance(special_tokens, Iterable):
        raise ValueError(f"special_tokens must be a list of strings, got {type(special_tokens).__name__} "
                         f"{special_tokens!r:.60}")
    if isinstance(special_tokens, Mapping):
        items = [(s, strict_id(i)) for s, i in special_tokens.items()]  # NumPy ids too, as tiktoken takes them
        if any(i is None for _, i in items):
            raise ValueError(f"special_tokens dict values must be int ids, got {special_tokens!r}")
        first = vocab_size - len(items)
        if sorted(i for _, i in items) != list(range(first, vocab_size)):
            raise ValueError(
                f"special_tokens ids must be the last {len(items)} ids {first}..{vocab_size - 1} of "
                f"vocab_size={vocab_size}, got {sorted(i for _, i in items)}"
            )
        specials = [s for s, _ in sorted(items, key=lambda item: item[1])]
    elif isinstance(special_tokens, (set, frozenset)):
        specials = sorted(special_tokens, key=str)  # a set has no order: sort, so the ids do not vary by run
    else:
        specials = list(special_tokens)
    if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {specials!r}")
    for s in specials:
        check_special_text(s)  # before training, not after it
    return specials


def _special_arg(name: str, value: object) -> set[str] | None:
    """``allowed_special`` / ``disallowed_special`` as a set of strings, or None for "all"."""
    if isinstance(value, str):
        if value == "all":
            return None
        # set("<|endoftext|>") would be its characters
        raise ValueError(f'{name} must be "all" or a collection of special-token strings, got {value!r}')
    if not isinstance(value, Iterable):
        raise ValueError(
            f'{name} must be "all" or a collection of special-token strings, got {type(value).__name__} {value!r}'
        )
    try:
        items = set(value)
    except TypeError as exc:  # unhashable items, e.g. lists
        raise ValueError(f"{name} must hold special-token strings: {exc}") from None
    bad = [x for x in items if not isinstance(x, str)]
    if bad:
        raise ValueError(f"{name} must hold special-token strings, got {type(bad[0]).__name__} {bad[0]!r}")
    return items


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _fix_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
