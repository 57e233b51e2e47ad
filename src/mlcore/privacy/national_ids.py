"""US Social Security Numbers and Individual Taxpayer Identification Numbers.

Both are nine digits printed AAA-GG-SSSS (area, group, serial). The Social Security Administration never
issues (SSA, "Social Security Number Randomization", 2011):

- area 000, area 666, or areas 900-999;
- group 00; serial 0000.

Areas 900-999 belong to the IRS: an ITIN is 9XX-GG-SSSS with group in 50-65, 70-88, 90-92 or 94-99.
So a 9xx number is reported as ITIN when its group is in those ranges and rejected otherwise.

Printed with dashes or spaces, a valid number scores 0.85 (+0.1 with "SSN"/"social security" nearby); a
bare nine-digit run is only reported when a context word precedes it (else it is anyone's nine digits).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.context import has_context
from mlcore.privacy.spans import PiiSpan

_SSN = re.compile(r"(?<![\w.-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w]|[.-]\d)")

_ITIN_GROUPS = set(range(50, 66)) | set(range(70, 89)) | set(range(90, 93)) | set(range(94, 100))


def classify_ssn(area: int, group: int, serial: int) -> str | None:
    """"SSN", "ITIN" or None (not a number either agency issues)."""
    if group == 0 or serial == 0:
        return None
    if area >= 900:
        return "ITIN" if group in _ITIN_GROUPS else None
    if area == 0 or area == 666:
        return None
    return "SSN"


def find_national_ids(text: str) -> Iterator[PiiSpan]:
    """SSN and ITIN spans."""
    for m in _SSN.finditer(text):
        kind = classify_ssn(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        if kind is None:
            continue
        ssn_ctx = has_context(text, m.start(), "SSN") or has_context(text, m.start(), "ITIN")
        if m.group(2):
            score = 0.85 + (0.1 if ssn_ctx else 0.0)
        elif has_context(text, m.start(), "SSN", window=20) or has_context(text, m.start(), "ITIN", window=20):
            score = 0.8
        else:
            continue
        yield PiiSpan(kind, m.start(), m.end(), m.group(), score)
