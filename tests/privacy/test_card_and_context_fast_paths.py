"""The fast paths of `find_cards` (one split and a cached layout per candidate shape, Luhn as strided byte
sums) and of `has_context` (a lowercased, look-behind-free scan of ASCII windows) must change nothing but the
speed: each is compared with the plain regex formulation it replaces, on random texts built to hit the edges
(digit soup, every separator, wrapped lines, mixed case, non-ASCII letters that case-fold to ASCII). No timing."""

import random
import re

import pytest

from mlcore.privacy.recognizers import cards, context
from mlcore.privacy.recognizers.checksums import luhn_sum

_SEPARATORS = [" ", "-", ".", "  ", "\n", " \n", "\n ", " \n ", "   ", ". ", "\n\n", "\u00a0", "\u2013", "\u2011", "- "]
_CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "30569309025904", "6011000990139424",
          "3530111333300000", "6759649826438453", "9111111111111115", "4111111111111", "4000000000000000006"]


def _card_like(rng: random.Random) -> str:
    """Digit groups (often a real card's, often random) joined by random separators, with random neighbours."""
    digits = rng.choice(_CARDS) if rng.random() < 0.5 else "".join(
        rng.choice("0123456789") for _ in range(rng.randint(8, 40)))
    sizes = rng.choice([[4, 4, 4, 4, 4], [4, 6, 5], [4, 6, 4], [2, 4, 4, 4, 4, 4, 2], [1, 16], [3, 3, 4]])
    groups, k = [], 0
    for size in sizes * 3:
        if k >= len(digits):
            break
        groups.append(digits[k : k + size])
        k += size
    sep = rng.choice(_SEPARATORS)
    body = "".join(g + (sep if rng.random() < 0.85 else rng.choice(_SEPARATORS)) for g in groups).rstrip()
    before = rng.choice(["", "card ", "order ", "x", "ORD-", "1234 ", "3.", "visa", "ref 12 ", "\n"])
    after = rng.choice(["", " 12/27 123", " 1234", ".5", "exp", "-ab", " 5555 5555 5555 4444", ",12/27,USD"])
    return before + body + after


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    soup = "0123456789" * 4 + " -.\n\u00a0\u2013_/:,xO" + "  "
    out = ["".join(rng.choice(soup) for _ in range(rng.randint(10, 90))) for _ in range(n)]
    out += [" ".join(_card_like(rng) for _ in range(rng.randint(1, 4))) for _ in range(n)]
    return out


def _reference_runs(value: str) -> list[list[tuple[int, int]]]:
    """Runs of 12+ characters and their digit groups, as the `_RUN` and digit-group regexes find them."""
    return [[(g.start() + run.start(), g.end() + run.start()) for g in re.finditer(r"\d+", run.group())]
            for run in cards._RUN.finditer(value) if run.end() - run.start() >= 12]


@pytest.mark.parametrize("seed", [0, 1])
def test_cached_layout_splits_candidates_into_the_runs_of_the_run_regex(seed):
    checked = 0
    for text in _texts(400, seed):
        for cand in cards._CANDIDATE.finditer(text):
            value = cand.group()
            runs = cards._layout.__wrapped__(value.translate(cards._SHAPE))
            found = [[(k, k + size) for k, size in zip(at, sizes)] for at, sizes, _, _ in runs]
            # the layout drops runs that can hold nothing (no card-layout window and fewer than six groups)
            kept = [r for r in _reference_runs(value) if r in found]
            assert found == kept, value
            for _, _, windows, _ in runs:
                for a, b, kept_at, doubled_at, start, end, _seps in windows:
                    digits = value[start:end].translate(cards._NOT_DIGITS)
                    assert digits == value.translate(cards._NOT_DIGITS)[a:b] and 12 <= len(digits) <= 19
                    plain = digits.encode().translate(cards._VALUES)
                    doubled = digits.encode().translate(cards._DOUBLED_VALUES)
                    shift = kept_at - a, doubled_at - a
                    assert (sum(plain[shift[0] :: 2]) + sum(doubled[shift[1] :: 2])) % 10 == luhn_sum(digits)
                    checked += 1
    assert checked > 500


def _reference_find_cards(text: str) -> list:
    """`find_cards` as the plain scans: every `_RUN` run, every window of its groups, Luhn then layout."""
    out = []
    for run in cards._RUN.finditer(text):
        if run.end() - run.start() < 12:
            continue
        groups = [(g.start() + run.start(), g.end() + run.start()) for g in re.finditer(r"\d+", run.group())]
        sizes = [b - a for a, b in groups]
        found = False
        for i in range(len(groups)):
            seps: set[str] = set()
            for j in range(i, len(groups)):
                if j > i:
                    if sizes[j - 1] not in (4, 6):
                        break
                    seps.add(cards._sep_class(text[groups[j - 1][1]]))
                    if "." in seps and len(seps) > 1:
                        break
                digits = "".join(text[a:b] for a, b in groups[i : j + 1])
                if len(digits) > 19:
                    break
                if len(digits) < 12 or luhn_sum(digits) != 0 or not cards._layout_ok(sizes[i : j + 1], seps):
                    continue
                span = cards._card_span(text, groups[i][0], groups[j][1], digits, frozenset(seps))
                if span is not None:
                    out.append(span)
                    if span.score > cards.UNKNOWN_IIN_SCORE:
                        found = True
                        out.extend(cards._details_after(text, groups[j][1]))
        if not found and len(groups) >= 6:
            out.extend(cards._tiled(text, [a for a, _ in groups], [text[a:b] for a, b in groups]))
    return out


@pytest.mark.parametrize("seed", [2, 3])
def test_find_cards_yields_what_the_plain_run_and_window_scan_yields(seed):
    texts = _texts(300, seed)
    fast = [list(cards.find_cards(t)) for t in texts]
    assert sum(len(f) for f in fast) > 100  # the texts do hold cards
    assert fast == [_reference_find_cards(t) for t in texts]


def test_long_candidates_are_not_cached():
    cards._layout.cache_clear()
    list(cards.find_cards("4111 " * 200 + "1"))
    assert cards._layout.cache_info().currsize == 0  # a 1000-character shape is worked out, not kept
    list(cards.find_cards("4111 1111 1111 1111"))
    assert cards._layout.cache_info().currsize == 1


_WORDY = ["card", "Card", "CARD", "credit", "cc", "visa", "card number", "order", "ref", "SSN", "ss#", "d.o.b",
          "a/c", "tel", "phone", "version", "ſsn", "\u212aard", "x", "_", "-", "abc", "dcard", "cards", "4111", "1",
          "é", "İ"] + [" "] * 12 + [". ", "; ", "|", "\n", "no. ", "e.g. "]


@pytest.mark.parametrize("seed", [4, 5])
def test_word_before_matches_the_clause_regex(seed):
    rng = random.Random(seed)
    hits = negative_hits = 0
    for _ in range(3000):
        text = "".join(rng.choice(_WORDY) for _ in range(rng.randint(1, 16))) + " 4111"
        start = len(text) - 4 - rng.randint(0, 2)
        kind = rng.choice(["CARD", "SSN", "DATE_OF_BIRTH", "ACCOUNT_NUMBER", "PHONE"])
        window = rng.choice([8, 16, 30, 40])
        words = context.CONTEXT_WORDS[kind]
        expected = context._pattern(words).search(text, context._window_start(text, start, window), start) is not None
        assert context.has_context(text, start, kind, window=window) == expected, (text, start, kind, window)
        negative = context.NEGATIVE_WORDS.get(kind, ())
        expected_neg = bool(negative) and context._pattern(negative).search(
            text, context._window_start(text, start, 16), start) is not None
        assert context.has_negative_context(text, start, kind) == expected_neg, (text, start, kind)
        hits += expected
        negative_hits += expected_neg
    assert hits > 100 and negative_hits > 25  # both outcomes are represented
