"""A per-conversation vault: pseudonymise a prompt on the way in, reveal the real values on the way out.

The pattern LLM Guard calls Anonymize / Deanonymize with a vault: the model only ever sees keyed,
format-preserving pseudonyms (`transforms.pseudonym`), the vault keeps ``pseudonym -> original`` for this
conversation, and the answer is turned back into the customer's own values before it is shown. So "your
card ending 1111" stays true, a card keeps its **last four digits** where the `mask` policy (PCI DSS 3.4)
would show them: the pseudonym changes the middle digits, keeps brand prefix and last four, and re-solves
the check digit that still has to hold (Luhn for a card, MOD 97-10 for an IBAN, 3-7-1 for a routing number).

- In memory by default; ``save(path)`` / ``Vault.load(path, key)`` write an AES-256-GCM sealed file (NIST SP
  800-38D; 96-bit random nonce; key derived from the caller's key, never stored in the file).
- Reveal works on whole text (`reveal`) and on a stream of chunks (`Revealer`, `reveal_stream`), where a
  pseudonym split across chunks is held back until it is complete.
- Raw values never appear in ``repr``, ``str`` or error messages: the vault reports counts and kinds only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from mlcore.privacy.detect import MASK_MIN_SCORE, check_kinds, check_min_score, check_text, detect_pii
from mlcore.privacy.keys import check_key, derive, normalise
from mlcore.privacy.recognizers.cards import card_brand
from mlcore.privacy.recognizers.checksums import iban_check_digits, luhn_valid
from mlcore.privacy.spans import PiiSpan, replace_spans, stream_through
from mlcore.privacy.transforms.pseudonym import pseudonym_for

LAST_FOUR_KINDS = ("CARD", "IBAN", "ACCOUNT_NUMBER", "PHONE", "SSN", "ITIN", "ABA_ROUTING")
_FILE_AAD = b"mlcore.privacy.vault/v1"
_ABA_WEIGHTS = (3, 7, 1) * 3


def _digits(value: str) -> list[str]:
    return [str(unicodedata.decimal(c)) for c in value if c.isdecimal()]


def _write_digits(layout: str, digits: list[str]) -> str:
    it = iter(digits)
    return "".join(next(it) if c.isdecimal() else c for c in layout)


def keep_last_four(kind: str, original: str, fake: str) -> str | None:
    """`fake` with the last four digits (IBAN: characters) of `original`, its check digit re-solved; None when
    no such pseudonym exists (the brand or the checksum cannot be kept with those digits)."""
    if kind == "IBAN":
        # every separator the recognizer reads (space, no-break space, dash, dot) is layout, not data
        compact = "".join(c for c in fake if c.isalnum()).upper()
        orig = "".join(c for c in original if c.isalnum()).upper()
        bban = compact[4:-4] + orig[-4:]
        new = compact[:2] + iban_check_digits(compact[:2], bban) + bban
        if any(c.islower() for c in fake):
            new = new.lower()
        it = iter(new)
        return "".join(next(it) if c.isalnum() else c for c in fake)
    digits, tail = _digits(fake), _digits(original)[-4:]
    if len(digits) < 6 or len(tail) < 4:
        return None
    digits[-4:] = tail
    if kind == "CARD":  # re-solve the digit just before the last four so that Luhn holds
        for d in "0123456789":
            digits[-5] = d
            if luhn_valid("".join(digits)):
                break
        if card_brand("".join(digits)) != card_brand("".join(_digits(original))):
            return None
    elif kind == "ABA_ROUTING":  # weight 7 at index 4 is invertible mod 10: solve it
        rest = sum(int(d) * w for i, (d, w) in enumerate(zip(digits, _ABA_WEIGHTS, strict=True)) if i != 4)
        digits[4] = str(next(x for x in range(10) if (rest + 7 * x) % 10 == 0))
    return _write_digits(fake, digits)


class Vault:
    """``pseudonym <-> original`` for one conversation (see the module docstring).

    >>> vault = Vault(b"conversation-key-0123")
    >>> prompt = vault.pseudonymize("my card 4111 1111 1111 1111 was declined")   # '... 4xxx xxxx xxxx 1111 ...'
    >>> model_answer = "Card " + prompt.split()[2] + " " + " ".join(prompt.split()[3:6]) + " is blocked."
    >>> vault.reveal(model_answer)                                                 # real values back
    'Card 4111 1111 1111 1111 is blocked.'

    Args:
        key: at least 16 bytes; pseudonyms are HMAC-derived from it (same key, same pseudonyms).
        last_four: kinds whose pseudonyms keep the original's last four digits.
        kinds: only these kinds are pseudonymised (None: all).
        min_score: detection threshold (the masking default: recall first).
    """

    def __init__(self, key: bytes | str, *, last_four: Iterable[str] = LAST_FOUR_KINDS,
                 kinds: Iterable[str] | None = None, min_score: float = MASK_MIN_SCORE) -> None:
        self._key = check_key(key, purpose="the vault")
        self._last_four = check_kinds(last_four) or frozenset()
        self._kinds = check_kinds(kinds)
        self._min_score = check_min_score(min_score)  # here, not at the first pseudonymize call
        self._by_fake: dict[str, tuple[str, str]] = {}  # pseudonym -> (kind, original)
        self._by_real: dict[tuple[str, str], str] = {}  # (kind, normalised original) -> pseudonym
        self._pattern: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        kinds = sorted({k for k, _ in self._by_fake.values()})
        return f"Vault({len(self._by_fake)} entries, kinds={kinds})"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._by_fake)

    @property
    def pseudonyms(self) -> frozenset[str]:
        """The pseudonyms handed out so far (values the output guard must let through to be revealed)."""
        return frozenset(self._by_fake)

    def pseudonym(self, kind: str, value: str) -> str:
        """The pseudonym of one value, recorded; every spelling with the same normal form gets the same one."""
        check_text(value, "value")
        norm = (kind, normalise(kind, value))
        known = self._by_real.get(norm)
        if known is not None:
            return known
        for counter in range(64):
            fake = pseudonym_for(kind, value, self._key, counter=counter)
            if kind in self._last_four:
                fake = keep_last_four(kind, value, fake)
                if fake is None:
                    continue
            if normalise(kind, fake) != norm[1] and fake not in self._by_fake:
                break
        else:
            raise RuntimeError(f"could not draw a distinct {kind} pseudonym in 64 tries")
        self._by_fake[fake] = (kind, value)
        self._by_real[norm] = fake
        self._pattern = None
        return fake

    def replace(self, span: PiiSpan) -> str:
        """A replacer for `replace_spans` / `scan_input`: secrets are redacted, never pseudonymised."""
        return f"[{span.kind}]" if span.kind == "SECRET" else self.pseudonym(span.kind, span.text)

    def pseudonymize(self, text: str, *, spans: list[PiiSpan] | None = None) -> str:
        """`text` with every detected value (or the given `spans`) replaced by its recorded pseudonym."""
        check_text(text)
        if spans is None:
            spans = detect_pii(text, kinds=self._kinds, min_score=self._min_score)
        return replace_spans(text, spans, self.replace)

    def _regex(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._by_fake:
            self._pattern = re.compile("|".join(map(re.escape, sorted(self._by_fake, key=len, reverse=True))))
        return self._pattern

    def reveal(self, text: str) -> str:
        """Every pseudonym in `text` back to its original: exact matches first, then values the model
        re-spelled (same kind and normal form, e.g. a card printed without its spaces)."""
        check_text(text)
        pattern = self._regex()
        if pattern is None:
            return text
        text = pattern.sub(lambda m: self._by_fake[m.group()][1], text)
        by_norm = {(k, normalise(k, fake)): real for fake, (k, real) in self._by_fake.items()}
        spans = [s for s in detect_pii(text, min_score=self._min_score) if (s.kind, normalise(s.kind, s.text)) in by_norm]
        return replace_spans(text, spans, lambda s: by_norm[(s.kind, normalise(s.kind, s.text))])

    def revealer(self) -> Revealer:
        """A streaming reveal for one answer: ``feed(chunk) -> str``, ``flush() -> str``."""
        return Revealer(self)

    def reveal_stream(self, chunks: Iterable[str]) -> Iterator[str]:
        """`reveal` over streamed chunks; a pseudonym split across chunks is revealed whole."""
        if isinstance(chunks, str):
            raise TypeError("chunks must be an iterable of str chunks, not a single str (use reveal)")
        rev = self.revealer()
        yield from stream_through(chunks, rev.feed, rev.flush)

    # --- encrypted file -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, key: bytes | str | None = None) -> None:
        """Write the mapping sealed with AES-256-GCM under `key` (default: the vault's own key)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aes = derive(check_key(self._key if key is None else key, purpose="vault file"), "vault-file")
        payload = json.dumps({"entries": [[k, real, fake] for fake, (k, real) in self._by_fake.items()]})
        nonce = os.urandom(12)
        sealed = AESGCM(aes).encrypt(nonce, payload.encode(), _FILE_AAD)
        Path(path).write_bytes(base64.b64encode(nonce + sealed) + b"\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: bytes | str, *, file_key: bytes | str | None = None,
             **options) -> Vault:
        """Read a file written by `save`; `key` is the pseudonym key, `file_key` the file's (default: `key`)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        vault = cls(key, **options)
        aes = derive(check_key(key if file_key is None else file_key, purpose="vault file"), "vault-file")
        try:
            blob = base64.b64decode(Path(path).read_bytes(), validate=False)
            payload = AESGCM(aes).decrypt(blob[:12], blob[12:], _FILE_AAD)
        except (InvalidTag, ValueError):
            raise ValueError("could not open the vault file: wrong key, or the file was altered") from None
        for kind, real, fake in json.loads(payload)["entries"]:
            vault._by_fake[fake] = (kind, real)
            vault._by_real[(kind, normalise(kind, real))] = fake
        return vault


class Revealer:
    """Streaming `Vault.reveal`: holds back the last ``longest pseudonym - 1`` characters, and never cuts
    through a pseudonym that has started, so a value split over chunks is revealed whole."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._buf = ""

    def feed(self, chunk: str) -> str:
        self._buf += check_text(chunk, "chunk")
        pattern = self._vault._regex()
        if pattern is None:
            out, self._buf = self._buf, ""
            return out
        hold = max(map(len, self._vault._by_fake)) - 1
        cut = max(0, len(self._buf) - hold)
        for m in pattern.finditer(self._buf):
            if m.start() < cut < m.end():
                cut = m.start()
        out, self._buf = self._buf[:cut], self._buf[cut:]
        return pattern.sub(lambda m: self._vault._by_fake[m.group()][1], out)

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return self._vault.reveal(out) if out else ""
