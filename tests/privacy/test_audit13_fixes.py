"""Audit 13: PII that leaked because of how a user formatted it (case, doubled / mixed separators, Unicode spaces).

Each case failed on the code before the fix; synthetic values only (checksums valid, owners nobody).
"""

from __future__ import annotations

import pytest

from mlcore.privacy import detect_pii, mask_pii


def _kinds(text: str) -> list[tuple[str, str]]:
    return [(s.kind, s.text) for s in detect_pii(text)]


@pytest.mark.parametrize("text, value", [
    ("My NI number is ab 12 34 56 c.", "ab 12 34 56 c"),
    ("NI number: ab123456c", "ab123456c"),
    ("NINO\tAB-12-34-56-C", "AB-12-34-56-C"),
    ("National Insurance: Ab 123456 C", "Ab 123456 C"),
    ("ni no = ab\u00a012\u00a034\u00a056\u00a0c", "ab\u00a012\u00a034\u00a056\u00a0c"),
])
def test_labelled_nino_any_case_and_spacing(text: str, value: str) -> None:
    assert ("UK_NINO", value) in _kinds(text)
    assert value not in mask_pii(text)


@pytest.mark.parametrize("text", [
    "the token ab123456c was rotated",   # no label: a lowercase code, not a NINO
    "NI number: qq123456c",              # HMRC specimen prefix QQ is never issued
    "NI number: gb123456a",              # prefix GB is excluded
])
def test_loose_nino_needs_label_and_valid_prefix(text: str) -> None:
    assert not [k for k, _ in _kinds(text) if k == "UK_NINO"]


@pytest.mark.parametrize("value", [
    "GB82  WEST 1234 5698 7654 32",
    "GB82\tWEST\t1234\t5698\t7654\t32",
    "GB82\u202fWEST\u202f1234\u202f5698\u202f7654\u202f32",
    "DE89  3704  0044  0532  0130  00",
])
def test_iban_doubled_and_unicode_separators(value: str) -> None:
    text = f"IBAN: {value} (savings)"
    assert ("IBAN", value) in _kinds(text)


@pytest.mark.parametrize("text, kind, value", [
    ("ITIN 912-70 1234", "ITIN", "912-70 1234"),
    ("ITIN: 912 70-1234", "ITIN", "912 70-1234"),
    ("SSN: 234-56 7891", "SSN", "234-56 7891"),
    ("SSN 234 - 56 - 7891", "SSN", "234 - 56 - 7891"),
    ("taxpayer id 912.70-1234", "ITIN", "912.70-1234"),
])
def test_labelled_ssn_itin_mixed_separators(text: str, kind: str, value: str) -> None:
    assert (kind, value) in _kinds(text)


def test_mixed_separators_without_label_stay_unflagged() -> None:
    assert _kinds("ref 234-56 7891 shipped") == []


def test_itin_serial_0000_is_valid() -> None:
    # IRS format rules (9XX-GG-XXXX, group 50-65/70-88/90-92/94-99) exclude no serial; SSA's 0000 rule is for SSNs
    assert ("ITIN", "912-70-0000") in _kinds("ITIN: 912-70-0000")
    assert not [k for k, _ in _kinds("SSN: 234-56-0000")]


@pytest.mark.parametrize("text, kind, value", [
    ('{"sort code": "20-00-00"}', "UK_SORT_CODE", "20-00-00"),
    ('{"account number": "12345678"}', "ACCOUNT_NUMBER", "12345678"),
    ("{'passport': '123456789'}", "PASSPORT", "123456789"),
])
def test_json_quoted_labelled_values(text: str, kind: str, value: str) -> None:
    assert (kind, value) in _kinds(text)


@pytest.mark.parametrize("text, kind, value", [
    ("sort code: 20.00.00", "UK_SORT_CODE", "20.00.00"),
    ("sort code 20  00  00", "UK_SORT_CODE", "20  00  00"),
    ("SIN: 130.692.544", "CA_SIN", "130.692.544"),
    ("SIN\t130\t692\t544", "CA_SIN", "130\t692\t544"),
])
def test_labelled_sort_code_and_sin_more_separators(text: str, kind: str, value: str) -> None:
    assert (kind, value) in _kinds(text)
