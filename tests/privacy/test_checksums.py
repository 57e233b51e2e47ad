"""Check digits against published test numbers and Faker's independent generators."""

import pytest
from faker import Faker

from mlcore.privacy.recognizers.banking import IBAN_LENGTHS, iban_valid
from mlcore.privacy.recognizers.checksums import (
    aba_check_digit,
    aba_valid,
    iban_check_digits,
    iban_checksum_valid,
    luhn_check_digit,
    luhn_valid,
)

# Test card numbers published by payment processors (Stripe / PayPal / Adyen documentation).
PUBLISHED_CARDS = ["4111111111111111", "4012888888881881", "4222222222222", "5555555555554444", "5105105105105100",
                   "2223003122003222", "378282246310005", "371449635398431", "6011111111111117", "6011000990139424",
                   "3530111333300000", "3566002020360505", "30569309025904", "38520000023237", "6200000000000005"]
PUBLISHED_IBANS = ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
                   "NL91ABNA0417164300", "BE68539007547034", "CH9300762011623852957", "NO9386011117947"]
PUBLISHED_ABA = ["021000021", "011000015", "026009593", "121000358", "111000025"]


@pytest.mark.parametrize("number", PUBLISHED_CARDS)
def test_luhn_accepts_published_numbers_and_rejects_every_single_digit_error(number):
    assert luhn_valid(number)
    assert luhn_check_digit(number[:-1]) == number[-1]
    for i in range(len(number)):
        wrong = number[:i] + str((int(number[i]) + 3) % 10) + number[i + 1 :]
        assert not luhn_valid(wrong)


def test_luhn_agrees_with_faker_on_every_brand():
    fake = Faker()
    fake.seed_instance(7)
    for kind in ["maestro", "mastercard", "visa16", "visa13", "visa19", "amex", "discover", "diners", "jcb15", "jcb16"]:
        for _ in range(20):
            number = fake.credit_card_number(kind)
            assert luhn_valid(number), kind
            assert luhn_check_digit(number[:-1]) == number[-1]


@pytest.mark.parametrize("iban", PUBLISHED_IBANS)
def test_iban_published_examples(iban):
    assert iban_valid(iban) and iban_checksum_valid(iban)
    assert iban_check_digits(iban[:2], iban[4:]) == iban[2:4]
    assert not iban_valid(iban[:-1])  # wrong length for the country
    i = next(i for i in range(4, len(iban) - 1) if iban[i] != iban[i + 1])
    assert not iban_valid(iban[:i] + iban[i + 1] + iban[i] + iban[i + 2 :])  # transposition caught by mod 97


@pytest.mark.parametrize("locale", ["de_DE", "en_GB", "fr_FR", "nl_NL", "es_ES", "it_IT", "pl_PL", "pt_PT", "en_IE",
                                    "fi_FI", "no_NO", "da_DK", "sk_SK", "cs_CZ", "ro_RO", "tr_TR", "el_GR"])
def test_iban_lengths_and_check_digits_agree_with_faker(locale):
    fake = Faker(locale)
    fake.seed_instance(1)
    for _ in range(10):
        iban = fake.iban()
        assert IBAN_LENGTHS[iban[:2]] == len(iban)
        assert iban_valid(iban)
        assert iban_check_digits(iban[:2], iban[4:]) == iban[2:4]


@pytest.mark.parametrize("rtn", PUBLISHED_ABA)
def test_aba_published_routing_numbers(rtn):
    assert aba_valid(rtn)
    assert aba_check_digit(rtn[:8]) == rtn[8]
    assert not aba_valid(rtn[:8] + str((int(rtn[8]) + 1) % 10))


def test_aba_agrees_with_faker():
    fake = Faker("en_US")
    fake.seed_instance(3)
    for _ in range(100):
        assert aba_valid(fake.aba())


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError):
        luhn_valid(4111111111111111)
    with pytest.raises(ValueError, match="only the digits"):
        luhn_valid("4111-1111")
    with pytest.raises(ValueError, match="8 digits"):
        aba_check_digit("1234")
    with pytest.raises(ValueError, match="two uppercase"):
        iban_check_digits("gb", "WEST12345698765432")
    assert not iban_valid("gb82west12345698765432")
