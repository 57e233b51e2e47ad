r"""Pre-tokenization: the regular expressions that cut text into chunks before BPE runs.

BPE never merges across a chunk boundary, so a word never fuses with the punctuation or the space
that follows it (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", §2.2).

- ``GPT2_PATTERN`` is GPT-2's split (tiktoken ``r50k_base``/``gpt2``).
- ``GPT4_PATTERN`` is GPT-4's split (tiktoken ``cl100k_base``): contractions match case-insensitively,
  numbers are cut into groups of at most three digits, and a run of punctuation keeps its trailing
  newlines. It uses possessive quantifiers (``?+``, ``++``) and Unicode classes (``\p{L}``), so it
  needs the ``regex`` package; tiktoken ships an equivalent, faster-matching spelling.
"""

from __future__ import annotations

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s+"""
)


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a split pattern with the ``regex`` package, naming the argument if it is invalid."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty regular expression string, got {pattern!r}")
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc


def split_text(text: str, pattern: str | regex.Pattern[str] = GPT4_PATTERN) -> list[str]:
    """Cut ``text`` into pre-tokens, e.g. ``"Hello world!!"`` -> ``["Hello", " world", "!!"]``."""
    compiled = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    return compiled.findall(text)
