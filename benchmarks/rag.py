"""Retrieval and RAG: embedding throughput, index latency against corpus size, retrieval quality, and the
base vs LoRA vs RAG comparison on the same questions.

Tasks (``params["task"]``):

- ``embed``: sentences/s of ``mlcore.rag.Embedder`` (transformers ``AutoModel`` + mean pooling + L2 norm written
  out) against ``sentence-transformers`` on the same all-MiniLM-L6-v2 weights, same texts (reference-text
  chunks; quick: 16 one-sentence answers), same batch size (speed-up = mlcore / twin sentences/s, > 1: mlcore
  faster); ``max_abs_diff`` between the two embeddings rides along.
- ``index``: build time and single-query latency against corpus size ``N`` (random clustered unit vectors,
  384-d): the exact torch index (twin: faiss ``IndexFlatIP``, the same exact search) and HNSW from faiss
  (``impl="hnsw"``, M=32, efConstruction=100, efSearch=128; its ``recall_at_10`` against exact rides along). Plot ``rag_query_vs_n``.
- ``bm25``: query latency of mlcore's BM25 (inverted index, scatter-add) against ``bm25s`` (method "lucene").
- ``retrieval``: recall@k, MRR and nDCG@10 of BM25, dense and hybrid (RRF) on the question set built from
  ``pydoc_data.topics`` (synthetic-from-real-text labels: question from a section heading, gold = the section).
- ``rag``: exact match, token F1, groundedness, retrieval hit, latency and tokens per question of the base tiny
  model, its LoRA-tuned copy and RAG, on held-out questions. The tiny model (4M parameters) is weak: its figures
  are honest, not flattering.

Goals: embedding throughput at least 0.95x sentence-transformers'; embeddings within 1e-5 of it; HNSW
recall@10 >= 0.9 against exact at the largest N (clustered random vectors are a hard case for HNSW: within a
cluster the neighbours differ only by isotropic noise); hybrid recall@5 at least the better of BM25 and dense.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import numpy as np
import torch

from mlcore.bench import Context, Goal, Plot, Result, Table, time_fn

DESCRIPTION = "MiniLM embeddings vs sentence-transformers; exact/HNSW index vs N; BM25 vs bm25s; recall@k; RAG vs LoRA vs base"
PLOTS = [
    Plot(name="rag_query_vs_n", x="N", y="median", series="impl", where={"task": "index", "op": "query"},
         title="single-query latency vs corpus size (384-d)", ylabel="seconds", logx=True, logy=True),
]
TABLES = [
    Table("Embedding throughput (all-MiniLM-L6-v2)", where={"task": "embed"}, params=("sentences", "batch"),
          columns=("max_abs_diff",)),
    Table("Index build / query vs corpus size", where={"task": "index"}, params=("impl", "op", "N"),
          columns=("recall_at_10",)),
    Table("BM25 query latency", where={"task": "bm25"}, params=("docs",)),
    Table("Retrieval quality (pydoc_data.topics questions)", where={"task": "retrieval"}, params=("impl",),
          columns=("recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10")),
    Table("Base vs LoRA vs RAG (held-out questions)", where={"task": "rag"}, params=("impl",),
          columns=("exact_match", "token_f1", "grounded", "retrieval_hit", "latency_p95_s", "tokens_per_question")),
]


def _clustered(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(64, d, generator=g)
    x = centres[torch.randint(0, 64, (n,), generator=g)] + 0.6 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def _embed(ctx: Context, emb, texts: list[str]) -> Iterator[Result]:
    from sentence_transformers import SentenceTransformer

    from mlcore.rag import default_model_dir

    st = SentenceTransformer(default_model_dir(), device=str(ctx.device))
    batch = 32
    diff = (emb.encode(texts) - torch.from_numpy(st.encode(texts, batch_size=batch, convert_to_numpy=True))).abs()
    ours = time_fn(lambda: emb.encode(texts), device=ctx.device, warmup=1, min_run_time=1.5 if ctx.quick else 4.0)
    twin = time_fn(lambda: st.encode(texts, batch_size=batch), device=ctx.device, warmup=1,
                   min_run_time=1.5 if ctx.quick else 4.0)
    max_diff = float(diff.max())
    yield Result.from_timing("rag", "embed", {"task": "embed", "impl": "mlcore", "sentences": len(texts),
                                              "batch": batch}, device=ctx.device, dtype="float32", timing=ours,
                             twin="sentence-transformers", twin_timing=twin, work=len(texts), unit="sentences/s",
                             extra={"max_abs_diff": max_diff},
                             goal=[Goal(">=", 0.95, "MiniLM embedding sentences/s vs sentence-transformers"),
                                   Goal("<=", 1e-5, "max |embedding - sentence-transformers|",
                                        metric="max_abs_diff")])


def _index(ctx: Context) -> Iterator[Result]:
    sizes = (1000, 2000, 5000) if ctx.quick else (1000, 4000, 16000, 64000)
    for n in sizes:
        yield from _index_at(ctx, n, goal=n == sizes[-1])


def _index_at(ctx: Context, n: int, *, goal: bool) -> Iterator[Result]:
    import faiss

    from mlcore.rag import ApproxIndex, DenseIndex, recall_vs_exact

    x, q = _clustered(n, 384, 0), _clustered(64, 384, 1)
    q1 = q[:1]
    t_exact = time_fn(lambda: DenseIndex(x, device=ctx.device), device=ctx.device, warmup=1, min_run_time=0.3)

    def flat() -> faiss.IndexFlatIP:
        f = faiss.IndexFlatIP(384)
        f.add(np.ascontiguousarray(x.numpy()))
        return f

    t_flat = time_fn(flat, device="cpu", warmup=1, min_run_time=0.3)
    t0 = time.perf_counter()
    approx = ApproxIndex(x, M=32, ef_search=128)
    build_hnsw = time.perf_counter() - t0
    exact, fl = DenseIndex(x, device=ctx.device), flat()
    recall = recall_vs_exact(approx.search(q, 10)[1], exact.search(q, 10)[1])
    qe = time_fn(lambda: exact.search(q1, 10), device=ctx.device, min_run_time=0.3)
    qf = time_fn(lambda: fl.search(np.ascontiguousarray(q1.numpy()), 10), device="cpu", min_run_time=0.3)
    qa = time_fn(lambda: approx.search(q1, 10), device="cpu", min_run_time=0.3)
    base = {"task": "index", "N": n}
    yield Result.from_timing("rag", "exact build", {**base, "impl": "exact", "op": "build"}, device=ctx.device,
                             dtype="float32", timing=t_exact, twin="faiss IndexFlatIP", twin_timing=t_flat)
    yield Result("rag", "hnsw build", {**base, "impl": "hnsw", "op": "build"}, "cpu", "float32", build_hnsw,
                 0.0, runs=1)
    yield Result.from_timing("rag", "exact query", {**base, "impl": "exact", "op": "query"}, device=ctx.device,
                             dtype="float32", timing=qe, twin="faiss IndexFlatIP", twin_timing=qf)
    yield Result.from_timing("rag", "hnsw query", {**base, "impl": "hnsw", "op": "query"}, device="cpu",
                             dtype="float32", timing=qa, extra={"recall_at_10": round(recall, 4)},
                             goal=Goal(">=", 0.9, f"HNSW recall@10 vs exact (N={n})", metric="recall_at_10")
                             if goal else None)


def _bm25(ctx: Context, texts: list[str]) -> Iterator[Result]:
    import bm25s

    from mlcore.rag import BM25, simple_tokenize

    tokens = [simple_tokenize(t) for t in texts]
    ours, twin = BM25(tokens), bm25s.BM25(method="lucene")
    twin.index(tokens, show_progress=False)
    q = simple_tokenize("how are default argument values of a function evaluated")
    t_ours = time_fn(lambda: ours.scores(q), min_run_time=0.3)
    t_twin = time_fn(lambda: twin.get_scores(q), min_run_time=0.3)
    yield Result.from_timing("rag", "bm25 query", {"task": "bm25", "impl": "mlcore", "docs": len(texts)},
                             device="cpu", dtype="float64", timing=t_ours, twin="bm25s (lucene)", twin_timing=t_twin)


def _retrieval(retriever, items, section_of) -> Iterator[Result]:
    from mlcore.rag import dedupe, mrr, ndcg_at_k, recall_at_k

    relevant = [{it.section} for it in items]
    figures = {}
    for mode in ("bm25", "dense", "hybrid"):
        ranked = [dedupe(r, section_of) for r in retriever.rank_all([it.question for it in items], mode=mode,
                                                                     depth=40)]
        figures[mode] = {f"recall_at_{k}": round(recall_at_k(ranked, relevant, k), 4) for k in (1, 5, 10)}
        figures[mode].update(mrr=round(mrr(ranked, relevant), 4), ndcg_at_10=round(ndcg_at_k(ranked, relevant, 10), 4))
    best_single = max(figures["bm25"]["recall_at_5"], figures["dense"]["recall_at_5"])
    for mode, f in figures.items():
        yield Result("rag", f"recall@5 {mode}", {"task": "retrieval", "impl": mode, "questions": len(items)}, "cpu",
                     None, f["recall_at_5"], 0.0, unit="recall@5", extra=f,
                     goal=Goal(">=", best_single, "hybrid recall@5 >= best of BM25 / dense", metric="recall_at_5")
                     if mode == "hybrid" else None)


def _rag(ctx: Context, emb, retriever, sections, passages, items) -> Iterator[Result]:
    from mlcore.rag import (
        GroundednessChecker,
        RagPipeline,
        choose_thresholds,
        labelled_support_set,
        score_cases,
        split_qa,
    )
    from mlcore.rag.compare import compare_systems, train_lora_qa
    from mlcore.training import load_tiny

    cases = labelled_support_set(passages, 30 if ctx.quick else 200, seed=0)
    sims, overlaps = score_cases(cases, emb)
    th = choose_thresholds(sims, overlaps, [c[2] for c in cases])
    checker = GroundednessChecker(emb, sim_threshold=th[0], overlap_threshold=th[1])
    model, tok = load_tiny("target")
    model.to(ctx.device)
    train, test = split_qa(items, seed=0)
    t0 = time.perf_counter()
    lora, losses = train_lora_qa(model, tok, train, steps=12 if ctx.quick else 200,
                                 batch_size=4 if ctx.quick else 8)
    train_s = time.perf_counter() - t0
    test = test[:4] if ctx.quick else test
    new = 24 if ctx.quick else 32
    rag = RagPipeline(retriever, model, tok, k=3, checker=checker, max_new_tokens=new)
    rows, _ = compare_systems(test, base=model, lora=lora, rag=rag, section_of=[p.section for p in passages],
                              checker=checker, max_new_tokens=new)
    for row in rows:
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "system"}
        if row["system"] == "lora":
            extra.update(train_seconds=round(train_s, 1), loss_first=round(losses[0], 3),
                         loss_last=round(statistics.fmean(losses[-5:]), 3))
        extra["thresholds"] = f"sim>={th[0]}, overlap>={th[1]}"
        yield Result("rag", f"answers {row['system']}", {"task": "rag", "impl": row["system"],
                                                          "questions": len(test)}, str(ctx.device), "float32",
                     row["token_f1"], 0.0, unit="token F1", extra=extra)


def run(ctx: Context) -> Iterator[Result]:
    from mlcore.rag import Embedder, Retriever, build_qa_set, chunk_sections, pydoc_sections

    emb = Embedder(device=ctx.device)
    sections = pydoc_sections(limit=20, max_chars=600) if ctx.quick else pydoc_sections()
    passages = chunk_sections(sections, emb.tokenizer, size=128, overlap=32)
    texts = [p.text for p in passages]
    items = build_qa_set(sections)
    yield from _embed(ctx, emb, [it.answer for it in items][:16] if ctx.quick else texts[:512])
    yield from _index(ctx)
    yield from _bm25(ctx, texts)
    retriever = Retriever.build(texts, emb)
    yield from _retrieval(retriever, items, [p.section for p in passages])
    yield from _rag(ctx, emb, retriever, sections, passages, items)
