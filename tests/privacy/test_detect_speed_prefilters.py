"""The speed devices of `detect_pii` (class-string prefilters, literal keyword scans, overlap groups) must
change nothing but the speed: each is compared with the plain scan it replaces, on texts built to hit the
edges (digit soup, shapes back to back, separators mixed), and its op counts are checked. No timing."""

import random
import re

import pytest

from mlcore.privacy import detect_pii
from mlcore.privacy.detect import RECOGNIZERS
from mlcore.privacy.recognizers import checksums, classes, context, national_ids
from mlcore.privacy.spans import PiiSpan, _greedy, resolve_overlaps

_TOKENS = ["123-45-6789", "078-05-1120", "415-555-2671", "(415) 555-2671", "4111 1111 1111 1111",
           "4111-1111-1111-1111", "5555555555554444", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
           "192.168.1.1", "10.0.0.255", "AB 12 34 56 C", "QQ123456C", "021000021", "ssn ", "card ", "call ",
           "routing ", "IBAN ", "tel: ", "sort code ", "account ", "passport ", " ", "-", ".", "_", "\n", "x", "12",
           "1234", "0", "ts=1775083188349", "v1.2.3.4", "cvv 123", "exp 12/27", "born 1990-01-02"]
_CHARS = "0123456789" * 5 + "  --..__\n()+:/@=#,;abcXYZ"


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = ["".join(rng.choice(_CHARS) for _ in range(rng.randint(5, 80))) for _ in range(n)]
    out += ["".join(rng.choice(_TOKENS + list(_CHARS)) for _ in range(rng.randint(2, 20))) for _ in range(n)]
    out += [rng.choice(["", " ", "\n", ", ", "-"]).join(rng.choices(_TOKENS, k=rng.randint(2, 8))) for _ in range(n)]
    return out


def _key(span: PiiSpan):
    return span.start, span.end, span.kind, span.score


def test_class_prefilters_yield_exactly_what_the_plain_scans_yield(monkeypatch):
    texts = _texts(250, seed=3)
    fast = [[sorted(map(_key, r(t))) for r in RECOGNIZERS] for t in texts]
    monkeypatch.setattr(classes, "classes", lambda text, table=None: None)  # every recognizer falls back
    slow = [[sorted(map(_key, r(t))) for r in RECOGNIZERS] for t in texts]
    assert sum(len(spans) for row in fast for spans in row) > 300  # the texts do hold values
    for text, a, b in zip(texts, fast, slow):
        assert a == b, text


class _Counting:
    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern, self.calls = pattern, 0

    def match(self, *args):
        self.calls += 1
        return self.pattern.match(*args)

    def finditer(self, *args):
        self.calls += 1
        return self.pattern.finditer(*args)


def test_ssn_pattern_runs_only_at_ssn_shapes(monkeypatch):
    counter = _Counting(national_ids._SSN)
    monkeypatch.setattr(national_ids, "_SSN", counter)
    log = "2024-05-01 12:30:00 INFO ts=1775083188349 took 415 ms, 3.14159, id 99812345678\n" * 300
    assert not [s for s in detect_pii(log) if s.kind in ("SSN", "ITIN")]
    digits = sum(c.isdigit() for c in log)
    # tried only where a 9+ digit run starts after a space or other non-digit (ts=..., id ...: two per line)
    # and at the text's first character, not at each of the 13k digits
    assert counter.calls == 2 * 300 + 1 and digits > 13_000
    counter.calls = 0
    found = detect_pii("x" * 500 + " ssn 212-45-6789 and 212 45 6789.", kinds=["SSN"])
    assert [s.text for s in found] == ["212-45-6789", "212 45 6789"]
    assert counter.calls == 2


def test_class_strings_keep_offsets_and_refuse_non_ascii():
    assert classes.digit_classes("Ab_1-2.=x)\n ") == b"aa_0-0.#a)\n "
    assert classes.ssn_classes("1 2-3.4_a") == b"0 0-0.0_x"
    assert classes.digit_classes("caf\u00e9 12") is None  # the recognizer then runs its plain regex scan
    assert classes.find_all(b"000000", (b"0000",)) == [0, 1, 2]  # overlapping occurrences too


@pytest.mark.parametrize("kind", ["CARD", "PHONE", "DATE_OF_BIRTH", "SECRET", "IP_ADDRESS"])
def test_literal_keyword_scan_equals_the_alternation_regex(kind):
    words = context.CONTEXT_WORDS[kind]
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
    rng = random.Random(7)
    pieces = [*words, *(w[:-1] for w in words if len(w) > 2), " ", "x", "ip", "a", "\n"]
    for _ in range(300):
        low = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        assert context.literal_spans(low, words, pattern) == [m.span() for m in pattern.finditer(low)], low


def test_resolve_overlaps_by_groups_equals_one_greedy_pass():
    rng = random.Random(11)
    for _ in range(2000):
        spans = []
        for _ in range(rng.randint(0, 12)):
            a = rng.randint(0, 40)
            b = a + rng.randint(1, 10)
            spans.append(PiiSpan(rng.choice("AB"), a, b, "x" * (b - a), rng.choice([0.4, 0.5, 0.9])))
        assert resolve_overlaps(spans) == _greedy(spans)


def test_fast_checksums_equal_the_digit_by_digit_rules():
    rng = random.Random(5)
    for _ in range(2000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        rev = digits[::-1]
        reference = (sum(map(int, rev[::2])) + sum(2 * int(d) - 9 * (int(d) > 4) for d in rev[1::2])) % 10
        assert checksums.luhn_sum(digits) == reference
        chars = "".join(rng.choice("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 34)))
        value = int("".join(str(int(c, 36)) for c in chars))
        assert checksums._iban_integer_mod97(chars) == value % 97
    with pytest.raises(ValueError, match="lowercase"):
        checksums.iban_mod97("de89370400440532013000")


def test_phone_search_skips_whole_numbers_but_finds_the_same_matches():
    from mlcore.privacy.recognizers import contact

    for text in _texts(200, seed=13):
        for pattern, free in ((contact._NATIONAL, contact._FREE_NATIONAL), (contact._NANP_BARE, contact._FREE_BARE)):
            plain = [m.span() for m in context.search_free(pattern, text, free, 0, len(text))]
            assert [m.span() for m in contact._search_not_after(pattern, text, free, 0, len(text))] == plain
