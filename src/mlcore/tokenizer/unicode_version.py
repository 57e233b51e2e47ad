r"""Character classes of Unicode 16.0, the version the reference tokenizers' regex engines know.

A split pattern's ``\p{L}`` (letter) and ``\p{N}`` (number), and any other general category (``\p{Lu}``,
``\p{M}``, as o200k's pattern uses), follow the Unicode tables of whichever engine runs it. The ``regex`` package
(2025.9 on; transformers needs >= 2025.10.22) knows Unicode 17.0, while tiktoken's Rust engine and Hugging Face
``tokenizers`` still use 16.0 tables, where the characters 17.0 added are unassigned code points. Text with one of
them (Tangut, CJK Extension J, ...) would split differently, so ``encode`` would differ from
``to_tiktoken().encode`` on it. :func:`unicode16_pattern` rewrites a pattern so the ``regex`` package classes
them as 16.0 does, which makes no difference under an engine with 16.0 tables.

The ranges are the code points ``regex`` 2026.11 classes as ``\p{L}`` / ``\p{N}`` and tiktoken 0.14 does not
(a sweep of every code point; all are unassigned in Python 3.11's ``unicodedata``, Unicode 14.0). ``UNICODE17_NEW``
holds every character 17.0 assigned (tiktoken's ``\p{Cn}`` minus ``regex``'s), ``RECLASSIFIED`` the one whose
category changed (U+0295 ``ʕ``: ``Ll`` -> ``Lo``), both from the same sweep of every general category. On an older
``regex`` with 16.0 tables the rewrite changes nothing.
"""

from __future__ import annotations

from functools import cache, lru_cache

import regex

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

# Every character Unicode 17.0 assigned (unassigned, Cn, in 16.0): all categories, letters and numbers included.
UNICODE17_NEW: tuple[tuple[int, int], ...] = (
    (0x00558, 0x00558), (0x0058B, 0x0058C), (0x005C8, 0x005C9), (0x0088F, 0x0088F), (0x00B53, 0x00B54),
    (0x00C5C, 0x00C5C), (0x00CDC, 0x00CDC), (0x01ACF, 0x01AF0), (0x0208F, 0x0208F), (0x0209D, 0x0209F),
    (0x020C1, 0x020C4), (0x02B96, 0x02B96), (0x02E60, 0x02E63), (0x0A7CE, 0x0A7CF), (0x0A7D2, 0x0A7D2),
    (0x0A7D4, 0x0A7D4), (0x0A7DD, 0x0A7DD), (0x0A7E2, 0x0A7E2), (0x0A7F1, 0x0A7F1), (0x0AB6C, 0x0AB6D),
    (0x0FBC3, 0x0FBD2), (0x0FD90, 0x0FD91), (0x0FDC8, 0x0FDCE), (0x107BB, 0x107BF), (0x10940, 0x10959),
    (0x10EC5, 0x10EC7), (0x10EC9, 0x10EEE), (0x10EF0, 0x10EFB), (0x11B0A, 0x11B0A), (0x11B60, 0x11B67),
    (0x11DB0, 0x11DDB), (0x11DE0, 0x11DE9), (0x11DF0, 0x11DF1), (0x1246F, 0x1246F), (0x12475, 0x1247F),
    (0x12550, 0x12686), (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF),
    (0x18CD6, 0x18CDA), (0x18D09, 0x18D20), (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2),
    (0x1B123, 0x1B128), (0x1B168, 0x1B168), (0x1CCFA, 0x1CCFC), (0x1CEBA, 0x1CED0), (0x1CED2, 0x1CED4),
    (0x1CEDD, 0x1CEFD), (0x1D127, 0x1D128), (0x1D1EB, 0x1D1FF), (0x1D250, 0x1D281), (0x1D6A6, 0x1D6A6),
    (0x1DB00, 0x1DB1C), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF),
    (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6F5), (0x1E6FE, 0x1E6FF), (0x1F1AE, 0x1F1AE), (0x1F6D8, 0x1F6D9),
    (0x1F777, 0x1F77A), (0x1F7DA, 0x1F7DB), (0x1F7F1, 0x1F7FF), (0x1F8D0, 0x1F8D8), (0x1FA54, 0x1FA57),
    (0x1FA8A, 0x1FA8E), (0x1FAC8, 0x1FAC8), (0x1FACC, 0x1FACD), (0x1FADD, 0x1FADD), (0x1FAEA, 0x1FAEB),
    (0x1FAEF, 0x1FAEF), (0x1FAF9, 0x1FAFA), (0x1FBFA, 0x1FBFA), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E),
    (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)
# code point -> (its category in Unicode 16.0, in 17.0)
RECLASSIFIED: dict[int, tuple[str, str]] = {0x0295: ("Ll", "Lo")}

# Every character whose category differs between 17.0 and 16.0 (affected_chars picks a pattern's share).
UNICODE17_CHARS = frozenset(
    [chr(c) for a, b in UNICODE17_NEW for c in range(a, b + 1)] + [chr(c) for c in RECLASSIFIED]
)

# A general-category escape: \p{Lu}, \P{L}, \pL (an even run of backslashes before it is literal backslashes).
_CATEGORY = regex.compile(r"(?<!\\)((?:\\\\)*)\\([pP])(?:\{(L|Lu|Ll|Lt|Lm|Lo|M|Mn|Mc|Me|N|Nd|Nl|No|P|Pc|Pd|Ps|Pe|Pi|"
                          r"Pf|Po|S|Sm|Sc|Sk|So|Z|Zs|Zl|Zp|C|Cc|Cf|Cs|Co|Cn)\}|([LMNPSZC]))")


@lru_cache(maxsize=64)  # a tokenizer's pattern: built once, not per tokenizer
def affected_chars(pattern: str) -> frozenset[str]:
    """The characters on which ``pattern`` and :func:`unicode16_pattern` may split differently: those whose
    membership in one of its general categories 17.0 changed (for ``\\p{L}`` / ``\\p{N}`` only letters and
    numbers, not 17.0's new emoji), so a text without any of them can take the faster, given pattern."""
    found = {m.group(3) or m.group(4) for m in _CATEGORY.finditer(pattern)}
    return frozenset().union(*(_affected_by(category) for category in found))


@cache
def _affected_by(category: str) -> frozenset[str]:
    in17 = regex.compile(f"\\p{{{category}}}")  # the regex package's own tables (17.0, or 16.0 if older)
    return frozenset(c for c in UNICODE17_CHARS if bool(in17.fullmatch(c)) != _in16(c, category))


def _class(chars: frozenset[str]) -> str:
    """The characters as ranges for a character class, ``\\U00000558-\\U00000558...``."""
    ranges: list[list[int]] = []
    for c in sorted(map(ord, chars)):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "".join(f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges)


def _in16(c: str, category: str) -> bool:
    """Whether ``c`` (one of ``UNICODE17_CHARS``) is in ``category`` in Unicode 16.0 ("L" holds "Lu")."""
    return (RECLASSIFIED[ord(c)][0] if ord(c) in RECLASSIFIED else "Cn").startswith(category)


@cache
def _unicode16_class(negated: bool, category: str) -> str:
    """``\\p{category}`` (``\\P`` if ``negated``) as Unicode 16.0 has it: 17.0's new characters are unassigned
    (``Cn``) there, and a reclassified one is in its 16.0 category. Only the characters whose membership
    differs are added or removed, so the class stays small."""
    affected = _affected_by(category)
    add = frozenset(c for c in affected if _in16(c, category))
    remove = affected - add
    if negated:  # not (X + add - remove) = (not X) + remove - add, as add and remove are disjoint
        add, remove = remove, add
    base = f"\\{'P' if negated else 'p'}{{{category}}}"
    added = f"[{base}{_class(add)}]" if add else base
    return f"[{added}--[{_class(remove)}]]" if remove else added


def unicode16_pattern(pattern: str) -> str:
    r"""``pattern`` with every general-category escape (``\p{L}``, ``\p{Lu}``, ``\P{N}``, ``\pM``, ...) limited to
    Unicode 16.0 (set operations, in ``regex``'s version-1 syntax; ``-f`` keeps version 0's simple case folding, as
    tiktoken's ``(?i)``). Unchanged without them. Other property syntaxes (long names, scripts, ``\d``, ``\w``)
    are taken as given."""
    if not affected_chars(pattern):  # no general category, or this regex package has 16.0's tables
        return pattern

    def replace(m: regex.Match[str]) -> str:
        return m.group(1) + _unicode16_class(m.group(2) == "P", m.group(3) or m.group(4))

    return "(?V1-f)" + _CATEGORY.sub(replace, pattern)
