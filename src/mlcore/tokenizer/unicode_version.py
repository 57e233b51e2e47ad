r"""Character classes of Unicode 16.0, the version the reference tokenizers' regex engines know.

A split pattern's ``\p{L}`` (letter) and ``\p{N}`` (number) follow the Unicode tables of whichever engine runs
it. The ``regex`` package (2025.9 on; transformers needs >= 2025.10.22) knows Unicode 17.0, while tiktoken's Rust
engine and Hugging Face ``tokenizers`` still use 16.0 tables, where the letters and numbers 17.0 added are
unassigned code points. Text with one of them (Tangut, CJK Extension J, ...) would split differently, so
``encode`` would differ from ``to_tiktoken().encode`` on it. :func:`unicode16_pattern` rewrites a pattern so the
``regex`` package leaves them out of both classes, which makes no difference under an engine with 16.0 tables.

The ranges are the code points ``regex`` 2026.11 classes as ``\p{L}`` / ``\p{N}`` and tiktoken 0.14 does not
(a sweep of every code point; all are unassigned in Python 3.11's ``unicodedata``, Unicode 14.0).
"""

from __future__ import annotations

# (first, last) code points, inclusive
UNICODE17_LETTERS: tuple[tuple[int, int], ...] = (
    (0x00558, 0x00558), (0x0058B, 0x0058C), (0x0088F, 0x0088F), (0x00C5C, 0x00C5C), (0x00CDC, 0x00CDC),
    (0x0208F, 0x0208F), (0x0209D, 0x0209F), (0x0A7CE, 0x0A7CF), (0x0A7D2, 0x0A7D2), (0x0A7D4, 0x0A7D4),
    (0x0A7DD, 0x0A7DD), (0x0A7E2, 0x0A7E2), (0x0A7F1, 0x0A7F1), (0x0AB6C, 0x0AB6D), (0x107BB, 0x107BF),
    (0x10940, 0x10959), (0x10EC5, 0x10EC7), (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB),
    (0x11DF1, 0x11DF1), (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF3), (0x187F8, 0x187FF),
    (0x18CD6, 0x18CDA), (0x18D09, 0x18D20), (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2),
    (0x1B123, 0x1B128), (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81),
    (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5),
    (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E),
    (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)
UNICODE17_NUMBERS: tuple[tuple[int, int], ...] = (
    (0x11DE0, 0x11DE9), (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686), (0x16FF4, 0x16FF6),
)


UNICODE17_CHARS = frozenset(chr(c) for a, b in UNICODE17_LETTERS + UNICODE17_NUMBERS for c in range(a, b + 1))


def has_unicode17(text: str) -> bool:
    """Whether ``text`` holds one of those letters or numbers (a C-speed scan: a few ms per MB)."""
    return not UNICODE17_CHARS.isdisjoint(text)


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges)


def unicode16_pattern(pattern: str) -> str:
    r"""``pattern`` with ``\p{L}`` and ``\p{N}`` limited to Unicode 16.0 (set difference, in ``regex``'s version-1
    syntax; ``-f`` keeps version 0's simple case folding, as tiktoken's ``(?i)``). Unchanged without them."""
    if r"\p{L}" not in pattern and r"\p{N}" not in pattern:
        return pattern
    letters = f"[\\p{{L}}--[{_class(UNICODE17_LETTERS)}]]"
    numbers = f"[\\p{{N}}--[{_class(UNICODE17_NUMBERS)}]]"
    return "(?V1-f)" + pattern.replace(r"\p{L}", letters).replace(r"\p{N}", numbers)
