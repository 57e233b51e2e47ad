"""RAG pipeline: numbered passages, PII masked before the prompt, context respected; base / LoRA / RAG compare."""

import pytest
import torch

from mlcore.rag import GroundednessChecker, RagPipeline, build_qa_set, generate_answer, qa_prompt
from mlcore.rag.compare import compare_systems, qa_tensors, train_lora_qa


@pytest.fixture(scope="module")
def tiny():
    from mlcore.training import load_tiny

    return load_tiny("target")


@pytest.fixture(scope="module")
def retriever(small_retriever):
    return small_retriever[0]


def test_prompt_numbers_passages():
    p = qa_prompt("What is x?", ["alpha", "beta"])
    assert p == "[1] alpha\n[2] beta\n\nQuestion: What is x?\nAnswer:"
    assert qa_prompt("What is x?") == "Question: What is x?\nAnswer:"


def test_pii_masked_and_context_respected(retriever, tiny, embedder):
    model, tok = tiny
    rag = RagPipeline(retriever, model, tok, k=3, mode="bm25", max_new_tokens=16,
                      checker=GroundednessChecker(embedder))
    prompt, ids, texts = rag.prompt_for("whom do I write to about an assert statement refund?")
    assert len(retriever.texts) - 1 in ids                               # the PII passage was retrieved ...
    assert "jane.doe@example.com" not in prompt and "[EMAIL]" in prompt  # ... and masked before the prompt
    assert prompt.startswith("[1] ") and "\n[3] " in prompt
    ans = rag.answer("What is the assert statement?")
    assert ans.generation.prompt_tokens + 16 <= model.config.max_seq_len
    assert ans.generation.new_tokens <= 16 and 0 <= ans.report.grounded <= 1
    with pytest.raises(ValueError, match="context"):
        generate_answer(model, tok, "word " * 300, max_new_tokens=8)


def test_lora_trains_and_compare_runs(retriever, tiny, embedder, small_corpus):
    model, tok = tiny
    sections, passages = small_corpus
    items = build_qa_set(sections)
    data = qa_tensors(items[:4], tok)
    assert (data["labels"] != -100).sum() < data["attention_mask"].sum()       # prompt tokens carry no loss
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora, losses = train_lora_qa(model, tok, items[:4], steps=8, batch_size=4, lr=1e-2)
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the base is untouched
    section_of = [p.section for p in passages] + [-1]                       # the PII passage: no section
    rag = RagPipeline(retriever, model, tok, k=2, max_new_tokens=8)
    rows, answers = compare_systems(items[:2], base=model, lora=lora, rag=rag, section_of=section_of,
                                    checker=GroundednessChecker(embedder), max_new_tokens=8)
    assert [r["system"] for r in rows] == ["base", "lora", "rag"]
    rag_row = rows[2]
    assert rag_row["tokens_per_question"] > rows[0]["tokens_per_question"]   # passages cost prompt tokens
    assert 0 <= rag_row["retrieval_hit"] <= 1 and rows[0]["retrieval_hit"] is None
    assert len(answers) == 2 and {"base", "lora", "rag"} <= set(answers[0])


class _FixedRetriever:
    """Returns the first ``k`` texts whatever the question."""

    def __init__(self, texts):
        self.texts = texts

    def search(self, question, k, *, mode):
        return list(range(min(k, len(self.texts))))


@pytest.mark.parametrize("text", ["😀" * 200, "中文的文本" * 60, "é" * 300 + " end"])
def test_passages_of_multibyte_characters_are_cut_to_fit(tiny, text):
    # a cut inside an emoji decoded to U+FFFD, which re-encoded to more tokens: the prompt overflowed the context
    # and answer() raised "prompt has 225 tokens + max_new_tokens=32 > the model's context 256"
    from mlcore.finetune.sft import text_encoder

    model, tok = tiny
    rag = RagPipeline(_FixedRetriever([text, text]), model, tok, k=2, max_new_tokens=32, mask=False)
    prompt, _, texts = rag.prompt_for("What?")
    assert len(text_encoder(tok)(prompt)) + 32 <= model.config.max_seq_len
    assert all(t and "\ufffd" not in t and text.startswith(t) for t in texts)
