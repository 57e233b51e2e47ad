"""What every byte-level BPE tokenizer shares: the vocabulary built from merges, decoding, save/load.

Byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword Units";
Radford et al. 2019, GPT-2) starts from the 256 single bytes, ids ``0..255``, and learns merges. A merge
``(a, b) -> c`` says "the token ``a`` followed by the token ``b`` becomes the token ``c``", whose bytes are
``bytes(a) + bytes(b)``. New tokens get ids ``256, 257, ...`` in the order they were learned, so a
token's id is also its *rank* (its priority when encoding), as tiktoken requires.

Rarely, a merge rebuilds bytes that already have a token (``"a" + "bc"`` after ``"ab" + "c"`` made
``"abc"``); such a merge points at the existing id instead of minting a second token with the same bytes,
so every token's bytes stay unique.

Special tokens (``"<|endoftext|>"``) are not learned: they take the ids after the learned tokens.

Saved format (UTF-8 text, one fact per line, readable in any editor)::

    mlcore-bpe 1                     <- format name and version
    pattern "<the split regex, JSON-quoted>"
    special_tokens 1
    4095 "<|endoftext|>"             <- id and JSON-quoted text
    merges 3839
    101 32 256                       <- a b -> id (one merge per line, in learning order)
"""

from __future__ import annotations

import codecs
import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from .patterns import GPT4_PATTERN, compile_pattern

FORMAT_NAME = "mlcore-bpe"
FORMAT_VERSION = 1

Pair = tuple[int, int]
T = TypeVar("T", bound="BaseTokenizer")


def corpus_too_small(made: int, needed: int, vocab_size: int) -> ValueError:
    """The error both trainers raise when the corpus runs out of pairs before the vocabulary is full."""
    return ValueError(
        f"corpus too small for vocab_size={vocab_size}: only {made} merges were possible "
        f"({needed} needed); use a larger text or a smaller vocab_size"
    )


class BaseTokenizer:
    """Merges, vocabulary, special tokens and the split pattern; decoding and (de)serialisation.

    ``merges`` maps ``(a, b) -> id`` in learning order. ``vocab[i]`` is the bytes of ordinary token ``i``;
    ``ranks`` is its inverse ``bytes -> id`` (tiktoken's "mergeable ranks"). Special tokens take the ids
    ``len(vocab) .. vocab_size - 1``.
    """

    def __init__(
        self,
        merges: Mapping[Pair, int] | Iterable[tuple[Pair, int]],
        *,
        pattern: str = GPT4_PATTERN,
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        self.pattern = pattern
        self.compiled_pattern = compile_pattern(pattern)
        if isinstance(merges, (str, bytes)) or not isinstance(merges, Iterable):
            raise ValueError(f"merges must be a dict {{(a, b): id}} or pairs ((a, b), id), got {type(merges).__name__}")
        if special_tokens is not None and not isinstance(special_tokens, Mapping):
            # dict(["<s>"]) would fail with "dictionary update sequence element #0 has length 3; 2 is required"
            raise ValueError(
                f"special_tokens must be a dict {{text: id}}, got {type(special_tokens).__name__} "
                f"{special_tokens!r:.60} (BPETokenizer.train takes a list and numbers it)"
            )
        items = list(merges.items()) if isinstance(merges, Mapping) else list(merges)
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]
        self.ranks: dict[bytes, int] = {b: i for i, b in enumerate(self.vocab)}
        self.merges: dict[Pair, int] = {}
        for n, item in enumerate(items):
            try:
                (a, b), new_id = item
            except (TypeError, ValueError):  # not a pair of a pair and an id: name the argument, not the unpacking
                raise ValueError(f"merges[{n}] must be ((a, b), id), got {item!r:.60}") from None
            self._add_merge(n, a, b, new_id)
        self.special_tokens: dict[str, int] = self._check_specials(dict(special_tokens or {}))
        self.inverse_special: dict[int, str] = {i: s for s, i in self.special_tokens.items()}

    # -- construction checks -------------------------------------------------------------------
    def _add_merge(self, n: int, a: int, b: int, new_id: int) -> None:
        size = len(self.vocab)
        ints = [strict_id(x) for x in (a, b, new_id)]
        if None in ints:
            raise ValueError(f"merges[{n}] must be ints (a, b) -> id, got ({a!r}, {b!r}) -> {new_id!r}")
        a, b, new_id = ints
        if not (0 <= a < size and 0 <= b < size):
            raise ValueError(f"merges[{n}] = ({a}, {b}) uses an id outside the {size} tokens known so far")
        if (a, b) in self.merges:
            raise ValueError(f"merges[{n}] = ({a}, {b}) appears twice")
        joined = self.vocab[a] + self.vocab[b]
        if new_id == size:  # a new token
            if joined in self.ranks:
                raise ValueError(
                    f"merges[{n}] = ({a}, {b}) -> {new_id} repeats the bytes {joined!r} of token "
                    f"{self.ranks[joined]}; token bytes must be unique"
                )
            self.vocab.append(joined)
            self.ranks[joined] = new_id
        elif 0 <= new_id < size and self.vocab[new_id] == joined:  # rebuilds an existing token
            pass
        else:
            raise ValueError(
                f"merges[{n}] = ({a}, {b}) -> {new_id}: expected the next new id {size} or an existing "
                f"token with bytes {joined!r}"
            )
        self.merges[(a, b)] = new_id

    def _check_specials(self, specials: dict[str, int]) -> dict[str, int]:
        first = len(self.vocab)
        expected = set(range(first, first + len(specials)))
        for text, i in specials.items():
            if not isinstance(text, str) or not text:
                raise ValueError(f"special_tokens keys must be non-empty strings, got {text!r}")
            check_special_text(text)
            # 256.0 == 256 would pass the check below, then encode returns 256.0 and save writes a file load refuses
            if strict_id(i) is None:
                raise ValueError(f"special_tokens[{text!r}] must be an int id, got {type(i).__name__} {i!r}")
        specials = {text: strict_id(i) for text, i in specials.items()}  # NumPy ids as Python ints (JSON, torch)
        if set(specials.values()) != expected:
            raise ValueError(
                f"special_tokens ids must be exactly {first}..{first + len(specials) - 1} (after the "
                f"{first} ordinary tokens), got {sorted(specials.values())}"
            )
        return specials

    # -- sizes and lookups -----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """All token ids: 256 bytes + learned tokens + special tokens."""
        return len(self.vocab) + len(self.special_tokens)

    @property
    def num_ordinary(self) -> int:
        """Ids below this are ordinary (byte or learned) tokens; the special tokens follow."""
        return len(self.vocab)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a special token's UTF-8 text)."""
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            try:  # NumPy and 0-d torch integers, as decode takes them (tiktoken does too)
                token_id = operator.index(token_id)  # type: ignore[arg-type]
            except TypeError:
                raise ValueError(f"token id must be an int, got {type(token_id).__name__} {token_id!r}") from None
        if 0 <= token_id < len(self.vocab):
            return self.vocab[token_id]
        if token_id in self.inverse_special:
            return self.inverse_special[token_id].encode("utf-8")
        raise ValueError(f"token id {token_id} is out of range: expected 0 <= id < {self.vocab_size}")

    # -- decoding --------------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of ``ids``; this never fails on valid ids, even mid-character."""
        if not isinstance(ids, Iterable):
            # else "'int' object is not iterable", naming nothing (transformers' decode takes a bare id; we do not)
            hint = f" (for one id, pass [{ids!r}])" if isinstance(ids, int) else ""
            raise TypeError(f"ids must be a sequence of token ids, got {type(ids).__name__}{hint}")
        return b"".join(self.token_bytes(_as_id(i)) for i in ids)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Ids -> text. With the default ``errors="replace"``, byte sequences that are not valid UTF-8 become U+FFFD,
        never an exception; ``errors`` is any Python codec error handler (``"strict"`` raises, ``"ignore"`` drops),
        as in tiktoken's ``Encoding.decode(tokens, errors=...)``."""
        if not isinstance(errors, str):
            raise ValueError(f"errors must be the name of a codec error handler, got {type(errors).__name__} "
                             f"{errors!r:.60}")
        try:  # checked up front: Python looks a handler up only when it meets a bad byte
            codecs.lookup_error(errors)
        except LookupError:
            raise ValueError(f"errors must be the name of a codec error handler such as 'replace', 'strict' or "
                             f"'ignore', got {errors!r:.60}") from None
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # -- save / load -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the tokenizer in mlcore's text format (see the module docstring)."""
        lines = [f"{FORMAT_NAME} {FORMAT_VERSION}", f"pattern {json.dumps(self.pattern)}"]
        lines.append(f"special_tokens {len(self.special_tokens)}")
        lines += [f"{i} {json.dumps(s)}" for s, i in sorted(self.special_tokens.items(), key=lambda x: x[1])]
        lines.append(f"merges {len(self.merges)}")
        lines += [f"{a} {b} {i}" for (a, b), i in self.merges.items()]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """Read a file written by :meth:`save`; a corrupt file or another version raises ValueError."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc
        try:
            return cls(**parse_saved(lines, str(path)))
        except ValueError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path}: corrupt tokenizer file: {exc}") from exc


def check_special_text(text: str) -> None:
    """Refuse a special token that UTF-8 cannot encode (a lone surrogate such as ``"\\ud800"``): its bytes, which
    decode, tiktoken and the HF export all need, would not exist."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"special token {text!r} is not valid Unicode text: {text[exc.start]!r} at position {exc.start} is a "
            "lone surrogate, which UTF-8 cannot encode"
        ) from None


def _as_id(value: object) -> int:
    """Accept Python, NumPy and 0-d torch integers; anything else is a ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"token ids must be integers, got {type(value).__name__} {value!r}") from None


def strict_id(value: object) -> int | None:
    """``value`` as a Python int if it is an integer (Python, NumPy or 0-d torch), else None. Stricter than
    decode's :func:`_as_id`, for building a tokenizer: a bool (``True`` would silently be id 1) and a float (even
    ``256.0``, which tiktoken refuses too) are not ids."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def excerpt(value: object, limit: int = 40) -> str:
    """`repr` of at most `limit` characters of `value`, so an error never quotes a whole (huge) file line."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def parse_saved(lines: Sequence[str], source: str) -> dict:
    """Parse the lines of a saved tokenizer into the constructor's keyword arguments."""
    pos = 0

    def next_line(what: str) -> str:
        nonlocal pos
        if pos >= len(lines):
            raise ValueError(f"{source}: file ends early, expected {what} at line {pos + 1}")
        pos += 1
        return lines[pos - 1]

    def fail(what: str, line: str) -> ValueError:
        return ValueError(f"{source}: line {pos} is {excerpt(line)}, expected {what}")

    def count(value: str, line: str) -> int:
        n = int(value)
        if n < 0:
            raise fail("a count >= 0", line)
        return n

    header = next_line("the header").split()
    if len(header) != 2 or header[0] != FORMAT_NAME:
        raise fail(f"the header '{FORMAT_NAME} {FORMAT_VERSION}'", " ".join(header))
    if header[1] != str(FORMAT_VERSION):
        raise ValueError(f"{source}: format version {excerpt(header[1])} is not supported (expected {FORMAT_VERSION})")
    try:
        line = next_line("the pattern")
        key, _, value = line.partition(" ")
        if key != "pattern":
            raise fail("'pattern \"...\"'", line)
        pattern = json.loads(value)
        line = next_line("special_tokens N")
        key, _, value = line.partition(" ")
        if key != "special_tokens":
            raise fail("'special_tokens N'", line)
        specials: dict[str, int] = {}
        for _ in range(count(value, line)):
            line = next_line("a special token")
            i, _, text = line.partition(" ")
            special = json.loads(text)
            if not isinstance(special, str):
                raise fail("a special token 'id \"text\"'", line)
            if special in specials:
                raise fail("a special token not listed before", line)
            specials[special] = int(i)
        line = next_line("merges N")
        key, _, value = line.partition(" ")
        if key != "merges":
            raise fail("'merges N'", line)
        merges = []
        for _ in range(count(value, line)):
            line = next_line("a merge 'a b id'")
            parts = line.split()
            if len(parts) != 3:
                raise fail("a merge 'a b id'", line)
            a, b, new_id = (int(p) for p in parts)
            merges.append(((a, b), new_id))
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        if str(exc).startswith(source):
            raise
        raise ValueError(f"{source}: corrupt tokenizer file at line {pos}: {excerpt(exc, 80)}") from exc
    if any(line.strip() for line in lines[pos:]):
        raise ValueError(f"{source}: unexpected content after the last merge at line {pos + 1}")
    if not isinstance(pattern, str):
        raise ValueError(f"{source}: pattern must be a string, got {type(pattern).__name__}")
    return {"merges": merges, "pattern": pattern, "special_tokens": specials}
