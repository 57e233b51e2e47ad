"""Recognizers: brands, layouts, validation rules, context, overlaps, and what must NOT match."""

import ipaddress
import logging

import pytest
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.privacy import KINDS, PiiSpan, detect_pii, resolve_overlaps
from mlcore.privacy.recognizers.contact import ipv4_valid, ipv6_valid


def kinds_of(text):
    return [(s.kind, s.text) for s in detect_pii(text)]


@pytest.mark.parametrize("kind", ["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15"])
def test_faker_cards_are_found_in_every_layout(kind):
    fake = Faker()
    fake.seed_instance(11)
    for _ in range(15):
        digits = fake.credit_card_number(kind)
        if len(digits) == 15 and kind == "amex":
            layouts = [digits, f"{digits[:4]} {digits[4:10]} {digits[10:]}", f"{digits[:4]}-{digits[4:10]}-{digits[10:]}"]
        else:
            layouts = [digits, " ".join(digits[i : i + 4] for i in range(0, len(digits), 4)),
                       "-".join(digits[i : i + 4] for i in range(0, len(digits), 4))]
        for printed in layouts:
            assert kinds_of(f"paid with {printed}, thanks") == [("CARD", printed)], kind


def test_csv_rows_and_expiry_dates_do_not_hide_cards():
    assert kinds_of("id,card\n1,4111111111111111,5555555555554444\n") == [
        ("CARD", "4111111111111111"), ("CARD", "5555555555554444")]
    assert kinds_of("card 4111 1111 1111 1111 12/27") == [("CARD", "4111 1111 1111 1111"), ("CARD_EXPIRY", "12/27")]
    assert kinds_of("7,234-56-7891,active") == [("SSN", "234-56-7891")]


def test_mastercard_two_series_and_brand_bounds():
    assert kinds_of("5555 5555 5555 4444")[0][0] == "CARD"
    assert kinds_of("2223 0031 2200 3222")[0][0] == "CARD"  # 2221-2720 range
    # a Luhn-valid 16-digit number outside every brand prefix (starts with 9) is not a card
    assert not detect_pii("9111 1111 1111 1115", kinds=["CARD"])


@pytest.mark.parametrize("text", [
    "order 41111111111111112222 shipped",       # inside a longer digit run
    "ratio 0.4111111111111111",                  # decimals
    "4111111111111111.25 EUR",
    "ts=1700000000123 done",                     # millisecond timestamp
    "USPS 9400 4111 1111 1111 1111 00",          # a longer grouped run
    "id ORD-4111111111111111",                   # an identifier
    "card 4111 1111 1111 1112",                  # Luhn fails
])
def test_card_negatives(text):
    assert not detect_pii(text, kinds=["CARD"])


def test_ssn_rules_and_itin():
    assert kinds_of("SSN 234-56-7891") == [("SSN", "234-56-7891")]
    for bad in ["000-12-3456", "666-12-3456", "950-12-3456", "123-00-4567", "123-45-0000"]:
        assert not detect_pii(f"SSN {bad}"), bad
    assert kinds_of("ITIN 912-70-1234") == [("ITIN", "912-70-1234")]
    assert kinds_of("bare 123456789 here") == []  # nine digits without context
    assert kinds_of("ssn: 234567891") == [("SSN", "234567891")]
    fake = Faker("en_US")
    fake.seed_instance(5)
    for _ in range(30):
        assert kinds_of(f"id {fake.ssn()}")[0][0] == "SSN"
        assert kinds_of(f"id {fake.itin()}")[0][0] == "ITIN"


def test_iban_aba_account():
    assert kinds_of("IBAN GB82 WEST 1234 5698 7654 32.") == [("IBAN", "GB82 WEST 1234 5698 7654 32")]
    assert kinds_of("pay DE89370400440532013000 now") == [("IBAN", "DE89370400440532013000")]
    assert not detect_pii("IBAN GB83 WEST 1234 5698 7654 32")  # check digits wrong
    assert kinds_of("routing number 021000021") == [("ABA_ROUTING", "021000021")]
    assert not detect_pii("ticket 021000021")  # no context, no routing number
    assert kinds_of("acct #12345678") == [("ACCOUNT_NUMBER", "12345678")]


def test_contact_kinds():
    assert kinds_of("write to jane.doe+x@mail.example.org.") == [("EMAIL", "jane.doe+x@mail.example.org")]
    assert kinds_of("call (415) 555-2671 today") == [("PHONE", "(415) 555-2671")]
    assert kinds_of("E.164 +442079460958") == [("PHONE", "+442079460958")]
    assert not detect_pii("call (115) 555-2671")  # NANP area codes start with 2-9
    assert kinds_of("from 192.168.0.1 and 2001:db8::8a2e:370:7334") == [
        ("IP_ADDRESS", "192.168.0.1"), ("IP_ADDRESS", "2001:db8::8a2e:370:7334")]
    assert not detect_pii("version 1.2.3.4 released", kinds=["IP_ADDRESS"])
    assert not detect_pii("256.1.1.1 and 01.2.3.4", kinds=["IP_ADDRESS"])
    assert kinds_of("DOB: 03/15/1985") == [("DATE_OF_BIRTH", "03/15/1985")]
    assert kinds_of("born March 5, 1987") == [("DATE_OF_BIRTH", "March 5, 1987")]
    assert not detect_pii("meeting on 03/15/1985")  # a date without birth context
    assert not detect_pii("DOB: 02/30/1985")  # not a calendar date


def test_secrets():
    texts = ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9, "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
             "xoxb-123456789012-123456789012-abcdefABCDEF123456",
             "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
             "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"]
    for t in texts:
        assert kinds_of(f"x {t} y") == [("SECRET", t)]
    assert kinds_of("password=Xy9!pQ2#rTz") == [("SECRET", "Xy9!pQ2#rTz")]
    assert not detect_pii("password=aaaaaaaaaaaa")  # no entropy
    assert not detect_pii("commit 3f2a9c0d1e4b5a69788f0e1d2c3b4a5968778695")  # a git hash, no context


def test_context_raises_score_and_overlaps_resolve():
    plain = detect_pii("number 4111111111111111")[0].score
    ctx = detect_pii("card number 4111111111111111")[0].score
    assert ctx > plain
    a, b, c = PiiSpan("X", 0, 10, "a" * 10, 0.5), PiiSpan("Y", 5, 12, "b" * 7, 0.9), PiiSpan("Z", 12, 15, "ccc", 0.1)
    assert resolve_overlaps([a, b, c]) == [b, c]
    assert resolve_overlaps([PiiSpan("X", 0, 4, "aaaa", 0.9), PiiSpan("Y", 0, 8, "b" * 8, 0.9)])[0].kind == "Y"
    # an account-number reading of a card loses to the card
    assert kinds_of("account no: 4111111111111111") == [("CARD", "4111111111111111")]


def test_repr_hides_value_and_bad_input(caplog):
    span = detect_pii("card 4111 1111 1111 1111")[0]
    assert "4111" not in repr(span) and "4111" not in str(span)
    with pytest.raises(TypeError, match="must be a str"):
        detect_pii(b"4111 1111 1111 1111")
    with pytest.raises(TypeError):
        detect_pii(None)
    with pytest.raises(ValueError, match="unknown kind"):
        detect_pii("x", kinds=["CREDIT_CARD"])
    with pytest.raises(ValueError, match="min_score"):
        detect_pii("x", min_score=2)
    assert set(KINDS) >= {"CARD", "SSN", "ITIN", "IBAN", "SECRET"}
    with caplog.at_level(logging.DEBUG):
        detect_pii("card 4111 1111 1111 1111 ssn 234-56-7891")
    assert "4111" not in caplog.text and "6789" not in caplog.text


@settings(max_examples=50, deadline=None)
@given(st.ip_addresses())
def test_ip_validation_agrees_with_stdlib(addr):
    text = str(addr)
    assert (ipv4_valid(text) if addr.version == 4 else ipv6_valid(text))
    if text != "::":  # the unspecified address alone is punctuation, not personal data
        assert detect_pii(f"host {text} up", kinds=["IP_ADDRESS"])[0].text == text


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="0123456789abcdef:.", min_size=2, max_size=24))
def test_ip_validators_reject_what_stdlib_rejects(text):
    for validator, version in ((ipv4_valid, 4), (ipv6_valid, 6)):
        try:
            ok = ipaddress.ip_address(text).version == version
            if version == 4 and any(len(p) > 1 and p.startswith("0") for p in text.split(".")):
                ok = False
        except ValueError:
            ok = False
        if "." in text and version == 6:
            continue  # embedded IPv4 tails are covered by the positive test
        assert validator(text) == ok, text
