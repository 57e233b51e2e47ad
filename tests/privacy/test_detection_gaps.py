"""The detection gaps of issue 14, one test per class (values differ from the ones the fixes were tried on)."""

import pytest

from mlcore.privacy import detect_pii, mask_pii
from mlcore.privacy.evaluation.heldout import CARD_IINS, card_for, iban_for, luhn_complete
from mlcore.privacy.recognizers.cards import card_brand


def found(text, **kw):
    return [(s.kind, s.text) for s in detect_pii(text, **kw)]


def test_several_cards_on_one_line_in_mixed_layouts():
    text = "cards 5555 5555 5555 4444, 4012-8888-8888-1881 3782 822463 10005 and 6011000990139424."
    assert [k for k, _ in found(text)] == ["CARD"] * 4
    # same layout back to back: the run splits exactly into two valid cards
    assert found("4012 8888 8888 1881 5555 5555 5555 4444") == [
        ("CARD", "4012 8888 8888 1881"), ("CARD", "5555 5555 5555 4444")]
    # a longer digit group before a card does not hide it
    assert found("ticket 123456 4012 8888 8888 1881")[-1] == ("CARD", "4012 8888 8888 1881")


@pytest.mark.parametrize("network", [c[0] for c in CARD_IINS])
def test_every_network_in_the_public_iin_tables(network):
    import random

    rng = random.Random(network)
    for _ in range(5):
        digits = card_for(rng, network)
        assert card_brand(digits) is not None, (network, digits)
        assert found(f"paid with {digits}") == [("CARD", digits)]


def test_unknown_iin_policy_masks_but_reports_only_with_a_card_word():
    digits = luhn_complete("911111111111111")  # Luhn-valid, 16 digits, an IIN no network lists
    printed = " ".join(digits[i : i + 4] for i in range(0, 16, 4))
    assert card_brand(digits) is None
    bare = f"value {printed} ok"
    assert not detect_pii(bare, kinds=["CARD"])
    assert printed not in mask_pii(bare)  # mask_pii errs on the side of masking
    assert found(f"card number {printed}") == [("CARD", printed)]
    assert detect_pii(f"card number {printed}")[0].score == pytest.approx(0.7)
    wrong = printed[:-1] + str((int(printed[-1]) + 1) % 10)
    assert not detect_pii(f"card {wrong}", min_score=0.0)  # Luhn still decides


def test_ibans_of_recent_registry_countries_and_separators():
    import random

    rng = random.Random(3)
    for country in ("RU", "LY", "SO", "YE", "OM", "NI", "HN", "MN", "FK", "SD", "BI", "DJ"):
        iban = iban_for(country, rng)
        for sep in (" ", "-", "."):
            printed = sep.join(iban[i : i + 4] for i in range(0, len(iban), 4))
            assert found(f"IBAN {printed}") == [("IBAN", printed)], printed
    assert not found("IBAN DE89-3704-0044-0532-0130-01")  # check digits still decide


def test_numbers_written_other_ways():
    assert found("SSN 234.56.7891") == [("SSN", "234.56.7891")]
    assert found("routing 0260-0959-3") == [("ABA_ROUTING", "0260-0959-3")]
    assert found("write to anna@beispiel.xn--p1ai") == [("EMAIL", "anna@beispiel.xn--p1ai")]
    assert found("from 64:ff9b::203.0.113.9") == [("IP_ADDRESS", "64:ff9b::203.0.113.9")]
    assert not detect_pii("from ::ffff:300.1.2.3", kinds=["IP_ADDRESS"])
    assert found("tel 089 12 34 56 78") == [("PHONE", "089 12 34 56 78")]
    assert found("my number is 3125550143") == [("PHONE", "3125550143")]


def test_card_details_uk_and_canadian_ids_passports():
    got = found("card 4012888888881881 exp 04/29, CVC 9981")
    assert got == [("CARD", "4012888888881881"), ("CARD_EXPIRY", "04/29"), ("CARD_CVV", "9981")]
    assert found("4012888888881881 11/27 321")[1:] == [("CARD_EXPIRY", "11/27"), ("CARD_CVV", "321")]
    assert found("sort code 40-47-84") == [("UK_SORT_CODE", "40-47-84")]
    assert found("NI number JG 10 37 54 A") == [("UK_NINO", "JG 10 37 54 A")]
    assert not found("NI number QQ 12 34 56 C")  # HMRC's specimen prefix
    sin = luhn_complete("13012345")
    assert found(f"SIN: {sin[:3]} {sin[3:6]} {sin[6:]}") == [("CA_SIN", f"{sin[:3]} {sin[3:6]} {sin[6:]}")]
    assert not found("bare 130 123 456 here")
    assert found("passport no. C01X00T47") == [("PASSPORT", "C01X00T47")]
    assert not found("passport renewed yesterday")


def test_connection_string_credentials_are_secrets_not_emails():
    got = found("DATABASE_URL=postgresql://svc_app:Tr0ub4dor@db.internal.example.com:5432/core")
    assert ("SECRET", "svc_app:Tr0ub4dor") in got and all(k != "EMAIL" for k, _ in got)
    assert found("mailto:jane@example.org") == [("EMAIL", "jane@example.org")]


def test_dummy_ssns_score_low():
    for dummy in ("123-45-6789", "078-05-1120", "219-09-9999"):
        assert detect_pii(f"SSN {dummy}", min_score=0.0)[0].score <= 0.3
        assert not detect_pii(f"SSN {dummy}")
    assert found("SSN 234-56-7891") == [("SSN", "234-56-7891")]


def test_cards_wrapped_spaced_fullwidth_and_ocr():
    assert found("card 4012 8888\n8888 1881") == [("CARD", "4012 8888\n8888 1881")]
    assert found("card 4012  8888  8888  1881") == [("CARD", "4012  8888  8888  1881")]
    assert found("card ４０１２８８８８８８８８１８８１") == [("CARD", "４０１２８８８８８８８８１８８１")]
    assert found("card 4Ol2 8888 8888 l88l") == [("CARD", "4Ol2 8888 8888 l88l")]
    assert not found("Solo 4Ol2 8888 8888 l88l")  # letter slips are repaired only after a card word
