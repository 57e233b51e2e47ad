"""Credentials: API keys with a recognisable format, JWTs, private key blocks, and high-entropy values
assigned to a secret-sounding name.

Formats (as published by each vendor for their secret scanners):
- AWS access key id: ``AKIA``/``ASIA``/... + 16 characters of [A-Z2-7];
- GitHub tokens: ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` + 36 alphanumerics, ``github_pat_`` + 82;
- Slack: ``xoxb-``/``xoxp-``/``xoxa-``/``xoxr-``/``xoxs-`` tokens and hooks.slack.com webhook URLs;
- Stripe secret / restricted keys: ``sk_live_``/``rk_live_``/``sk_test_`` + 16+ alphanumerics;
- Google API keys: ``AIza`` + 35 characters;
- GitLab ``glpat-``, OpenAI ``sk-proj-``/``sk-`` + 32+, Anthropic ``sk-ant-api03-``, npm ``npm_``, PyPI ``pypi-AgE``;
- JWT (RFC 7519): three base64url segments whose first decodes to a JSON header with "alg";
- PEM private keys: ``-----BEGIN ... PRIVATE KEY-----`` ... ``-----END ... PRIVATE KEY-----``.

Generic secrets: after a name containing ``password``/``secret``/``token``/``api_key`` ... (also inside an
identifier: ``aws_secret_access_key``, ``DB_PASSWORD``) and ``:`` or ``=``, a value of 8+ characters whose
Shannon entropy H = -sum p_c log2 p_c is at least 3.0 bits per character, or of 20+ characters with at least
3.5 bits (a key); after a password name, any 6+ characters mixing two character classes ("hunter2hunter2")
that is not a placeholder (``${VAR}``, ``****``). ``Bearer <token>`` with H >= 3.0 is a secret too.
Git hashes and UUIDs without such a name are not secrets.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from collections.abc import Iterator

from mlcore.privacy.spans import PiiSpan

_FORMATS: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(p), s)
    for p, s in (
        (r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z2-7]{16}(?![A-Za-z0-9])", 0.95),
        (r"(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9])", 0.99),
        (r"(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{82}(?![A-Za-z0-9_])", 0.99),
        (r"(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9]{8,}(?:-[A-Za-z0-9]{4,})+", 0.97),
        (r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}", 0.97),
        (r"(?<![A-Za-z0-9_])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}(?![A-Za-z0-9])", 0.97),
        (r"(?<![A-Za-z0-9_])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])", 0.95),
        (r"(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])", 0.97),
        (r"(?<![A-Za-z0-9_-])sk-(?:proj|svcacct|admin|ant-(?:api|admin)\d{2})-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])", 0.97),
        (r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9]{32,}(?![A-Za-z0-9_-])", 0.9),
        (r"(?<![A-Za-z0-9_])(?:npm_|pypi-AgE)[A-Za-z0-9_-]{30,}(?![A-Za-z0-9_-])", 0.97),
        (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----", 1.0),
    )
)

_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?![A-Za-z0-9_-])")

# a name that says "secret" (also inside a longer identifier: aws_secret_access_key, DB_PASSWORD), then
# ":" or "=", then the value; or an HTTP "Bearer" credential
_ASSIGNED = re.compile(
    r"(?i:(?<![A-Za-z0-9_.-])(?:[A-Za-z0-9]+[_.-])*(password|passwd|pwd|pass|secret|token|api[_-]?key"
    r"|access[_-]?key|private[_-]?key|credentials?)(?:[_.-][A-Za-z0-9]+)*)[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"([^\s\"',;]{6,})"
)
_BEARER = re.compile(r"(?i:\bbearer)[ \t]+([A-Za-z0-9._~+/-]{16,}=*)")


def shannon_entropy(value: str) -> float:
    """Bits per character of the empirical character distribution of `value`."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _jwt_header_ok(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def find_secrets(text: str) -> Iterator[PiiSpan]:
    for pattern, score in _FORMATS:
        for m in pattern.finditer(text):
            yield PiiSpan("SECRET", m.start(), m.end(), m.group(), score)
    for m in _JWT.finditer(text):
        if _jwt_header_ok(m.group()):
            yield PiiSpan("SECRET", m.start(), m.end(), m.group(), 0.95)
    for m in _ASSIGNED.finditer(text):
        name, value = m.group(1).lower(), m.group(2)
        if value.startswith(("${", "{{", "<", "%(", "$(")):
            continue  # a template placeholder, not a value
        h = shannon_entropy(value)
        password = name in ("password", "passwd", "pwd", "pass")
        # a password need not look random ("hunter2hunter2"): two character classes are enough
        classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                       any(c.isdigit() for c in value), any(not c.isalnum() for c in value)))
        if (len(value) >= 20 and h >= 3.5) or (len(value) >= 8 and h >= 3.0) or (
                password and len(value) >= 6 and classes >= 2 and not set(value) <= set("*x#.<>")):
            yield PiiSpan("SECRET", m.start(2), m.end(2), value, 0.8)
    for m in _BEARER.finditer(text):
        if shannon_entropy(m.group(1)) >= 3.0:
            yield PiiSpan("SECRET", m.start(1), m.end(1), m.group(1), 0.85)
