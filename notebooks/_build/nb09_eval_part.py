"""The evaluation and drift part of notebook 09 (issue 12a): ``add_eval_cells(md, code)`` appends its cells.

The builder of ``09_evaluation_and_rag.ipynb`` calls it with its own ``md()`` / ``code()`` helpers (the shape
of ``make_07_lora_qlora.py``: each takes one cell's source). Under ``MLCORE_QUICK=1`` the cells shrink their
sizes; a reader without it gets the full ones.
"""

from __future__ import annotations

from collections.abc import Callable


def add_eval_cells(md: Callable[[str], None], code: Callable[[str], None]) -> None:
    """Append: how to evaluate a generative model, the context window, a drift alarm, the dashboard."""
    md(r"""
## Evaluating a generative model

There is no single score. A team measures four different things, each with its own tool:

| question | metric | in `mlcore.eval` |
|---|---|---|
| does the model fit language like our text? | perplexity `exp(mean NLL)` on held-out text | `perplexity` (strided window) |
| are its answers right? | exact match, token-F1 (SQuAD normalisation), token accuracy | `exact_match`, `token_f1`, `token_accuracy` |
| can we trust its confidence? | expected calibration error | `expected_calibration_error` |
| is it fast enough? | time to first token, time per output token, p50 / p95 / p99, tokens/s | `latency_summary`, `measure_generate` |

Perplexity first, on the project's tiny target model (trained on 256-token blocks of `pydoc_data.topics`) and
text it never saw. A model reads at most its context (256 tokens), so a long text is cut into windows. Disjoint
windows give each window's first tokens almost no context; a **strided** window (transformers' docs, "Perplexity
of fixed-length models") moves by `stride` tokens and scores only the new ones, each with `256 - stride` tokens
of context. The same function runs on the transformers twin of the model and must give the same number.
""")
    code(r"""
import math
import os
import time

import torch

from mlcore.eval import (DriftMonitor, cosine_shift, exact_match, expected_calibration_error, js_divergence,
                         latency_summary, measure_generate, mmd_permutation_test, output_stats, perplexity, psi,
                         token_f1)
from mlcore.eval.context_window import heldout_batch, plot_position_perplexity, position_perplexity
from mlcore.training.assets import load_tiny, tiny_heldout_text

QUICK = bool(os.environ.get("MLCORE_QUICK"))  # CI runs small; a reader gets the full size
if QUICK:  # CI shares 2 cores: threads of a ~4M-parameter model would mostly wait for each other
    torch.set_num_threads(1)
model, tok = load_tiny("target")
ids = torch.tensor(tok.encode(tiny_heldout_text()))[None, : 768 if QUICK else None]  # (1, T)
print(f"held-out text: {ids.shape[1]} tokens; context {model.config.max_seq_len}")
for stride in (256, 128, 64):
    t0 = time.perf_counter()
    ppl = perplexity(model, ids, stride=stride)
    print(f"stride {stride:3d}: perplexity {ppl:7.2f}   ({time.perf_counter() - t0:.1f} s)")
hf_twin = model.to_hf().eval()
print(f"transformers twin, stride 128: {perplexity(hf_twin, ids, stride=128):.2f}")
""")
    md(r"""
Smaller strides give more context per token, so perplexity falls, at the price of `256 / stride` times more
forward passes. Answers are scored differently: normalise (lower case, no punctuation, no articles) and compare
whole strings (exact match) or token multisets (F1), keeping the best over several gold answers.

**Calibration.** A next-token predictor is a 4096-way classifier, so its confidence can be checked like any
classifier's: bin the predictions by confidence and compare each bin's accuracy with its mean confidence. The
weighted gap is the expected calibration error (ECE; Guo et al. 2017).
""")
    code(r"""
print("EM  ", exact_match("The Bank of England", "bank of england"), "  F1", round(token_f1("Bank of England", "the Bank of France"), 3))

with torch.no_grad():
    logits = model(ids[:, :256]).float()[0, :-1]        # (255, V): position t predicts token t + 1
probs = logits.softmax(-1)
labels = ids[0, 1:256]
print(f"next-token accuracy {float((probs.argmax(-1) == labels).float().mean()):.3f}, "
      f"mean confidence {float(probs.max(-1).values.mean()):.3f}, "
      f"ECE {expected_calibration_error(probs, labels, n_bins=10):.3f}")
""")
    md(r"""
**Latency.** A service is judged on the time to the first token (TTFT: queueing + prefill), the time per
output token afterwards (TPOT: decode speed), their percentiles over many requests (p99 is what the unluckiest
user in a hundred sees), and the throughput. Here each request runs `mlcore.inference.generate` with a
streamer that stamps every token; running several at once raises throughput while each request waits longer.
""")
    code(r"""
import pandas as pd

prompts = [ids[0, i * 16:i * 16 + 16] for i in range(4 if QUICK else 32)]
rows = []
for concurrency in (1, 4):
    s = latency_summary(measure_generate(model, prompts, max_new_tokens=8 if QUICK else 32, concurrency=concurrency))
    rows.append({"concurrency": concurrency, **{k: round(s[k] * 1000, 1) for k in
                 ("ttft_p50", "ttft_p95", "ttft_p99", "tpot_p50", "tpot_p99")}, "tokens/s": round(s["tokens_per_s"])})
pd.DataFrame(rows).set_index("concurrency")  # times in ms
""")
    md(r"""
## What happens past the context window

The tiny target never saw a position beyond 255. Feed it longer text and measure perplexity at each position,
for plain RoPE and for the ways of stretching it without retraining: **linear** position interpolation,
**dynamic NTK** (the RoPE base grows with the length), **YaRN** (keep high frequencies, interpolate low ones,
temper the logits), and a different idea, **attention sinks** (StreamingLLM): keep the first 4 tokens plus a
sliding window of the last 252, so no attention offset ever exceeds what the model was trained on.
""")
    code(r"""
length, rows = (512, 1) if QUICK else (1024, 6)
batch = heldout_batch(tok, length, rows)                   # (rows, length) of held-out text
t0 = time.perf_counter()
table = position_perplexity(model, batch, bin_size=64)
print(f"{len(table)} rows in {time.perf_counter() - t0:.1f} s")
display(table.pivot(index="start", columns="method", values="perplexity").round(1))
plot_position_perplexity(table, trained_length=model.config.max_seq_len)
""")
    md(r"""
Read the plot from left to right. Inside 256 tokens plain RoPE is the model as trained; the scalings, applied
without the short fine-tuning their papers use, change the angles the model knows and cost perplexity even
there (linear most). Past 256, plain RoPE meets rotation angles it never saw and ends up the worst of the
five; dynamic NTK, YaRN and above all the attention-sink window stay closest to their in-context level, the
sink window because every query sees a bounded, familiar span (at the price of forgetting what fell out of the
window). On this small model the breakdown is gradual rather than a cliff, and the bins differ in difficulty
(compare each column with its own first rows, not the rows with each other).

## Drift: watching a deployed model degrade

A model that tested well can still fail when its traffic changes. The monitor compares a rolling window of
live traffic with a reference sample, feature by feature, with the **population stability index**
(PSI = sum (c - r) ln(c / r) over bins; below 0.1 stable, above 0.25 a large shift). The demo stream is synthetic
card-issuer traffic (our templates filled by Faker, `mlcore.finetune.intent_data`): a balanced intent mix, then
a fraud wave where half the messages report fraud, and a new product name, "Aurora card", appears.
""")
    code(r"""
from mlcore.eval.plots import stream_plot
from mlcore.eval.streams import intent_shift_stream

n = 300 if QUICK else 1000
# one stream: the first n records are the reference (last month), the next 2n the live traffic, shifted after n
records = intent_shift_stream(2 * n, n, shifted_intent="fraud_report", share=0.5, new_product="Aurora card",
                              seed=0)
reference, stream = records[:n], records[n:]
alerts = []
monitor = DriftMonitor({"intent": [r["intent"] for r in reference], "length": [r["length"] for r in reference]},
                       categorical=["intent"], window=150, min_samples=100, every=25, threshold=0.2,
                       callback=alerts.append)
for record in stream:
    monitor.observe({"intent": record["intent"], "length": record["length"]})
for e in alerts:
    print(f"{e.kind.upper()}: {e.feature} PSI {e.value:.2f} > {e.threshold} after {e.n_seen} records (shift at {n})")
stream_plot(monitor.series("intent"), threshold=0.2, alerts=[e.n_seen for e in alerts if e.feature == "intent"],
            ylabel="PSI of the intent mix", title="Intent-mix drift: the alarm fires after the fraud wave starts")
""")
    md(r"""
Counting intents needs a classifier in front of the model. Two checks need none: the **embedding drift** of
the messages themselves (here the tiny model's mean token embedding of each message: the centroid's cosine
shift, and the MMD two-sample test with a permutation p-value) and the divergence of the vocabulary (JS
divergence of token frequencies; the new product name shows up as new tokens).
""")
    code(r"""
def embed(texts):
    with torch.no_grad():
        return torch.stack([model.embed(torch.tensor(tok.encode(t))).mean(0) for t in texts])

before, after = [r["text"] for r in stream[:n]], [r["text"] for r in stream[n:]]
ref_emb = embed([r["text"] for r in reference][:150])
for name, texts in (("before the shift", before[-150:]), ("after the shift", after[-150:])):
    cur = embed(texts)
    res = mmd_permutation_test(ref_emb, cur, n_permutations=200, seed=0)
    counts = lambda ts: torch.bincount(torch.tensor([i for t in ts for i in tok.encode(t)]), minlength=4096)
    js = js_divergence(counts(r["text"] for r in reference), counts(texts), base=2)
    print(f"{name:17s} cosine shift {cosine_shift(ref_emb, cur):.4f}  MMD^2 {res.mmd2:.4f} "
          f"(p = {res.p_value:.3f})  JS(tokens) {js:.3f} bits")
""")
    md(r"""
The same monitor watches the model's **outputs**: answer length, the share of refusals and the share of
answers the output guardrail (`mlcore.privacy.scan_output`) had to redact. A jump in refusals after a prompt
change, or in guardrail hits after a data refresh, is an incident before any user reports it.
""")
    code(r"""
week1 = ["Your payment is due on the 5th."] * 8 + ["I'm sorry, I can't help with that."] * 2
week2 = ["I'm sorry, I can't help with that."] * 5 + ["Your card 4111 1111 1111 1111 is active."] * 5
for name, texts in (("week 1", week1), ("week 2", week2)):
    s = output_stats(texts)
    print(f"{name}: mean length {s.mean_length:.1f} words, refusal rate {s.refusal_rate:.0%}, "
          f"guardrail hit rate {s.guardrail_hit_rate:.0%}")
print("PSI of answer lengths:", round(psi([len(t.split()) for t in week1], [len(t.split()) for t in week2], bins=4), 2))
""")
    md(r"""
## A production dashboard

What a team running this model would put on one screen, and what each panel answers:

| panel | metric | alert when |
|---|---|---|
| speed | TTFT p50 / p95 / p99, TPOT p50 / p99, tokens/s, queue length | p99 TTFT above the service level |
| load and cost | requests/s, tokens in / out per request, GPU memory (KV cache) | cost per 1k requests rises |
| quality (offline, per release) | held-out perplexity, task EM / F1, groundedness of RAG answers, ECE | a release is worse than the last |
| quality (online) | user feedback, refusal rate, answer length, RAG citation rate | a step change |
| safety | guardrail hit rate (input and output), PII redactions, blocked prompts | any rise |
| drift | PSI of input features (intent mix, length), embedding MMD p-value / cosine shift, JS of token mix | PSI > 0.2, p < 0.01 |
| context | share of prompts near or past the context length | prompts get longer than evaluated |

Percentiles, not means: a mean hides the slow tail users feel. Drift alarms are a prompt to look (and to
re-run the offline quality suite on fresh traffic), not proof that quality fell.
""")
