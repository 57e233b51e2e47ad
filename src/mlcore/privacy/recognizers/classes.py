"""Character-class strings: the prefilter that lets a recognizer skip straight to its candidates.

Python's regex engine tries a pattern at every position whose first character could start it, which for a
pattern starting with a digit is every digit of a log line (a third of the text). Written over a *class
string*, in which every digit is ``0``, every ASCII letter ``a`` and other characters are kept or folded,
the shapes of our values become literals ("000-00-0000" for a dashed SSN, "aa00" for an IBAN's head,
"000s000s0000" for a phone number), and a literal is found by `bytes.find` at C speed without trying each position.
Each recognizer then runs its own regex only where the literal occurs, so what it reports is unchanged; the
class string needs ASCII text (other text takes the plain regex scan).

Classes (`digit_classes`): ``0`` digit, ``a`` ASCII letter, ``_`` underscore, ``-`` ``.`` `` `` kept, ``\\n``
kept, ``)`` kept, every other character ``#``; the other tables fold further for one recognizer each.
"""

from __future__ import annotations

import string


def _table(mapping: dict[str, bytes], default: bytes) -> bytes:
    table = bytearray(default * 256)
    for chars, cls in mapping.items():
        for c in chars:
            table[ord(c)] = cls[0]
    return bytes(table)


_DIGIT_TABLE = _table({string.digits: b"0", string.ascii_letters: b"a", "_": b"_", "-": b"-", ".": b".",
                       " ": b" ", "\n": b"\n", ")": b")"}, b"#")


# North American phone cores: digits "0", the separators "-", "." and " " folded into "s", ")" kept
_PHONE_TABLE = _table({string.digits: b"0", "-. ": b"s", ")": b")"}, b"x")
# IPv4: digits "0", "." kept, "p" for what may precede a free address (not a letter, digit, "_" or "."), "x" else
_IP_TABLE = _table({string.digits: b"0", ".": b".", string.ascii_letters + "_": b"x"}, b"p")
# UK National Insurance numbers: upper-case letters "A", digits "0", space kept, "x" else
_NINO_TABLE = _table({string.ascii_uppercase: b"A", string.digits: b"0", " ": b" "}, b"x")
# SSN shapes: digits, the three separators and "_" kept, everything else "x"
_SSN_TABLE = _table({string.digits: b"0", "-": b"-", ".": b".", " ": b" ", "_": b"_"}, b"x")


def classes(text: str, table: bytes = _DIGIT_TABLE) -> bytes | None:
    """The class string of `text` under `table` (one byte per character), or None when `text` is not ASCII."""
    if not text.isascii():
        return None
    return text.encode("ascii").translate(table)


def digit_classes(text: str) -> bytes | None:
    """`classes` with the digit/letter table described above."""
    return classes(text, _DIGIT_TABLE)


def phone_classes(text: str) -> bytes | None:
    """``0`` digits, ``s`` for ``-``/``.``/`` ``, ``)`` kept, ``x`` the rest; None when `text` is not ASCII."""
    return classes(text, _PHONE_TABLE)


def ip_classes(text: str) -> bytes | None:
    """``0`` digits, ``.`` kept, ``x`` letters and ``_``, ``p`` the rest; None when `text` is not ASCII."""
    return classes(text, _IP_TABLE)


def nino_classes(text: str) -> bytes | None:
    """``A`` upper-case ASCII letters, ``0`` digits, `` `` kept, ``x`` the rest; None when `text` is not ASCII."""
    return classes(text, _NINO_TABLE)


def ssn_classes(text: str) -> bytes | None:
    """``0`` digits; ``-``, ``.``, `` `` and ``_`` kept; ``x`` for the rest; None when `text` is not ASCII."""
    return classes(text, _SSN_TABLE)


def find_all(haystack: bytes, needles: tuple[bytes, ...], offset: int = 0) -> list[int]:
    """Sorted start positions (overlapping occurrences included) of every needle, each shifted by `offset`."""
    out: list[int] = []
    for needle in needles:
        k = haystack.find(needle)
        while k >= 0:
            out.append(k + offset)
            k = haystack.find(needle, k + 1)
    out.sort()
    return out
