"""Key handling shared by the keyed strategies (hash, pseudonym, encrypt).

A key is at least 16 bytes (128 bits, NIST SP 800-131A's floor for symmetric keys). Each use derives its
own subkey, ``HMAC-SHA256(key, purpose)``, so the same master key never serves two algorithms directly
(the standard key-separation rule; HKDF-Expand with one block is the same construction).
Errors say how long a key was, never what it was.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import unicodedata

MIN_KEY_BYTES = 16


def check_key(key: object, *, purpose: str) -> bytes:
    """Validate and normalise a key (bytes, or str encoded as UTF-8)."""
    if key is None:
        raise ValueError(f"key is required for {purpose}: pass key=<at least {MIN_KEY_BYTES} bytes>")
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"key must be bytes or str, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key must be at least {MIN_KEY_BYTES} bytes for {purpose}, got {len(key)}")
    return bytes(key)


def derive(key: bytes, purpose: str) -> bytes:
    """A 32-byte subkey for one purpose: HMAC-SHA256(key, "mlcore.privacy/" + purpose)."""
    return hmac.new(key, b"mlcore.privacy/" + purpose.encode(), hashlib.sha256).digest()


def keyed_digest(key: bytes, kind: str, value: str, *, purpose: str = "hash") -> bytes:
    """HMAC-SHA256 over ``kind \\0 value`` with the purpose's subkey (RFC 2104)."""
    return hmac.new(derive(key, purpose), kind.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()


def normalise(kind: str, value: str) -> str:
    """The canonical form two spellings of one value share (digits only for numbers, lowercase e-mail,
    compressed IP addresses, MM/YY expiry dates, upper-case alphanumerics for NINOs and passports)."""
    if kind in ("CARD", "SSN", "ITIN", "ABA_ROUTING", "ACCOUNT_NUMBER", "PHONE", "CARD_CVV", "UK_SORT_CODE",
                "CA_SIN"):
        return "".join(str(unicodedata.decimal(c)) for c in value if c.isdecimal())
    if kind == "IBAN":  # grouped by spaces, dashes or dots alike: letters and digits only
        return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in value if c.isalnum()).upper()
    if kind == "EMAIL":
        return value.lower()
    if kind in ("UK_NINO", "PASSPORT"):  # "AB 12 34 56 C" = "AB123456C"; passports are upper-case in print
        return "".join(c for c in value if c.isalnum()).upper()
    if kind == "IP_ADDRESS":  # "2001:DB8::1" = "2001:db8:0:0:0:0:0:1": ipaddress's compressed form
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            return value.lower()
    if kind == "CARD_EXPIRY":  # "12/27" = "12-2027" = "12 / 27": MM/YY
        m = re.fullmatch(r"\s*([0-9]{1,2})\s*[/-]\s*([0-9]{2}|[0-9]{4})\s*", value)
        return f"{int(m.group(1)):02d}/{m.group(2)[-2:]}" if m else value
    return value
