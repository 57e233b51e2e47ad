"""Keyed, format-preserving pseudonyms, and a `Pseudonymizer` that can reverse them through a vault.

A pseudonym replaces a value with another value *of the same kind and shape*, derived from
``HMAC-SHA256(key, kind, normalised value)``: the same input under the same key always gives the same
output (joins and counts across a dataset survive), different keys give unrelated outputs, and without the
key nothing links back. Shape is kept so downstream parsers and models still see a card, an IBAN, an email:

- CARD: same brand prefix (the IIN digits that fix the brand) and length, random middle, Luhn check digit;
- SSN / ITIN: an issuable AAA-GG-SSSS (area not 000/666/9xx; ITIN 9xx with a valid group);
- IBAN: same country and length, same letter/digit pattern, recomputed MOD 97-10 check digits;
- ABA: a used prefix, random digits, the 3-7-1 check digit; phone/account: digits replaced, layout kept;
- EMAIL: ``user.<hex>@example.com`` (RFC 2606 reserved domain); IP: 10.0.0.0/8 or fd00::/8 (private);
- DATE_OF_BIRTH: another date in 1940-2005 written the same way; SECRET: same prefix and character classes.

This is *pseudonymisation* in GDPR's sense (Art. 4(5)), not anonymisation: with the key (or the vault),
the data is personal data still. The vault maps pseudonym -> original and holds raw values: protect it.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import string
from collections.abc import Callable, Iterable

from mlcore.privacy.detect import (
    MASK_MIN_SCORE,
    check_kinds,
    check_min_score,
    check_positive_int,
    check_text,
    detect_pii,
)
from mlcore.privacy.keys import check_key, keyed_digest, normalise
from mlcore.privacy.recognizers.cards import _MAESTRO_IINS as MAESTRO_IINS
from mlcore.privacy.recognizers.cards import BRANDS, card_brand
from mlcore.privacy.recognizers.checksums import aba_check_digit, iban_check_digits, luhn_check_digit
from mlcore.privacy.recognizers.contact import DATE_PATTERN, parse_date
from mlcore.privacy.recognizers.national_ids import ITIN_GROUPS
from mlcore.privacy.spans import KINDS, replace_spans

SECRET_PREFIXES = ("AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk_live_", "sk_test_",
                   "rk_live_", "rk_test_", "xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "AIza", "eyJ", "glpat-",
                   "sk-proj-", "sk-ant-", "npm_", "-----BEGIN")


def _fill(template: str, rng: random.Random, keep: int = 0) -> str:
    """Replace digits by digits and letters by letters (same case) after the first `keep` characters."""
    out = list(template[:keep])
    for ch in template[keep:]:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif ch.isupper():
            out.append(rng.choice(string.ascii_uppercase))
        elif ch.islower():
            out.append(rng.choice(string.ascii_lowercase))
        else:
            out.append(ch)
    return "".join(out)


def _relayout(original: str, digits: str) -> str:
    """Write `digits` into the digit positions of `original` (keeping spaces, dashes, brackets)."""
    it = iter(digits)
    return "".join(next(it) if c.isdecimal() else c for c in original)


def _card(value: str, rng: random.Random) -> str:
    digits = normalise("CARD", value)  # ASCII digits, whatever digit script the value was written in
    brand = card_brand(digits)
    # a Maestro number is read as a card without a context word only with a well-known IIN: keep those 4 digits,
    # or "5018 ..." would become "50xx ...", a Maestro number the recognizer no longer reports on its own
    well_known = brand == "maestro" and digits.startswith(MAESTRO_IINS)
    keep = 4 if well_known else 1
    for b in BRANDS if not well_known else ():
        if b.name == brand and len(digits) in b.lengths:
            for lo, hi in b.ranges:
                w = len(str(lo))
                if lo <= int(digits[:w]) <= hi:
                    keep = w
                    break
            break
    for _ in range(64):  # ranges nest (Discover's 622126-622925 inside UnionPay's 62): redraw until the brand holds
        body = digits[:keep] + "".join(rng.choice(string.digits) for _ in range(len(digits) - keep - 1))
        new = body + luhn_check_digit(body)
        if card_brand(new) == brand:
            break
    return _relayout(value, new)


def _ssn(value: str, rng: random.Random, itin: bool) -> str:
    if itin:
        area, group = rng.randint(900, 999), rng.choice(sorted(ITIN_GROUPS))
    else:
        area, group = rng.choice([a for a in range(1, 900) if a != 666]), rng.randint(1, 99)
    return _relayout(value, f"{area:03d}{group:02d}{rng.randint(1, 9999):04d}")


def _iban(value: str, rng: random.Random) -> str:
    compact = "".join(c for c in value if c.isalnum())  # grouped by spaces, dashes or dots: separators kept
    bban = _fill(compact[4:].upper(), rng)
    new = compact[:2].upper() + iban_check_digits(compact[:2].upper(), bban) + bban
    if not value.isupper():
        new = new.lower()  # written in lowercase, pseudonymized in lowercase
    it = iter(new)
    return "".join(next(it) if c.isalnum() else c for c in value)


def _aba(value: str, rng: random.Random) -> str:
    prefix = rng.choice([*range(1, 13), *range(21, 33), *range(61, 73), 80])
    body = f"{prefix:02d}" + "".join(rng.choice(string.digits) for _ in range(6))
    return body + aba_check_digit(body)


def _phone(value: str, rng: random.Random) -> str:
    """Digits redrawn group by group; the country or trunk prefix ("+44", "+1", "001-", "1-", "0") is kept, and
    every group (or, in a bare 10-digit NANP number, the area code and exchange) starts with 2-9."""
    i = 0
    if value.startswith("+"):  # keep the country calling code (first group, at most 3 digits)
        j = 1
        while j < len(value) and value[j].isdigit() and j <= 3 and (j < 2 or not value[1] == "1"):
            j += 1
        i = j
    elif re.match(r"(?:001|1)[-. ]", value):
        i = 3 if value.startswith("001") else 1
    elif value.startswith("0") and not value.startswith("00"):  # a national trunk prefix: 020 ..., 07700 ...
        i = 1
    out = [value[:i]]
    for run in re.finditer(r"\d+|\D+", value[i:]):
        text = run.group()
        if not text[0].isdigit():
            out.append(text)
            continue
        lead = {0, 3} if len(text) == 10 else {0}
        starts_new_group = run.start() > 0 or i == 0 or not value[i - 1].isdigit()
        out.append("".join(str(rng.randint(2, 9)) if k in lead and (starts_new_group or len(text) == 10)
                           else rng.choice(string.digits)
                           for k in range(len(text))))
    return "".join(out)


def _digits_into(value: str, digits: str) -> str:
    """`value` with its digits replaced, in order, by `digits` (separators kept)."""
    it = iter(digits)
    return "".join(next(it) if c.isdigit() else c for c in value)


def _card_expiry(value: str, rng: random.Random) -> str:
    """A real month (01-12); a four-digit year stays 20xx (what the expiry recognizer reads)."""
    m = re.fullmatch(r"[0-9]{2}( ?[/-] ?)([0-9]{2}|[0-9]{4})", value)
    if m is None:
        return _fill(value, rng)
    year = f"{rng.randrange(100):02d}"
    return f"{rng.randint(1, 12):02d}{m.group(1)}{'20' + year if len(m.group(2)) == 4 else year}"


_NINO_FIRST, _NINO_SECOND = "ABCEGHJKLMNOPRSTWXYZ", "ABCEGHJKLMNPRSTWXYZ"


def _uk_nino(value: str, rng: random.Random) -> str:
    """Letters from HMRC's allowed prefix sets (not BG, GB, KN, NK, NT, TN, ZZ), suffix A-D, digits redrawn."""
    letters = [i for i, c in enumerate(value) if c.isalpha()]
    out = list(_fill(value, rng))
    if len(letters) == 3:
        prefix = "GB"
        while prefix in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
            prefix = rng.choice(_NINO_FIRST) + rng.choice(_NINO_SECOND)
        out[letters[0]], out[letters[1]], out[letters[2]] = prefix[0], prefix[1], rng.choice("ABCD")
    return "".join(out)


def _ca_sin(value: str, rng: random.Random) -> str:
    """Nine digits, first not 0 or 8, Luhn-valid (what the SIN recognizer accepts), separators kept."""
    if sum(c.isdigit() for c in value) != 9:
        return _fill(value, rng)
    body = rng.choice("12345679") + "".join(rng.choice(string.digits) for _ in range(7))
    return _digits_into(value, body + luhn_check_digit(body))


def _date(value: str, rng: random.Random) -> str:
    m = DATE_PATTERN.fullmatch(value)
    d = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(365 * 65))
    if m is None or parse_date(m) is None:
        return d.isoformat()
    if m.group("iy"):
        return d.isoformat()
    if m.group("y"):
        sep = m.group("s")
        a, b = (d.day, d.month) if sep == "." or int(m.group("a")) > 12 else (d.month, d.day)
        year = f"{d.year % 100:02d}" if len(m.group("y")) == 2 else str(d.year)
        return f"{a:0{len(m.group('a'))}d}{sep}{b:0{len(m.group('b'))}d}{sep}{year}"
    if m.group("ny"):
        return f"{d.strftime('%B')} {d.day}, {d.year}"
    return f"{d.day} {d.strftime('%B')} {d.year}"


def _secret(value: str, rng: random.Random) -> str:
    keep = next((len(p) for p in SECRET_PREFIXES if value.startswith(p)), 0)
    if value.startswith("-----BEGIN"):
        head, _, rest = value.partition("\n")
        body, _, tail = rest.rpartition("\n")
        return head + "\n" + _fill(body, rng) + "\n" + tail
    return _fill(value, rng, keep)


def pseudonym_for(kind: str, value: str, key: bytes, *, counter: int = 0) -> str:
    """The format-preserving pseudonym of `value` (of `kind`) under `key`; `counter` re-draws on collision."""
    key = check_key(key, purpose="pseudonym")
    check_text(value, "value")
    check_positive_int(counter, "counter", minimum=0)
    if not isinstance(kind, str):
        raise TypeError(f"kind must be a str such as 'CARD', got {type(kind).__name__}")
    if kind not in KINDS:  # an unknown name ("card", "Email") would fall through to the secret filler silently
        shown = kind if kind.replace("_", "").isalpha() and len(kind) <= 32 else "<value>"
        raise ValueError(f"kind must be one of {list(KINDS)}, got {shown!r}")
    seed = keyed_digest(key, kind, normalise(kind, value) + f"\x00{counter}", purpose="pseudonym")
    rng = random.Random(int.from_bytes(seed, "big"))
    for _ in range(16):  # never hand back the original itself
        if kind == "CARD":
            out = _card(value, rng)
        elif kind in ("SSN", "ITIN"):
            out = _ssn(value, rng, kind == "ITIN")
        elif kind == "IBAN":
            out = _iban(value, rng)
        elif kind == "ABA_ROUTING":
            out = _aba(value, rng)
        elif kind in ("PHONE", "ACCOUNT_NUMBER"):
            out = _phone(value, rng) if kind == "PHONE" else _fill(value, rng)
        elif kind == "EMAIL":
            out = f"user.{seed.hex()[:10]}@example.com"
        elif kind == "IP_ADDRESS":
            out = (f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}" if ":" not in value
                   else "fd00:" + ":".join(f"{rng.getrandbits(16):x}" for _ in range(7)))
        elif kind == "DATE_OF_BIRTH":
            out = _date(value, rng)
        elif kind == "CARD_EXPIRY":
            out = _card_expiry(value, rng)
        elif kind == "UK_NINO":
            out = _uk_nino(value, rng)
        elif kind == "CA_SIN":
            out = _ca_sin(value, rng)
        else:
            out = _secret(value, rng)
        if normalise(kind, out) != normalise(kind, value):
            return out
    raise RuntimeError(f"could not draw a {kind} pseudonym different from its input")


class Pseudonymizer:
    """Deterministic keyed pseudonyms for a whole corpus, reversible when `vault` is on.

    >>> p = Pseudonymizer(b"0123456789abcdef-key")
    >>> masked = p.pseudonymize("card 4111 1111 1111 1111")   # 'card 4xxx xxxx xxxx xxxx', Luhn-valid
    >>> p.reveal(masked)                                        # the original text
    'card 4111 1111 1111 1111'

    For a `datasets.Dataset`: ``ds.map(p.map_function("text"), batched=True)``. Pseudonyms do not depend on
    order or process (only on the key), so ``num_proc > 1`` gives the same result; each process then fills
    its own vault, so reveal in the process that pseudonymized, or with ``num_proc=1``.
    """

    def __init__(self, key: bytes | str, *, vault: bool = True, kinds: Iterable[str] | None = None,
                 min_score: float = MASK_MIN_SCORE) -> None:
        self._key = check_key(key, purpose="pseudonymization")
        self._kinds = check_kinds(kinds)
        self._min_score = check_min_score(min_score)
        self.vault: dict[str, str] | None = {} if vault else None  # pseudonym -> original
        self._forward: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        size = "off" if self.vault is None else f"{len(self.vault)} entries"
        return f"Pseudonymizer(vault={size})"

    def pseudonym(self, kind: str, value: str) -> str:
        """The pseudonym of one value (the same for every spelling with the same normal form)."""
        check_text(value, "value")
        if self.vault is None:
            return pseudonym_for(kind, value, self._key)
        norm = (kind, normalise(kind, value))
        cached = self._forward.get((kind, value))
        if cached is not None:
            return cached
        counter = 0
        while True:
            out = pseudonym_for(kind, value, self._key, counter=counter)
            other = self.vault.get(out)
            if other is None or normalise(kind, other) == norm[1]:
                break
            counter += 1  # two originals drew the same pseudonym: re-draw so reveal stays exact
        self.vault[out] = value
        self._forward[(kind, value)] = out
        return out

    def pseudonymize(self, text: str) -> str:
        """`text` with every detected value replaced by its pseudonym."""
        spans = detect_pii(check_text(text), kinds=self._kinds, min_score=self._min_score)
        return replace_spans(text, spans, lambda s: self.pseudonym(s.kind, s.text))

    def reveal(self, text: str) -> str:
        """Undo `pseudonymize` using the vault, in one pass over `text` (longest pseudonym first at each
        position), so a short pseudonym is never matched inside an original already put back.

        Any occurrence of a pseudonym is revealed, including ordinary text that happens to equal a short one
        (a CVV pseudonym "111" inside "4111" too): reveal only text this Pseudonymizer produced."""
        check_text(text)
        if self.vault is None:
            raise ValueError("reveal needs the vault: create the Pseudonymizer with vault=True")
        if not self.vault:
            return text
        pattern = re.compile("|".join(map(re.escape, sorted(self.vault, key=len, reverse=True))))
        return pattern.sub(lambda m: self.vault[m.group()], text)

    unmask = reveal

    def map_function(self, *columns: str) -> Callable[[dict], dict]:
        """A function for ``Dataset.map`` (batched or not) that pseudonymizes the given text columns."""
        if not columns:
            raise ValueError("map_function needs at least one column name, e.g. map_function('text')")

        def apply(example: dict) -> dict:
            out = {}
            for col in columns:
                if col not in example:
                    raise ValueError(f"column {col!r} not in the dataset; columns are {sorted(example)}")
                value = example[col]
                out[col] = [self.pseudonymize(v) for v in value] if isinstance(value, list) else self.pseudonymize(value)
            return out

        return apply
