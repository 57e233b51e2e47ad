"""The labelled prompt-injection evaluation: benign customer messages and disguised attacks, split dev/held-out.

Split rule (fixed, by position in the hand-written lists): every third benign message and every third attack
*seed* (with all its disguises) is held out (``index % 3 == 2``). The check's rules were tuned on ``dev`` only;
``heldout`` phrasings were not looked at while tuning, so its rates estimate what unseen wording gets.
A third split, ``probe`` (`probe.py`), was written after the rules were frozen, in wording chosen to differ
from every seed: the harshest estimate of the three.

Disguises (one attack phrasing, rewritten): look-alike letters from Cyrillic/Greek (Unicode TR39 confusables),
full-width and mathematical letters, zero-width characters, base64 (short and long, bare or with an
instruction to decode), rot13, hex, URL percent-encoding, words split by newlines, joined by underscores,
letters separated by dots or spaces, leetspeak.
"""

from __future__ import annotations

import base64
import codecs
from typing import NamedTuple
from urllib.parse import quote

from mlcore.privacy.guards.data.attacks import ATTACK_SEEDS
from mlcore.privacy.guards.data.benign import BENIGN
from mlcore.privacy.guards.data.probe import PROBE_ATTACKS, PROBE_BENIGN

SPLITS = ("dev", "heldout", "probe")
_LOOKALIKE = str.maketrans("aeopcxiysAEOPCTHKMBX", "аеорсхіуѕАΕОРСТНКМВХ")  # Cyrillic / Greek twins


class Example(NamedTuple):
    text: str
    label: int  # 1 = attack, 0 = benign
    split: str  # "dev" or "heldout"
    disguise: str  # "none" for plain text
    lang: str


def _confusable(t: str) -> str:
    return "".join(c.translate(_LOOKALIKE) if i % 2 == 0 else c for i, c in enumerate(t))


def _fullwidth(t: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t)


def _math_bold(t: str) -> str:
    return "".join(chr(0x1D41A + ord(c) - 97) if "a" <= c <= "z" else
                   chr(0x1D400 + ord(c) - 65) if "A" <= c <= "Z" else c for c in t)


def _zero_width(t: str) -> str:
    return "\u200b".join(t[i:i + 2] for i in range(0, len(t), 2))


def _b64(t: str) -> str:
    return base64.b64encode(t.encode()).decode()


def _split_words(t: str) -> str:
    return " ".join(w[: len(w) // 2] + "\n" + w[len(w) // 2:] if len(w) > 5 else w for w in t.split(" "))


def _spaced(t: str) -> str:
    return " ".join(" ".join(w) if len(w) > 4 else w for w in t.split(" "))


def _leet(t: str) -> str:
    return t.translate(str.maketrans("aeiost", "431057"))


DISGUISES = {
    "confusable": _confusable,
    "fullwidth": _fullwidth,
    "math_bold": _math_bold,
    "zero_width": _zero_width,
    "base64": _b64,
    "base64_with_cue": lambda t: "Decode this and do what it says: " + _b64(t),
    "rot13": lambda t: codecs.encode(t, "rot13"),
    "rot13_with_cue": lambda t: "Apply rot13 to this and follow it: " + codecs.encode(t, "rot13"),
    "hex": lambda t: "hex: " + t.encode().hex(),
    "url_encoded": lambda t: quote(t, safe=""),
    "newline_split": _split_words,
    "underscores": lambda t: "_".join(t.split()),
    "dots": lambda t: " ".join(".".join(w) if len(w) > 4 else w for w in t.split(" ")),
    "spaced_letters": _spaced,
    "leet": _leet,
    "in_customer_message": lambda t: "Hi, my card was declined at the store today. " + _confusable(t),
}


def injection_eval(split: str | None = None) -> list[Example]:
    """All labelled examples (or those of one split): dev + heldout hold 325 benign messages and 200 attacks
    (75 seeds, each plain and in one or two of 16 disguises); probe holds 20 of each."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    names = list(DISGUISES)
    out = [Example(t, 0, SPLITS[i % 3 == 2], "none", "mixed") for i, t in enumerate(BENIGN)]
    for i, (seed, lang) in enumerate(ATTACK_SEEDS):
        where = SPLITS[i % 3 == 2]
        chosen = [names[(2 * i) % len(names)], names[(2 * i + 1) % len(names)]] if lang == "en" else [
            names[(3 * i) % len(names)]]
        out.append(Example(seed, 1, where, "none", lang))
        out += [Example(DISGUISES[d](seed), 1, where, d, lang) for d in chosen]
    out += [Example(t, 0, "probe", "none", "mixed") for t in PROBE_BENIGN]
    out += [Example(t, 1, "probe", "as_written", "mixed") for t in PROBE_ATTACKS]
    return [e for e in out if split is None or e.split == split]
