"""detect_pii's speed comes from cheap prefilters before validation; check the mechanisms (op counts), not
wall time, which a shared CI machine cannot measure."""

import re

from mlcore.privacy import detect_pii
from mlcore.privacy.recognizers import cards, context


def test_short_numbers_never_reach_the_luhn_check():
    text = "2024-05-01 12:30:00 INFO 17 items, 3.14, v1.2.3, 415 bytes, id 99812\n" * 200
    assert not detect_pii(text, kinds=["CARD"])
    # Luhn sums are taken only over the windows of a candidate's layout (`cards._layout`, by shape): the only
    # candidates here (a date run into its time, a line's last number into the next line's date) have none
    shapes = {m.group().translate(cards._SHAPE) for m in cards._CANDIDATE.finditer(text)}
    assert "00000\n0000-00-00 00" in shapes
    assert all(windows == () for shape in shapes for _, _, windows, _ in cards._layout(shape))
    [(_, _, windows, _)] = cards._layout("card 4111 1111 1111 1111"[5:].translate(cards._SHAPE))
    assert windows  # and a real candidate does reach it


def test_keyword_scan_is_a_literal_search_with_word_boundaries():
    hits = list(context.keyword_hits("Cancel the CELL phone; callback, Call now", ("call", "cell", "phone")))
    assert [(s, e) for s, e in hits] == [(11, 15), (16, 21), (33, 37)]
    pattern = context._LITERALS["\x00".join(("call", "cell", "phone"))]
    assert not pattern.flags & re.IGNORECASE  # lowercased text instead: keeps the engine's prefix search


def test_context_only_kinds_search_only_near_their_words():
    assert context.context_windows("no words here " * 100, "ABA_ROUTING") == []
    text = "x" * 500 + " routing 021000021 " + "y" * 500
    [(lo, hi)] = context.context_windows(text, "ABA_ROUTING", window=30)
    assert lo == 508 and hi - lo < 100
