"""The vault: pseudonyms in, real values out (whole text and streamed), last four kept, nothing raw leaks.

Checksums are recomputed here from their published definitions (Luhn / ISO 7812, ISO 13616 MOD 97-10, ABA
3-7-1), independent of mlcore's validators; values come from Faker.
"""

import logging
import random

import pytest
from faker import Faker
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcore.privacy import OutputGuard, detect_pii, scan_input, scan_output
from mlcore.privacy.recognizers.cards import card_brand
from mlcore.privacy.transforms.vault import Vault, keep_last_four

KEY = b"vault-test-key-0123456789"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = "".join(iban.split()).upper()
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def aba_ok(digits: str) -> bool:
    return sum(int(d) * w for d, w in zip(digits, (3, 7, 1) * 3, strict=True)) % 10 == 0


def digits_of(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


PROMPT = ("Hi, card 4111 1111 1111 1111 was declined; email jane.doe@example.org, "
          "IBAN GB82 WEST 1234 5698 7654 32, phone 415-555-2671.")


def test_round_trip_through_scan_input_and_scan_output():
    vault = Vault(KEY)
    r = scan_input(PROMPT, strategy="pseudonym", vault=vault)
    assert r.verdict == "redact" and len(vault) == 4
    for raw in ("4111 1111 1111 1111", "jane.doe", "GB82 WEST", "415-555-2671"):
        assert raw not in r.safe_text
    assert "1111." not in r.safe_text and " 1111 was" in r.safe_text  # "your card ending 1111" stays true
    answer = "I see the charge on " + r.safe_text[9:28] + "; we will write to " + r.safe_text.split("email ")[1][:30]
    out = scan_output(answer, vault=vault)
    assert out.verdict == "allow" and "4111 1111 1111 1111" in out.safe_text and "jane.doe@example.org" in out.safe_text
    assert vault.reveal(r.safe_text) == PROMPT
    assert scan_output(answer).verdict == "redact"  # without the vault the pseudonyms are leaks


def test_last_four_and_checksums_hold():
    fake = Faker("en_US")
    fake.seed_instance(5)
    vault = Vault(KEY)
    for card_type in ("visa16", "mastercard", "amex", "discover", "jcb16", "diners", "visa13", "maestro") * 4:
        card = fake.credit_card_number(card_type)
        p = digits_of(vault.pseudonym("CARD", card))
        assert p[-4:] == card[-4:] and p != card and luhn_ok(p) and card_brand(p) == card_brand(card) and len(p) == len(card)
    for loc in ("de_DE", "en_GB", "fr_FR", "nl_NL"):
        iban = Faker(loc).iban()
        p = vault.pseudonym("IBAN", iban)
        assert p[-4:] == iban[-4:] and p[:2] == iban[:2] and iban_ok(p) and p != iban
    for _ in range(10):
        aba = fake.aba()
        p = vault.pseudonym("ABA_ROUTING", aba)
        assert p[-4:] == aba[-4:] and aba_ok(p) and p != aba
    assert keep_last_four("CARD", "4111111111111111", "41") is None  # too short to keep four


def test_same_value_same_pseudonym_and_collisions_stay_reversible():
    vault = Vault(KEY)
    a = vault.pseudonym("CARD", "4111 1111 1111 1111")
    assert vault.pseudonym("CARD", "4111111111111111") == a  # one card, two layouts
    other = vault.pseudonym("CARD", "4012 8888 8888 1111")  # same last four, another card
    assert other != a and vault.reveal(f"{a} / {other}") == "4111 1111 1111 1111 / 4012 8888 8888 1111"
    assert vault.reveal(digits_of(a)) == "4111 1111 1111 1111"  # re-spelled by the model: still revealed
    assert Vault(KEY).pseudonym("CARD", "4111111111111111") == digits_of(a)  # same key, same pseudonym


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6))
def test_streamed_reveal_equals_whole_reveal(seed):
    vault = Vault(KEY)
    safe = vault.pseudonymize(PROMPT)
    answer = f"Sure. {safe} Anything else? {safe[9:28]}"
    rng = random.Random(seed)
    chunks, i = [], 0
    while i < len(answer):
        n = rng.randint(1, 7)
        chunks.append(answer[i:i + n])
        i += n
    assert "".join(vault.reveal_stream(chunks)) == vault.reveal(answer)
    guard = OutputGuard(vault=vault)
    shown = "".join(guard.feed(c) for c in chunks) + guard.close()
    assert shown == scan_output(answer, vault=vault).safe_text == vault.reveal(answer)
    assert guard.result.verdict == "allow"


def test_streamed_guard_still_redacts_a_card_the_customer_never_gave():
    vault = Vault(KEY)
    safe = vault.pseudonymize("my card 4111 1111 1111 1111")
    leak = "5555 5555 5555 4444"
    chunks = ["Yours is ", safe[8:16], safe[16:], ", and another is 5555 55", "55 5555 4444. Bye now, take care!"]
    guard = OutputGuard(vault=vault)
    shown = "".join(guard.feed(c) for c in chunks) + guard.close()
    assert "4111 1111 1111 1111" in shown and leak not in shown and guard.result.verdict == "redact"


def test_encrypted_file(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    vault = Vault(KEY)
    safe = vault.pseudonymize(PROMPT)
    path = tmp_path / "conversation.vault"
    vault.save(path)
    blob = path.read_bytes()
    assert b"4111" not in blob and b"jane" not in blob
    again = Vault.load(path, KEY)
    assert again.reveal(safe) == PROMPT and again.pseudonym("CARD", "4111111111111111") in safe
    vault.save(path, key=b"another-file-key-0123456")
    with pytest.raises(ValueError, match="wrong key") as err:
        Vault.load(path, KEY)
    assert "4111" not in str(err.value)
    assert Vault.load(path, KEY, file_key=b"another-file-key-0123456").reveal(safe) == PROMPT
    path.write_bytes(blob[:-6] + b"AAAA=\n")
    with pytest.raises(ValueError, match="altered"):
        Vault.load(path, KEY)
    assert "4111" not in caplog.text and "jane" not in caplog.text


def test_nothing_raw_in_reprs_and_errors():
    vault = Vault(KEY)
    r = scan_input(PROMPT, strategy="pseudonym", vault=vault)
    out = scan_output(vault.pseudonymize(PROMPT), vault=vault)
    for text in (repr(vault), str(vault), repr(r), repr(out), repr(detect_pii(PROMPT))):
        assert "4111" not in text and "jane" not in text and "2671" not in text, text
    with pytest.raises(ValueError, match="strategy='pseudonym'"):
        scan_input(PROMPT, vault=vault)
    with pytest.raises(TypeError, match="vault must be"):
        scan_input(PROMPT, strategy="pseudonym", vault={"a": "b"})
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Vault(b"short")
    with pytest.raises(TypeError, match="kinds"):
        Vault(KEY, kinds="CARD")
    with pytest.raises(TypeError, match="single str"):
        list(vault.reveal_stream("one string"))
