"""An append-only audit log of requests, one JSON object per line, with personal data masked (PCI DSS req. 10:
log who did what and when; req. 3: never store card numbers in clear).

Every text field goes through ``mlcore.privacy.mask_pii`` before it is written, whatever the request's guard
verdict was, so a raw card number, IBAN or e-mail never reaches the disk. The key is logged by its ``key_id``
(a digest prefix), never in full. Writes are serialised by a lock and flushed per line.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from mlcore.privacy import mask_pii

TEXT_FIELDS = ("prompt", "output", "client")  # client: an IP address is personal data too


class AuditLog:
    """``record(**fields)`` appends one masked JSON line to ``path`` (None: keep lines in memory only)."""

    def __init__(self, path: str | Path | None = None, *, keep: int = 1000) -> None:
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.recent: list[dict[str, Any]] = []
        self._keep = keep
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for name, value in fields.items():
            entry[name] = mask_pii(value) if name in TEXT_FIELDS and isinstance(value, str) and value else value
        # The log must never be skipped: a value JSON cannot hold is written as its str(), and a lone surrogate
        # (valid in a JSON request, "\ud800", but not encodable as UTF-8) is written as the JSON escape
        # "\ud800" by backslashreplace, so the line stays valid JSON and reads back as the same text.
        line = json.dumps(entry, ensure_ascii=False, default=str)
        with self._lock:
            if self.path is not None:
                with self.path.open("a", encoding="utf-8", errors="backslashreplace") as f:
                    f.write(line + "\n")
            self.recent.append(entry)
            del self.recent[:-self._keep]
        return entry
