"""Fixes from the fourth (differential fuzzing) audit of pseudonyms, guards, memorization and evaluation.

References: Unicode NFKC and general category Cf (invisible characters), scipy.stats.skewnorm, scikit-learn's
precision / recall, and the recognizer itself (a pseudonym is a value of its kind)."""

from __future__ import annotations

import math
import random
import unicodedata

import pytest
import torch

from mlcore.privacy import (
    Pseudonymizer,
    detect_pii,
    iban_checksum_valid,
    luhn_check_digit,
    luhn_valid,
    mask_pii,
    pseudonym_for,
    scan_output,
)
from mlcore.privacy.audit.memorization import exposure_skewnorm, skewnorm_logcdf
from mlcore.privacy.evaluation.evaluate import evaluate
from mlcore.privacy.evaluation.synthetic import LabelledText
from mlcore.privacy.recognizers.cards import card_brand
from mlcore.privacy.spans import PiiSpan

KEY = b"0123456789abcdef-audit11"
CARD = "4556737586899855"
INVISIBLE = ("\u200b", "\u00ad", "\u2060", "\ufeff", "\u200d")


def _visible_nfkc(text: str) -> str:
    """The reference reading: invisible (Cf) characters dropped, then NFKC (folds full-width forms)."""
    return unicodedata.normalize("NFKC", "".join(c for c in text if unicodedata.category(c) != "Cf"))


@pytest.mark.parametrize("sep", INVISIBLE)
def test_invisible_characters_inside_a_card_do_not_hide_it(sep):
    text = f"Sure, the number is {sep.join(CARD)} as requested."
    spans = detect_pii(text)
    assert [(s.kind, s.text.replace(sep, "")) for s in spans] == [("CARD", CARD)]
    assert text[spans[0].start : spans[0].end] == spans[0].text  # offsets into the original text
    assert [(s.kind, s.text) for s in detect_pii(_visible_nfkc(text))] == [("CARD", CARD)]
    out = scan_output(text)
    assert out.verdict == "redact" and not any(c.isdigit() for c in out.safe_text)
    assert "[CARD]" in mask_pii(text, strategy="redact")


@pytest.mark.parametrize("text, kind", [
    ("IBAN ＮＬ９１ＡＢＮＡ０４１７１６４３００ please", "IBAN"),
    ("ssn ５３６－２２－１２３４ thanks", "SSN"),
    ("mail ａｎｎ＠ｅｘａｍｐｌｅ．ｃｏｍ today", "EMAIL"),
    ("card \ufeff4556 7375 8689 9855\u200b here", "CARD"),
])
def test_full_width_values_are_read_as_nfkc_reads_them(text, kind):
    ours = [(s.kind, _visible_nfkc(s.text)) for s in detect_pii(text, min_score=0.35)]
    reference = [(s.kind, s.text) for s in detect_pii(_visible_nfkc(text), min_score=0.35)]
    assert ours == reference and [k for k, _ in ours] == [kind]
    assert scan_output(text).verdict == "redact"


def test_maestro_pseudonym_keeps_its_well_known_iin_and_stays_a_card():
    rng = random.Random(0)
    for iin in ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763", "6390"):
        for length in (16, 19):
            body = iin + "".join(rng.choice("0123456789") for _ in range(length - 5))
            value = " ".join((body + luhn_check_digit(body))[i : i + 4] for i in range(0, length, 4))
            assert [s.kind for s in detect_pii(value)] == ["CARD"]
            fake = pseudonym_for("CARD", value, KEY)
            digits = fake.replace(" ", "")
            assert card_brand(digits) == card_brand(body + "0") and luhn_valid(digits) and len(fake) == len(value)
            if card_brand(digits) == "maestro":  # (6390 with 16 digits is InstaPayment: 637-639 kept)
                assert digits[:4] == iin
            assert [s.kind for s in detect_pii(fake)] == ["CARD"], (value, fake)  # standalone, no context word
            p = Pseudonymizer(KEY)
            assert p.reveal(p.pseudonymize(f"paid with {value}")) == f"paid with {value}"


def test_skew_normal_exposure_of_an_infinite_log_perplexity_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for a, loc, scale in ((0.0, 0.0, 1.0), (4.0, 2.0, 0.5), (-3.0, -1.0, 2.0)):
        assert skewnorm_logcdf(math.inf, a, loc, scale) == stats.skewnorm.logcdf(math.inf, a, loc, scale) == 0.0
        assert skewnorm_logcdf(-math.inf, a, loc, scale) == stats.skewnorm.logcdf(-math.inf, a, loc, scale)
    sample = torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 5
    assert exposure_skewnorm(-math.inf, sample, 10**6) == pytest.approx(math.log2(10**6))  # was NaN
    assert exposure_skewnorm(math.inf, sample, 10**6) == 0.0  # was NaN
    sample[3] = math.inf  # a candidate of probability 0: no skew-normal fits it (scipy: deep error, moments: NaN)
    for use_scipy in (True, False):
        with pytest.raises(ValueError, match="sample log-perplexities must be finite"):
            exposure_skewnorm(0.0, sample, 10**6, use_scipy=use_scipy)


def _record(golds, preds):
    rec = LabelledText("x" * 60, [tuple(g) for g in golds])
    return rec, (lambda text: [PiiSpan(k, s, e, text[s:e], 1.0) for k, s, e in preds])


@pytest.mark.parametrize("min_iou", [0, 0.0, -1, 2.0, float("nan"), "0.5", True, None])
def test_evaluate_refuses_a_min_iou_outside_0_1(min_iou):
    rec, detector = _record([("CARD", 0, 2)], [("CARD", 5, 8)])
    with pytest.raises(ValueError, match="min_iou"):  # 0 counted these disjoint spans as a match
        evaluate([rec], detector, min_iou=min_iou)


def test_evaluate_refuses_an_empty_gold_span():
    rec, detector = _record([("CARD", 1, 1)], [("CARD", 1, 1)])
    with pytest.raises(ValueError, match="gold span"):  # was ZeroDivisionError
        evaluate([rec], detector)


@pytest.mark.parametrize("golds, preds, min_iou", [
    ([("EMAIL", 20, 27), ("EMAIL", 23, 30)], [("EMAIL", 21, 29), ("EMAIL", 18, 24)], 0.3),
    ([("CARD", 5, 14), ("CARD", 4, 5)], [("CARD", 1, 8), ("CARD", 8, 17), ("CARD", 34, 36)], 0.1),
    ([("CARD", 0, 10), ("CARD", 10, 20)], [("CARD", 5, 15), ("CARD", 0, 10)], 0.3),
])
def test_evaluate_matches_as_many_golds_as_possible(golds, preds, min_iou):
    rec, detector = _record(golds, preds)
    score = evaluate([rec], detector, min_iou=min_iou)[golds[0][0]]
    assert (score.tp, score.fp, score.fn) == (2, len(preds) - 2, 0)  # first-come matching found 1


def test_exact_span_scores_equal_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(1)
    records, truth, guess = [], [], []
    for _ in range(100):
        golds = {(rng.choice("AB"), s, s + rng.randint(1, 6)) for s in rng.sample(range(0, 50, 7), rng.randint(0, 4))}
        preds = {g for g in golds if rng.random() < 0.7} | {(rng.choice("AB"), s, s + 3) for s in
                                                              rng.sample(range(1, 50, 5), rng.randint(0, 2))}
        records.append(_record(sorted(golds), sorted(preds)))
        for item in sorted(golds | preds):  # one binary decision per distinct (kind, start, end)
            truth.append((item[0], item in golds))
            guess.append((item[0], item in preds))
    scores = {}
    for rec, detector in records:
        for kind, s in evaluate([rec], detector, min_iou=1.0).items():
            total = scores.setdefault(kind, [0, 0, 0])
            total[0] += s.tp
            total[1] += s.fp
            total[2] += s.fn
    for kind, (tp, fp, fn) in scores.items():
        y_true = [t for (k, t) in truth if k == kind]
        y_pred = [p for (k, p) in guess if k == kind]
        assert tp / (tp + fp) == pytest.approx(metrics.precision_score(y_true, y_pred))
        assert tp / (tp + fn) == pytest.approx(metrics.recall_score(y_true, y_pred))


def test_iban_checksum_valid_refuses_the_printed_form_instead_of_answering_false():
    assert iban_checksum_valid("GB82WEST12345698765432")
    for printed in ("GB82 WEST 1234 5698 7654 32", "GB82-WEST-1234-5698-7654-32", "GB82\u00a0WEST12345698765432"):
        with pytest.raises(ValueError, match="iban must be letters and digits only"):
            iban_checksum_valid(printed)  # was False, though its check digits are right
    assert not iban_checksum_valid("GB83WEST12345698765432") and not iban_checksum_valid("")
