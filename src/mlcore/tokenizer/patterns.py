r"""Pre-tokenization: the regular expressions that cut text into chunks before BPE runs.

BPE never merges across a chunk boundary, so a word never fuses with the punctuation or the space
that follows it (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", §2.2).

- ``GPT2_PATTERN`` is GPT-2's split (tiktoken ``r50k_base``/``gpt2``).
- ``GPT4_PATTERN`` is GPT-4's split (tiktoken ``cl100k_base``): contractions match case-insensitively,
  numbers are cut into groups of at most three digits, and a run of punctuation keeps its trailing
  newlines, and white space that ends the text is one chunk (``\s++$``, which tiktoken's current cl100k
  pattern has and minbpe's spelling lacks: ``"x\n  "`` ends in ``"\n  "``, not ``"\n"`` + ``"  "``). It uses
  possessive quantifiers (``?+``, ``++``) and Unicode classes (``\p{L}``), so it needs the ``regex`` package.
  tiktoken spells the same split with more possessive quantifiers (``\p{N}{1,3}+``), which HF ``tokenizers``'
  Oniguruma engine reads as a repetition, so this spelling is the one both engines split alike.

Patterns are compiled with their general categories (``\p{L}``, ``\p{N}``, ``\p{Lu}``, ...) limited to Unicode
16.0, the tables of tiktoken's and ``tokenizers``' engines (``unicode_version.py``); the pattern a tokenizer saves
or exports is the one it was given.
"""

from __future__ import annotations

import string

import regex

from .unicode_version import affected_chars, unicode16_pattern

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# minbpe's spelling of the GPT-4 split, this library's default until it gained ``\s++$``: it differs only on
# white space that ends a text after a newline. A tokenizer saved with it (the shipped tiny models') keeps it.
GPT4_PATTERN_MINBPE = GPT4_PATTERN.replace(r"\s++$|", "")


class SplitPattern:
    """A compiled split pattern; ``findall(text)`` cuts ``text`` into pre-tokens with the character classes of
    Unicode 16.0 (``unicode_version.py``). The rewritten pattern matches about 2x slower, so it runs only on a
    text that holds a character whose class differs; every other text takes the pattern as given."""

    __slots__ = ("pattern", "_given", "_unicode16", "_affected")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._given = regex.compile(pattern)
        portable = unicode16_pattern(pattern)
        self._unicode16 = self._given if portable == pattern else regex.compile(portable)
        self._affected = affected_chars(pattern)  # the characters on which the two may differ

    def findall(self, text: str) -> list[str]:
        if self._unicode16 is not self._given and not self._affected.isdisjoint(text):
            return self._unicode16.findall(text)
        return self._given.findall(text)

    def __repr__(self) -> str:
        return f"SplitPattern({self.pattern!r})"


def compile_pattern(pattern: str) -> SplitPattern:
    """Compile a split pattern with the ``regex`` package, naming the argument if it is invalid."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty regular expression string, got {pattern!r}")
    try:  # tiktoken (Rust) and the HF export take the pattern as UTF-8: a lone surrogate would fail there, not here
        pattern.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"pattern {pattern!r} is not valid Unicode text: {pattern[exc.start]!r} at position {exc.start} is a lone "
            "surrogate, which UTF-8 cannot encode"
        ) from None
    try:
        compiled = SplitPattern(pattern)
    except regex.error as exc:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    _refuse_empty_matches(compiled)
    return compiled


# Texts on which a pattern that can match the empty string almost surely does: every printable ASCII character
# alone and in a run, white space, digits, contractions and some non-ASCII letters, marks and symbols.
_EMPTY_MATCH_PROBES = (
    "", *string.printable, string.printable, "Hello, world! It's 12345.\n\n  x\t y  ", "a b", "  \n",
    "日本語 é e\u0301 ß Ω 👍 \u200d «»", "\u00a0\u3000\r\n",
)


def _refuse_empty_matches(compiled: SplitPattern) -> None:
    """A chunk must not be empty: tiktoken's encoder panics on one (``$``, ``\\s*``, ``\\b``, ``(?=x)`` all match
    nothing somewhere). Whether a regex can match the empty string is not decidable cheaply in general, so it is
    tried on probe texts; a pattern that survives them and still matches empty text somewhere is very unusual."""
    for text in _EMPTY_MATCH_PROBES:
        for m in compiled._given.finditer(text):
            if m.start() == m.end():
                raise ValueError(
                    f"pattern {compiled.pattern!r} can match the empty string (at position {m.start()} of "
                    f"{text!r}); a split pattern must match at least one character, or tiktoken's encoder fails"
                )


def split_text(text: str, pattern: str | SplitPattern = GPT4_PATTERN) -> list[str]:
    """Cut ``text`` into pre-tokens, e.g. ``"Hello world!!"`` -> ``["Hello", " world", "!!"]``."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    # a compiled pattern is used as is; anything else (a str, or None / bytes: named there) goes to compile_pattern
    compiled = pattern if hasattr(pattern, "findall") and not isinstance(pattern, (str, bytes)) else None
    if compiled is None:
        compiled = compile_pattern(pattern)  # type: ignore[arg-type]
    return compiled.findall(text)
