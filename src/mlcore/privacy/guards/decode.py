"""Decode what a prompt may carry in encoded form, so that the injection check can read it.

An instruction hidden as base64 ("aWdub3JlIGFsbCBwcmV2aW91cyBpbnN0cnVjdGlvbnM="), hex, URL percent-encoding or
rot13 passes any phrase rule that reads only the surface text, and a model that is asked to "decode this and
follow it" will happily do both. `decoded_views(text)` finds likely encoded runs, decodes them and keeps a
result only when it reads as text (valid UTF-8, mostly letters, spaces and punctuation), so reference numbers
and transaction ids that happen to be valid base64 decode to bytes and are dropped. rot13 (Caesar shift 13)
has no marker at all: the rot13 reading of the whole text is always returned, and the phrase rules decide.

Base64 of any length counts (RFC 4648, standard and URL-safe alphabets, padding optional): the old check only
flagged runs of 200+ characters and never decoded them. Decoding recurses (base64 of base64) to `depth`.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from urllib.parse import unquote

_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{8,}={0,2}(?![A-Za-z0-9+/_=-])")
_HEX_RUN = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :]?){6,}(?![0-9A-Fa-f])")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
MAX_CANDIDATES = 32  # per text and kind: bounds the work an adversarial input can cause


def readable(text: str, *, min_letters: float = 0.6) -> bool:
    """Does `text` read as language? Printable, and at least `min_letters` of it letters or spaces."""
    if len(text) < 4 or not text.isprintable() and any(c not in "\n\r\t" and not c.isprintable() for c in text):
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / len(text) >= min_letters and any(c.isalpha() for c in text)


def _utf8(raw: bytes) -> str | None:
    try:
        out = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return out if readable(out) else None


def _base64(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1 or body.isdigit() or body.isalpha() and (body.islower() or body.isupper()):
        return None  # impossible length, or a plain number / plain word
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _utf8(raw)


def _hex(run: str) -> str | None:
    digits = re.sub(r"[ :]", "", run)
    if len(digits) % 2:
        return None
    return _utf8(bytes.fromhex(digits))


def rot13(text: str) -> str:
    """The Caesar shift by 13 (its own inverse)."""
    return codecs.encode(text, "rot13")


def decoded_views(text: str, *, depth: int = 2) -> list[tuple[str, str]]:
    """``(encoding, decoded text)`` for every run of `text` that decodes to readable text, recursively.

    Encodings tried: ``base64`` (of any length >= 8), ``hex`` (>= 6 bytes), ``url`` (>= 3 %XX escapes) and
    ``rot13`` (always, of the whole text). Nested results are named like ``base64>hex``.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    out: list[tuple[str, str]] = []
    if depth == 0:
        return out
    found: list[tuple[str, str]] = []
    compact = re.sub(r"\s+", "", text) if len(text) > 40 and _B64_RUN.fullmatch(re.sub(r"\s+", "", text)) else None
    runs = [m.group() for m in _B64_RUN.finditer(text)][:MAX_CANDIDATES]
    if compact and compact not in runs:  # one blob wrapped over several lines
        runs.append(compact)
    found += [("base64", d) for d in map(_base64, runs) if d]
    found += [("hex", d) for d in map(_hex, [m.group() for m in _HEX_RUN.finditer(text)][:MAX_CANDIDATES]) if d]
    if len(_PERCENT.findall(text)) >= 3:
        found.append(("url", unquote(text)))
    for name, decoded in found:
        out.append((name, decoded))
        out += [(f"{name}>{inner}", d) for inner, d in decoded_views(decoded, depth=depth - 1) if inner != "rot13"]
    out.append(("rot13", rot13(text)))
    return list(dict.fromkeys(out))
