"""The labelled synthetic set: the recall/precision targets, and the metric itself against scikit-learn."""

import pytest

from mlcore.privacy import detect_pii
from mlcore.privacy.evaluation.evaluate import KindScore, evaluate, format_table
from mlcore.privacy.evaluation.synthetic import SyntheticPii, synthetic_log


@pytest.fixture(scope="module")
def scores():
    return evaluate(SyntheticPii(seed=1234).records(2000), detect_pii)


@pytest.mark.parametrize("kind", ["CARD", "SSN", "IBAN"])
def test_targets_on_regulated_kinds(scores, kind):
    s = scores[kind]
    assert s.support >= 150
    assert s.recall >= 0.99, format_table(scores)
    assert s.precision >= 0.98, format_table(scores)


def test_every_kind_is_measured(scores):
    for kind in ["ITIN", "ABA_ROUTING", "ACCOUNT_NUMBER", "EMAIL", "PHONE", "IP_ADDRESS", "DATE_OF_BIRTH", "SECRET"]:
        assert scores[kind].support > 20
        assert scores[kind].f2 > 0.9, format_table(scores)


def test_hard_negatives_are_present_and_seeded():
    a = SyntheticPii(seed=5).records(300)
    b = SyntheticPii(seed=5).records(300)
    assert [r.text for r in a] == [r.text for r in b]
    joined = " ".join(r.text for r in a)
    for marker in ("mistyped", "USPS", "ts=", "upgraded to v", "not a valid number", "failed validation"):
        assert marker in joined
    for rec in a:  # gold offsets point at real text
        for _, s, e in rec.spans:
            assert rec.text[s:e].strip() == rec.text[s:e] and e > s


def test_f2_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    fbeta_score, precision_score, recall_score = metrics.fbeta_score, metrics.precision_score, metrics.recall_score
    y_true = [1] * 90 + [0] * 50 + [1] * 10
    y_pred = [1] * 90 + [1] * 7 + [0] * 43 + [0] * 10
    k = KindScore("CARD", tp=90, fp=7, fn=10)
    assert k.precision == pytest.approx(precision_score(y_true, y_pred))
    assert k.recall == pytest.approx(recall_score(y_true, y_pred))
    assert k.f2 == pytest.approx(fbeta_score(y_true, y_pred, beta=2))


def test_synthetic_log_size():
    log = synthetic_log(20_000, seed=0)
    assert 20_000 <= len(log) < 21_000
    with pytest.raises(ValueError):
        SyntheticPii(0).records(-1)
