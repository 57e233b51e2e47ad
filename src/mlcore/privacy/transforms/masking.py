"""`mask_pii`: replace detected values by a token, a partial mask, a keyed hash, a pseudonym, or ciphertext.

| strategy    | output for a card           | reversible?          | links equal values? | when it is right |
|-------------|-----------------------------|----------------------|---------------------|------------------|
| `redact`    | ``[CARD]``                  | no                   | no                  | training data, logs, anything sent out |
| `mask`      | ``**** **** **** 1111``     | no                   | no                  | showing a customer which card (PCI DSS 3.4: at most last four) |
| `hash`      | ``[CARD:1f0c...]`` (HMAC)   | no                   | yes (same key)      | analytics and joins without the values |
| `pseudonym` | ``4929 1830 ... 2` (valid)  | with the vault       | yes (same key)      | data that must still parse (tests, model fine-tuning) |
| `encrypt`   | ``[CARD:enc:...]`` AES-GCM  | yes, with the key    | no (random nonce)   | a store that authorised staff must read back |

`hash` is HMAC-SHA256 (RFC 2104) rather than a plain hash: a 16-digit card has at most 10^15 values, so an
unkeyed SHA-256 is inverted by enumeration in hours; the key makes that impossible without the key.
`encrypt` is AES-256-GCM (NIST SP 800-38D) through the `cryptography` package, with a fresh 96-bit nonce per
value and the kind as associated data; ``unmask(text, key=...)`` restores the originals.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterable, Iterator

from mlcore.privacy.detect import MASK_MIN_SCORE, check_kinds, check_text, detect_pii, excerpt
from mlcore.privacy.keys import check_key, derive, keyed_digest, normalise
from mlcore.privacy.spans import KINDS, PiiSpan, replace_spans, stream_through
from mlcore.privacy.transforms.pseudonym import SECRET_PREFIXES, pseudonym_for

STRATEGIES = ("redact", "mask", "hash", "pseudonym", "encrypt")
_KEYED = ("hash", "pseudonym", "encrypt")


def mask_value(kind: str, value: str) -> str:
    """Partial mask: numbers keep their last four characters, e-mail its first letter and domain, a date of
    birth its year, a secret its vendor prefix; everything else becomes ``*`` with the layout kept."""
    if kind == "EMAIL":
        local, _, domain = value.partition("@")
        return local[:1] + "***@" + domain
    if kind == "DATE_OF_BIRTH":
        return re.sub(r"\b(?!(?:19|20)\d\d\b)\w+\b", lambda m: "*" * len(m.group()), value)
    if kind == "SECRET":  # a vendor prefix (ghp_, AKIA, sk_live_) says which key; anything else is the secret
        keep = next((len(p) for p in SECRET_PREFIXES if value.startswith(p)), 0)
        return value[:keep] + "*" * max(4, min(len(value) - keep, 16))
    alnum = [i for i, c in enumerate(value) if c.isalnum()]
    hidden = set(alnum[:-4]) if len(alnum) > 4 else set(alnum)
    return "".join("*" if i in hidden else c for i, c in enumerate(value))


def _encrypt(aes_key: bytes, kind: str, value: str) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    sealed = AESGCM(aes_key).encrypt(nonce, value.encode(), kind.encode())
    return f"[{kind}:enc:{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}]"


_ENC_TOKEN = re.compile(r"\[([A-Z_]+):enc:([A-Za-z0-9_-]+)\]")


def make_replacer(strategy: str, key: bytes | str | None = None) -> Callable[[PiiSpan], str]:
    """The function ``span -> replacement`` for one strategy (key checked once, here)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if strategy == "redact":
        return lambda s: f"[{s.kind}]"
    if strategy == "mask":
        return lambda s: mask_value(s.kind, s.text)
    k = check_key(key, purpose=f"strategy={strategy!r}")
    if strategy == "hash":
        return lambda s: f"[{s.kind}:{keyed_digest(k, s.kind, normalise(s.kind, s.text)).hex()[:16]}]"
    if strategy == "pseudonym":
        return lambda s: pseudonym_for(s.kind, s.text, k)
    aes_key = derive(k, "encrypt")
    return lambda s: _encrypt(aes_key, s.kind, s.text)


def _check_spans(text: str, spans: list[PiiSpan]) -> None:
    """Caller-supplied spans must be what `detect_pii` would give: int offsets, a known kind, and `text` equal
    to the characters they cover (the keyed strategies replace `span.text`, so a stale span would hash,
    pseudonymize or encrypt the wrong value)."""
    for s in spans:
        if isinstance(s.start, bool) or isinstance(s.end, bool) or not (isinstance(s.start, int) and isinstance(s.end, int)):
            raise TypeError(f"spans must have int start and end, got {s.start!r}, {s.end!r}")
        if s.kind not in KINDS:
            raise ValueError(f"spans contains unknown kind {excerpt(s.kind)}; expected one of {list(KINDS)}")
        if 0 <= s.start < s.end <= len(text) and text[s.start : s.end] != s.text:
            raise ValueError(f"spans must match text: the {s.kind} span at {s.start}:{s.end} covers other characters "
                             "than its .text")


def mask_pii(
    text: str,
    *,
    strategy: str = "redact",
    key: bytes | str | None = None,
    kinds: Iterable[str] | None = None,
    min_score: float = MASK_MIN_SCORE,
    spans: list[PiiSpan] | None = None,
) -> str:
    """`text` with every detected value replaced according to `strategy` (see the module table).

    Args:
        strategy: "redact", "mask", "hash", "pseudonym" or "encrypt".
        key: at least 16 bytes; required by "hash", "pseudonym" and "encrypt".
        kinds: only these kinds (None: all).
        min_score: replace hits scoring at least this; lower than `detect_pii`'s 0.5 by default so that a
            valid card next to a word such as "order" is still not let through (see `detect.MASK_MIN_SCORE`).
        spans: detections to use instead of running `detect_pii` (e.g. reviewed by a person).
    """
    check_text(text)
    replace = make_replacer(strategy, key)
    if spans is None:
        spans = detect_pii(text, kinds=check_kinds(kinds), min_score=min_score)
    elif isinstance(spans, str) or not all(isinstance(s, PiiSpan) for s in spans):
        raise TypeError(f"spans must be a list of PiiSpan (as detect_pii returns), got {spans!r:.80}")
    else:
        spans = list(spans)
        _check_spans(text, spans)
        bad = [s for s in spans if not 0 <= s.start < s.end <= len(text)]
        if bad:
            raise ValueError(f"spans must lie inside text (length {len(text)}), got {bad[0]}")
    return replace_spans(text, spans, replace)


def unmask(text: str, *, key: bytes | str) -> str:
    """Decrypt every ``[KIND:enc:...]`` token that `mask_pii(strategy="encrypt")` wrote with this key."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    check_text(text)
    aead = AESGCM(derive(check_key(key, purpose="unmask"), "encrypt"))

    def open_token(m: re.Match[str]) -> str:
        blob = base64.urlsafe_b64decode(m.group(2) + "=" * (-len(m.group(2)) % 4))
        try:
            return aead.decrypt(blob[:12], blob[12:], m.group(1).encode()).decode()
        except (InvalidTag, ValueError):
            raise ValueError(f"could not decrypt a [{m.group(1)}] token: wrong key, or the token was altered") from None

    return _ENC_TOKEN.sub(open_token, text)


decrypt = unmask


def mask_stream(
    chunks: Iterable[str],
    *,
    strategy: str = "redact",
    key: bytes | str | None = None,
    kinds: Iterable[str] | None = None,
    min_score: float = MASK_MIN_SCORE,
    max_buffer: int = 1 << 16,
) -> Iterator[str]:
    """`mask_pii` over an iterable of text chunks with bounded memory (see `StreamScanner`).

    ``"".join(mask_stream(chunks))`` equals ``mask_pii("".join(chunks))`` for the non-random strategies,
    except where a single token is longer than `max_buffer` characters.
    """
    from mlcore.privacy.guards.streaming import StreamScanner

    # arguments are checked here, at the call; only the chunks are consumed lazily
    scanner = StreamScanner(make_replacer(strategy, key), kinds=kinds, min_score=min_score, max_buffer=max_buffer)
    if isinstance(chunks, str):
        raise TypeError("chunks must be an iterable of str chunks, not a single str (use mask_pii)")
    return stream_through(chunks, scanner.feed, scanner.flush)
