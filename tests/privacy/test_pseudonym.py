"""Pseudonyms are valid, same-shaped, deterministic under a key, and reversible with the vault."""

import pytest
from datasets import Dataset
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.privacy import Pseudonymizer, detect_pii, pseudonym_for
from mlcore.privacy.recognizers.banking import iban_valid
from mlcore.privacy.recognizers.cards import card_brand
from mlcore.privacy.recognizers.checksums import aba_valid, luhn_valid
from mlcore.privacy.recognizers.national_ids import classify_ssn

KEY = b"pseudonym-test-key-000"


def test_formats_are_preserved_and_valid():
    fake = Faker("en_US")
    fake.seed_instance(2)
    for _ in range(30):
        card = fake.credit_card_number("visa16")
        p = pseudonym_for("CARD", card, KEY)
        assert luhn_valid(p) and card_brand(p) == card_brand(card) and p != card
        ssn = fake.ssn()
        p = pseudonym_for("SSN", ssn, KEY)
        assert classify_ssn(int(p[:3]), int(p[4:6]), int(p[7:])) == "SSN" and p[3] == p[6] == "-"
        itin = fake.itin()
        p = pseudonym_for("ITIN", itin, KEY)
        assert classify_ssn(int(p[:3]), int(p[4:6]), int(p[7:])) == "ITIN"
        assert aba_valid(pseudonym_for("ABA_ROUTING", fake.aba(), KEY))
        email = pseudonym_for("EMAIL", fake.email(), KEY)
        assert [s.kind for s in detect_pii(email)] == ["EMAIL"]
    for loc in ("de_DE", "en_GB", "fr_FR", "it_IT"):
        iban = Faker(loc).iban()
        p = pseudonym_for("IBAN", iban, KEY)
        assert iban_valid(p) and p[:2] == iban[:2] and len(p) == len(iban) and p != iban
    spaced = pseudonym_for("IBAN", "GB82 WEST 1234 5698 7654 32", KEY)
    assert iban_valid(spaced.replace(" ", "")) and [len(g) for g in spaced.split()] == [4, 4, 4, 4, 4, 2]
    assert pseudonym_for("CARD", "3782-822463-10005", KEY)[4] == "-"


def test_deterministic_per_key_and_different_across_keys():
    a = pseudonym_for("CARD", "4111111111111111", KEY)
    assert a == pseudonym_for("CARD", "4111111111111111", KEY)
    assert a != pseudonym_for("CARD", "4111111111111111", KEY + b"2")
    # one value, two layouts -> the same digits
    assert pseudonym_for("CARD", "4111 1111 1111 1111", KEY).replace(" ", "") == a


def test_vault_round_trip_and_dataset_consistency():
    rows = ["card 4111 1111 1111 1111 from jane@example.org", "again 4111 1111 1111 1111", "ssn 123-45-6789",
            "IBAN GB82 WEST 1234 5698 7654 32 for jane@example.org"]
    ds = Dataset.from_dict({"text": rows, "n": list(range(4))})
    p = Pseudonymizer(KEY)
    out = ds.map(p.map_function("text"), batched=True, batch_size=2)
    texts = out["text"]
    assert "4111" not in " ".join(texts) and "jane" not in " ".join(texts)
    card0, card1 = detect_pii(texts[0])[0].text, detect_pii(texts[1])[0].text
    assert card0 == card1  # the same customer stays the same across rows and batches
    assert [p.reveal(t) for t in texts] == rows
    single = Pseudonymizer(KEY, vault=False)
    assert ds.map(single.map_function("text"))["text"] == texts  # unbatched, vault-less, same key -> same data
    with pytest.raises(ValueError, match="vault"):
        single.reveal(texts[0])
    with pytest.raises(ValueError, match="column"):
        ds.map(p.map_function("body"))
    assert "4111" not in repr(p)


def test_key_errors():
    with pytest.raises(ValueError, match="key is required"):
        Pseudonymizer(None)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Pseudonymizer(b"0123456789")


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=16, max_size=32), st.integers(0, 10**6),
       st.sampled_from(["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "diners", "jcb15"]))
def test_property_pseudonyms_valid_and_deterministic(key, seed, card_type):
    fake = Faker("en_US")
    fake.seed_instance(seed)
    card, ssn, iban = fake.credit_card_number(card_type), fake.ssn(), Faker("de_DE").iban()
    for kind, value, valid in (
        ("CARD", card, lambda v: luhn_valid(v) and card_brand(v) == card_brand(card) and len(v) == len(card)),
        ("SSN", ssn, lambda v: classify_ssn(int(v[:3]), int(v[4:6]), int(v[7:])) == "SSN"),
        ("IBAN", iban, lambda v: iban_valid(v) and v[:2] == "DE"),
    ):
        fake_value = pseudonym_for(kind, value, key)
        assert valid(fake_value) and fake_value != value
        assert pseudonym_for(kind, value, key) == fake_value


@pytest.mark.parametrize("sep", [" ", "-", "."])
def test_grouped_iban_spellings_share_hash_and_keep_their_separators(sep):
    """detect_pii accepts IBANs grouped by spaces, dashes or dots; hashing reads one canonical value for all of
    them, and a pseudonym is a valid IBAN written with the same separators."""
    from mlcore.privacy import mask_pii

    key = b"0123456789abcdef-key"
    grouped = sep.join(["DE89", "3704", "0044", "0532", "0130", "00"])
    text = f"IBAN {grouped} ok"
    assert [s.text for s in detect_pii(text)] == [grouped]
    assert mask_pii(text, strategy="hash", key=key) == mask_pii("IBAN DE89370400440532013000 ok", strategy="hash",
                                                                 key=key)
    fake = Pseudonymizer(key).pseudonymize(text)[len("IBAN "):-len(" ok")]
    assert [c for c in fake if not c.isalnum()] == [c for c in grouped if not c.isalnum()]
    assert fake != grouped and iban_valid(fake.replace(sep, ""))
