"""Undo the ways an attacker hides a phrase from a pattern: the *views* of a text that the injection check reads.

1. **NFKC** (Unicode UAX #15) folds full-width, mathematical and styled letters to plain ones
   ("Ｉｇｎｏｒｅ", "𝐢𝐠𝐧𝐨𝐫𝐞" -> "Ignore").
2. **Invisible characters** (general category Cf: zero-width space/joiners, soft hyphen, bidi controls, tag
   characters; variation selectors) are removed.
3. **Confusables**: a TR39-style skeleton (Unicode TS #39, section 4) maps letters of other scripts that look
   like Latin ones to those Latin letters (Cyrillic "а" U+0430 -> "a", Greek "Ο" U+039F -> "o"). The table below
   is ours and covers Cyrillic, Greek, Armenian and a few Latin variants, not the full confusables.txt.
4. Accents are stripped (NFD, combining marks dropped) and case is folded, so phrases in French, German,
   Portuguese ... match without their diacritics ("instruções" -> "instrucoes").
5. **Separators**: underscores read as spaces; in the *joined* view letters spaced or dotted one by one
   ("I g n o r e", "i.g.n.o.r.e") are collapsed, a line break inside a word is removed, digits inside words
   read as letters ("1gn0r3" -> "ignore"), and a glued run ("ignoreallprevious") is cut into known words.

`views(text)` returns the plain and the joined view; the check scans both.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

_CONFUSABLE_PAIRS = (
    # Cyrillic lower / upper
    "аa еe ёe оo рp сc уy хx іi їi јj ѕs һh ԁd ԛq ԝw ӏl ɡg кk мm нh тt вb гr пn иu ьb ћh"
    " Аa Вb Еe Ёe Кk Мm Нh Оo Рp Сc Тt Уy Хx Іi Їi Јj Ѕs Һh Ӏl Зe"
    # Greek lower / upper
    " αa βb γy εe ζz ηn ιi κk νv οo ρp τt υu χx ωw"
    " Αa Βb Εe Ζz Ηh Ιi Κk Μm Νn Οo Ρp Τt Υy Χx"
    # Armenian and Latin variants
    " օo սu հh ոn ցg ıi ſs ɑa ɩi ʟl ᴀa ᴇe ᴏo"
)
CONFUSABLES: dict[int, str] = {ord(pair[0]): pair[1] for pair in _CONFUSABLE_PAIRS.split()}
_LEET = str.maketrans("4310576@$", "aeiostgas")
_MARK_CATEGORIES = ("Mn", "Me")

_SINGLE_SEPARATED = re.compile(r"(?<!\S)(?:\S[ ._\-*|~+/\\:]){2,}\S(?!\S)")
_INNER_BREAK = re.compile(r"(?<=[^\W\d_])[ \t]*\r?\n[ \t]*(?=[^\W\d_])")
_MIXED_TOKEN = re.compile(r"\b(?=\w*[a-z])(?=\w*[0-9])\w+|\b[a-z]*[@$][a-z]+\b")
_WORD = re.compile(r"[a-z]+")
_SPACES = re.compile(r"[ \t\u00a0]+")


def _is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or "\ufe00" <= ch <= "\ufe0f" or ch == "\u034f"


def skeleton(text: str) -> str:
    """NFKC, invisible characters removed, confusables mapped to Latin, accents stripped, case folded.

    Offsets are not kept (the result is only scanned for phrases, never used to cut the original).
    """
    if text.isascii():  # nothing to fold but case
        return text.lower()
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if not _is_invisible(ch)).translate(CONFUSABLES)
    text = "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) not in _MARK_CATEGORIES)
    return unicodedata.normalize("NFC", text.casefold()).translate(CONFUSABLES)


def _segment(token: str, vocab: frozenset[str], longest: int) -> str | None:
    """Cut a glued run into vocabulary words with the fewest pieces (dynamic programming), or None."""
    n = len(token)
    best: list[tuple[int, int] | None] = [None] * (n + 1)  # (pieces, previous cut)
    best[0] = (0, 0)
    for end in range(1, n + 1):
        for start in range(max(0, end - longest), end):
            if best[start] is not None and token[start:end] in vocab:
                pieces = best[start][0] + 1
                if best[end] is None or pieces < best[end][0]:
                    best[end] = (pieces, start)
    if best[n] is None:
        return None
    words, end = [], n
    while end > 0:
        start = best[end][1]
        words.append(token[start:end])
        end = start
    return " ".join(reversed(words))


def joined(plain: str, vocab: frozenset[str] = frozenset()) -> str:
    """The separator-free reading of a skeleton: spaced/dotted letters collapsed, in-word line breaks removed,
    leetspeak read as letters, glued runs of at least 10 letters cut into `vocab` words where they can be."""
    text = _INNER_BREAK.sub("", plain)
    text = _SINGLE_SEPARATED.sub(lambda m: m.group()[::2], text)  # character, separator, character, ...
    text = _MIXED_TOKEN.sub(lambda m: m.group().translate(_LEET), text)
    if vocab:
        longest = _longest(vocab)

        def cut(m: re.Match[str]) -> str:
            word = m.group()
            if len(word) < 10 or word in vocab:
                return word
            return _segment(word, vocab, longest) or word

        text = _WORD.sub(cut, text)
    return _SPACES.sub(" ", text)


@lru_cache(maxsize=8)
def _longest(vocab: frozenset[str]) -> int:
    return max(map(len, vocab))


@lru_cache(maxsize=8)
def make_vocab(words: tuple[str, ...]) -> frozenset[str]:
    """A frozen vocabulary for `joined`, without one-letter words other than "a" and "i"."""
    return frozenset(w for w in words if len(w) > 1 or w in ("a", "i"))


def views(text: str, vocab: Iterable[str] = ()) -> tuple[str, str]:
    """(plain, joined): the skeleton with underscores and line breaks read as spaces, and its joined reading.

    `vocab`: words a glued run may be cut into (pass a frozenset from `make_vocab` to skip rebuilding it)."""
    base = skeleton(text)
    plain = _SPACES.sub(" ", re.sub(r"[_\r\n]+", " ", base))
    words = vocab if isinstance(vocab, frozenset) else make_vocab(tuple(sorted(set(vocab))))
    return plain, joined(base.replace("_", " "), words)
