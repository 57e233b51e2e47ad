"""API keys and per-key rate limits for the server (OWASP API Security Top 10: API2 broken authentication,
API4 unrestricted resource consumption).

- Keys are never stored: only ``sha256(key)``. A presented key is hashed and compared with **every** stored
  digest by ``hmac.compare_digest`` (constant time in the digest, and no early exit on the first match), so
  response timing says nothing about how much of a guess was right.
- A key's public name in logs and metrics is ``key_id`` = the first 12 hex digits of its digest.
- Rate limit: a token bucket per key (capacity ``rpm`` requests, refilled at ``rpm / 60`` per second): a burst
  of up to ``rpm`` requests passes, a sustained rate above ``rpm`` per minute gets HTTP 429 with Retry-After.

Sources, in order: ``--api-keys-file`` (one key per line, ``key`` or ``key rpm``; ``#`` comments) and the
environment variable ``MLCORE_API_KEYS=k1,k2`` (comma-separated). Every key must be at least ``MIN_KEY_LENGTH`` = 8
characters long; a shorter one is refused (ValueError), so ``k1`` and ``k2`` stand for real keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_LENGTH = 8


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRecord:
    digest: bytes
    rpm: float

    @property
    def key_id(self) -> str:
        return self.digest.hex()[:12]


class ApiKeys:
    """Hashed API keys with per-key requests-per-minute limits."""

    def __init__(self, keys: dict[str, float] | None = None, *, default_rpm: float = 600.0) -> None:
        if default_rpm <= 0:
            raise ValueError(f"default_rpm must be > 0, got {default_rpm}")
        self.default_rpm = default_rpm
        self._records: list[KeyRecord] = []
        for key, rpm in (keys or {}).items():
            self.add(key, rpm)

    def add(self, key: str, rpm: float | None = None) -> None:
        if not isinstance(key, str) or len(key.strip()) < MIN_KEY_LENGTH:
            raise ValueError(f"an API key must be a string of at least {MIN_KEY_LENGTH} characters, got one of "
                             f"{len(key) if isinstance(key, str) else type(key).__name__}")
        rpm = self.default_rpm if rpm is None else float(rpm)
        if rpm <= 0:
            raise ValueError(f"rpm must be > 0, got {rpm}")
        self._records.append(KeyRecord(digest(key.strip()), rpm))

    def __len__(self) -> int:
        return len(self._records)

    def check(self, presented: str | None) -> KeyRecord | None:
        """The record of ``presented`` or None; compares against every stored digest in constant time."""
        if not presented:
            return None
        d = digest(presented)
        found = None
        for rec in self._records:
            if hmac.compare_digest(rec.digest, d) and found is None:
                found = rec
        return found

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: str | None = None,
             default_rpm: float = 600.0) -> ApiKeys:
        """Keys from a file (``key`` or ``key rpm`` per line) and/or an ``MLCORE_API_KEYS``-style string."""
        keys = cls(default_rpm=default_rpm)
        if path is not None:
            for n, line in enumerate(Path(path).read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) > 2:
                    raise ValueError(f"{path}:{n}: expected 'key' or 'key rpm', got {len(parts)} fields")
                keys.add(parts[0], float(parts[1]) if len(parts) == 2 else None)
        env = os.environ.get("MLCORE_API_KEYS") if env is None else env
        for key in (env or "").split(","):
            if key.strip():
                keys.add(key.strip())
        return keys


class RateLimiter:
    """A token bucket per key id: ``allow(record) -> (ok, retry_after_seconds)``."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key_id -> (tokens, last time)
        self._lock = threading.Lock()

    def allow(self, record: KeyRecord) -> tuple[bool, float]:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(record.key_id, (record.rpm, now))
            tokens = min(record.rpm, tokens + (now - last) * record.rpm / 60.0)
            if tokens >= 1.0:
                self._buckets[record.key_id] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[record.key_id] = (tokens, now)
            return False, (1.0 - tokens) * 60.0 / record.rpm
