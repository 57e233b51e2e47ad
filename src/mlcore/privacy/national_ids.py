"""US Social Security Numbers and Individual Taxpayer Identification Numbers.

Both are nine digits printed AAA-GG-SSSS (area, group, serial). The Social Security Administration never
issues (SSA, "Social Security Number Randomization", 2011):

- area 000, area 666, or areas 900-999;
- group 00; serial 0000.

Areas 900-999 belong to the IRS: an ITIN is 9XX-GG-SSSS with group in 50-65, 70-88, 90-92 or 94-99.
So a 9xx number is reported as ITIN when its group is in those ranges and rejected otherwise.

Printed with dashes or spaces, a valid number scores 0.85 (+0.1 with "SSN"/"social security" nearby); a
bare nine-digit run is only reported when a context word precedes it (else it is anyone's nine digits). A
dashed number glued to a word ("ssn123-45-6789") scores 0.6, unless the word marks an identifier (ORD, SKU).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mlcore.privacy.cards import _ID_PREFIXES, _letters_before
from mlcore.privacy.context import has_context
from mlcore.privacy.spans import PiiSpan

_SSN = re.compile(r"(?<![\d_.-])(?<![A-Za-z0-9][-.])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w]|[.-]\d)")

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
        if m.start() > 0 and text[m.start() - 1].isalpha():  # glued to a word: "ssn123-45-6789", "x123-45-6789"
            word = _letters_before(text, m.start())
            k = m.start() - len(word)
            if m.group(2) != "-" or word.lower() in _ID_PREFIXES or (k > 0 and text[k - 1].isdigit()):
                continue
            score = 0.6
        elif m.group(2):
            score = 0.85 + (0.1 if ssn_ctx else 0.0)
        elif has_context(text, m.start(), "SSN", window=32) or has_context(text, m.start(), "ITIN", window=32):
            score = 0.8
        else:
            continue
        yield PiiSpan(kind, m.start(), m.end(), m.group(), score)
