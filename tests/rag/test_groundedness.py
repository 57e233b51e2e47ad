"""Groundedness: supported sentences pass, unsupported ones are flagged; thresholds chosen on labelled cases."""

import pytest

from mlcore.rag import (
    GroundednessChecker,
    choose_thresholds,
    flag_precision_recall,
    labelled_support_set,
    score_cases,
    split_sentences,
    support_scores,
)

PASSAGE = ("The assert statement is a convenient way to insert debugging assertions into a program. "
           "When optimization is requested at compile time, no code is emitted for an assert statement.")


def test_split_sentences():
    assert split_sentences("One two three. Four five?\n\nSix seven: eight") == \
        ["One two three.", "Four five?", "Six seven:"]                 # one-word fragments are dropped
    assert split_sentences("First sentence here. Second one there.") == ["First sentence here.", "Second one there."]


def test_supported_and_hallucinated(embedder):
    checker = GroundednessChecker(embedder, sim_threshold=0.6, overlap_threshold=0.5)
    report = checker.check("Assert statements insert debugging assertions into a program. "
                           "The assert statement was invented by Guido in 1987 to encrypt passwords.", [PASSAGE])
    assert [s.supported for s in report.sentences] == [True, False]
    assert report.grounded == 0.5 and report.flagged == [report.sentences[1].sentence]
    with pytest.raises(ValueError, match="passages is empty"):
        checker.check("x y z.", [])
    with pytest.raises(ValueError, match="sim_threshold"):
        GroundednessChecker(embedder, sim_threshold=2.0)


def test_precision_recall_by_hand():
    sims, overlaps, supported = [0.9, 0.2, 0.7, 0.8], [0.9, 0.1, 0.2, 0.9], [True, False, True, False]
    pr = flag_precision_recall(sims, overlaps, supported, 0.5, 0.5)       # flags cases 1 and 2
    assert pr["precision"] == 0.5 and pr["recall"] == 0.5
    with pytest.raises(ValueError, match="both True and False"):
        choose_thresholds([0.1], [0.1], [True])


def test_thresholds_chosen_on_labelled_cases(embedder, small_corpus):
    _, passages = small_corpus
    cases = labelled_support_set(passages, 40, seed=0)
    assert sum(c[2] for c in cases) == 20
    sims, overlaps = score_cases(cases, embedder)
    labels = [c[2] for c in cases]
    th = choose_thresholds(sims[:20], overlaps[:20], labels[:20])
    held_out = flag_precision_recall(sims[20:], overlaps[20:], labels[20:], *th)
    assert held_out["precision"] >= 0.8 and held_out["recall"] >= 0.8, (th, held_out)
    with pytest.raises(ValueError, match="two sections"):
        labelled_support_set(passages[:1], 4)


def test_thresholds_sit_in_the_middle_of_the_tied_region():
    sims, overlaps = [0.9, 0.8, 0.2, 0.1], [1.0, 1.0, 1.0, 1.0]       # any sim threshold in (0.2, 0.8] separates
    s, o = choose_thresholds(sims, overlaps, [True, True, False, False])
    assert 0.45 <= s <= 0.6 and o <= 1.0


def test_flag_scores_equal_sklearn_and_mismatched_lengths_are_refused():
    from sklearn.metrics import precision_recall_fscore_support

    sims, overlaps, supported = [0.9, 0.2, 0.7, 0.8, 0.1], [0.9, 0.1, 0.2, 0.9, 0.8], [True, False, True, False, False]
    flags = [not (s >= 0.5 and o >= 0.5) for s, o in zip(sims, overlaps)]
    want = precision_recall_fscore_support([not y for y in supported], flags, average="binary", zero_division=1.0)
    got = flag_precision_recall(sims, overlaps, supported, 0.5, 0.5)
    assert [got["precision"], got["recall"], got["f1"]] == pytest.approx(list(want[:3]))
    with pytest.raises(ValueError, match="equally long"):  # zip scored the first 2 cases silently
        flag_precision_recall(sims, overlaps, supported[:2], 0.5, 0.5)


def test_a_single_str_of_passages_is_refused(embedder):
    # the passage str was read one character per passage and the answer scored against characters, silently
    checker = GroundednessChecker(embedder)
    with pytest.raises(ValueError, match="passages must be a list of str, got a single str"):
        checker.check("Assert statements insert debugging assertions into a program.", PASSAGE)
    with pytest.raises(ValueError, match="answer must be a str"):
        checker.check(None, [PASSAGE])
    with pytest.raises(ValueError, match="passages must be a list of str, got items of type \\['int'\\]"):
        support_scores(["An answer sentence here."], [1, 2], embedder)
