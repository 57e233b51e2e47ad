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
Git hashes and UUIDs without such a name are not secrets. Credentials in a URL or connection string
(``postgres://user:password@host``, RFC 3986 userinfo) are a secret: the ``user:password`` part is reported.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections import Counter
from collections.abc import Iterator

from mlcore.privacy.recognizers.context import literal_spans, lowered
from mlcore.privacy.spans import PiiSpan

_UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ALNUM = _UPPER_DIGITS + "abcdefghijklmnopqrstuvwxyz"
_ALNUM_ = _ALNUM + "_"

# (pattern, score, characters that may not precede it). Each pattern starts with a vendor literal; one
# literal scan (`_PREFIXES`) finds the candidates and only those are matched in full (speed).
_FORMATS: tuple[tuple[re.Pattern[str], float, str], ...] = tuple(
    (re.compile(p), s, before)
    for p, s, before in (
        (r"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z2-7]{16}(?![A-Za-z0-9])", 0.95, _UPPER_DIGITS),
        (r"gh[pousr]_[A-Za-z0-9]{36}(?![A-Za-z0-9])", 0.99, _ALNUM_),
        (r"github_pat_[A-Za-z0-9_]{82}(?![A-Za-z0-9_])", 0.99, _ALNUM_),
        (r"xox[abprs]-[A-Za-z0-9]{8,}(?:-[A-Za-z0-9]{4,})+", 0.97, _ALNUM),
        (r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}", 0.97, ""),
        (r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}(?![A-Za-z0-9])", 0.97, _ALNUM_),
        (r"AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])", 0.95, _ALNUM_),
        (r"glpat-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])", 0.97, _ALNUM_),
        (r"sk-(?:proj|svcacct|admin|ant-(?:api|admin)\d{2})-[A-Za-z0-9_-]{20,}(?![A-Za-z0-9_-])", 0.97, _ALNUM_ + "-"),
        (r"sk-[A-Za-z0-9]{32,}(?![A-Za-z0-9_-])", 0.9, _ALNUM_ + "-"),
        (r"(?:npm_|pypi-AgE)[A-Za-z0-9_-]{30,}(?![A-Za-z0-9_-])", 0.97, _ALNUM_),
        (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----", 1.0, ""),
        (r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?![A-Za-z0-9_-])", 0.95, _ALNUM_ + "-"),
    )
)
_PREFIXES = ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
             "github_pat_", "xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "https://hooks", "sk_", "rk_", "AIza",
             "glpat-", "sk-", "npm_", "pypi-AgE", "-----BEGIN", "eyJ")


def _prefix_starts(text: str) -> list[int]:
    """Where a vendor prefix occurs: one scan per first character, ``A(?=KIA|SIA|...)``, whose leading literal
    the regex engine looks for at C speed (a single alternation of every prefix would try a match at every
    lowercase letter; a `str.find` loop per prefix scans the text once per prefix)."""
    return sorted(m.start() for scan in _HEAD_SCANS for m in scan.finditer(text))


def _head_scans() -> list[re.Pattern[str]]:
    """`_PREFIXES` grouped by first character, each group as one pattern matching that character where one
    of the group's prefixes starts (a one-character match: occurrences next to each other are all found)."""
    groups: dict[str, list[str]] = {}
    for prefix in _PREFIXES:
        groups.setdefault(prefix[0], []).append(prefix[1:])
    return [re.compile(re.escape(first) + "(?=" + "|".join(map(re.escape, rests)) + ")")
            for first, rests in groups.items()]


_HEAD_SCANS = _head_scans()

# a name that says "secret" (also inside a longer identifier: aws_secret_access_key, DB_PASSWORD), then
# ":" or "=", then the value; or an HTTP "Bearer" credential. The name is found by a literal scan of the
# lowercased text, then the identifier around it and the value after it are matched from there.
_SECRET_NAMES = ("password", "passwd", "pwd", "pass", "secret", "token", "apikey", "api_key", "api-key",
                 "accesskey", "access_key", "access-key", "privatekey", "private_key", "private-key",
                 "credential", "credentials")
_NAME_SCAN = re.compile("|".join(sorted(_SECRET_NAMES, key=len, reverse=True)))
_VALUE = re.compile(r"(?:[_.-][A-Za-z0-9]+)*[\"']?[ \t]*[:=][ \t]*[\"']?([^\s\"',;]{6,512})")
_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,20}://([^\s:/@]{1,64}:[^\s@/]{1,128})@")
_BEARER = re.compile(r"[ \t]+([A-Za-z0-9._~+/-]{16,}=*)")


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


def _assigned(text: str, low: str) -> Iterator[PiiSpan]:
    done = 0  # end of the last value read: a name inside it ("password=password=...") is part of that value
    for s, e in literal_spans(low, _SECRET_NAMES, _NAME_SCAN):
        if s < done or (s > 0 and text[s - 1] in _IDENT) or (e < len(text) and text[e] in _IDENT):
            continue  # "compass", "passport": the name must be a whole part of an identifier
        v = _VALUE.match(text, e)
        if v is None:
            continue
        done = v.end()
        value = v.group(1)
        if value.startswith(("${", "{{", "<", "%(", "$(")):
            continue  # a template placeholder, not a value
        h = shannon_entropy(value)
        password = low[s:e] in ("password", "passwd", "pwd", "pass")
        # a password need not look random ("hunter2hunter2"): two character classes are enough
        classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                       any(c.isdigit() for c in value), any(not c.isalnum() for c in value)))
        if (len(value) >= 20 and h >= 3.5) or (len(value) >= 8 and h >= 3.0) or (
                password and len(value) >= 6 and classes >= 2 and not set(value) <= set("*x#.<>")):
            yield PiiSpan("SECRET", v.start(1), v.end(1), value, 0.8)


def find_secrets(text: str) -> Iterator[PiiSpan]:
    done = 0
    for s in _prefix_starts(text):
        if s < done:
            continue  # inside a key already reported
        for pattern, score, before in _FORMATS:
            if s > 0 and text[s - 1] in before:
                continue
            m = pattern.match(text, s)
            if m is None:
                continue
            if m.group().startswith("eyJ") and not _jwt_header_ok(m.group()):
                continue
            yield PiiSpan("SECRET", m.start(), m.end(), m.group(), score)
            done = m.end()
            break
    low = lowered(text)
    yield from _assigned(text, low)
    if "://" in text:
        for m in _USERINFO.finditer(text):
            yield PiiSpan("SECRET", m.start(1), m.end(1), m.group(1), 0.9)
    for k in (m.end() for m in re.finditer("bearer", low)):
        if k > 6 and low[k - 7].isalnum():
            continue
        m = _BEARER.match(text, k)
        if m and shannon_entropy(m.group(1)) >= 3.0:
            yield PiiSpan("SECRET", m.start(1), m.end(1), m.group(1), 0.85)
