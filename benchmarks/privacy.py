"""PII detection and masking: throughput on a generated log, detection quality per kind, canary exposure.

Implementations (``params["impl"]``):

- ``mlcore``: ``mlcore.privacy.detect_pii`` / ``mask_pii`` (validating recognizers, overlap resolution);
- ``presidio``: Presidio's pattern recognizers called directly, with no NLP engine and no spaCy model
  (CreditCard, UsSsn, UsItin, Iban, AbaRouting, UsBank, Ip; their spans merged with the same overlap rule).
  Presidio's e-mail recognizer is left out (it tries to download the public-suffix list) and so is its phone
  recognizer (libphonenumber, ~100x slower than the others). Without an NLP engine Presidio applies no
  context enhancement, so its scores are the bare pattern scores; every hit is kept.

Figures: detection throughput in MB/s on a synthetic log (speed-up = mlcore MB/s / presidio MB/s, > 1
means mlcore is faster), mask_pii throughput per strategy, and precision / recall / F2 per kind on the
labelled synthetic set (unit "F2", vs twin = mlcore F2 / presidio F2). In the full preset, canary exposure
(bits) against repetitions k for raw and mask_pii-redacted training data (plot ``privacy_exposure_vs_k``).

Goals: ``detect_pii`` at least 2x the throughput of Presidio's pattern recognizers (issue 14); recall at
least 0.99 and precision at least 0.98 on cards, SSNs and IBANs (issue 6).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from mlcore.bench import Context, Goal, Plot, Result, Table, time_fn
from mlcore.privacy import detect_pii, mask_pii
from mlcore.privacy.evaluate import evaluate
from mlcore.privacy.spans import PiiSpan, resolve_overlaps
from mlcore.privacy.synthetic import SyntheticPii, synthetic_log

DESCRIPTION = "PII detection/masking MB/s vs Presidio patterns; precision/recall/F2 per kind; canary exposure vs k"
PLOTS = [
    Plot(name="privacy_exposure_vs_k", x="k", y="median", series="impl", where={"task": "exposure"},
         title="canary exposure vs repetitions (Carlini et al. 2019)", ylabel="exposure (bits)"),
]
TABLES = [
    Table("Throughput", where={"task": "throughput"}, params=("bytes",)),
    Table("Detection quality per kind (labelled synthetic set)", where={"task": "quality"}, params=(),
          columns=("precision", "recall", "presidio_precision", "presidio_recall", "support")),
    Table("Canary exposure (full preset)", where={"task": "exposure"}),
]
QUALITY_GOALS = ("CARD", "SSN", "IBAN")  # recall >= 0.99 and precision >= 0.98 on these

KEY = b"benchmark-key-0123456789"
PRESIDIO_KINDS = {"CREDIT_CARD": "CARD", "US_SSN": "SSN", "US_ITIN": "ITIN", "IBAN_CODE": "IBAN",
                  "ABA_ROUTING_NUMBER": "ABA_ROUTING", "US_BANK_NUMBER": "ACCOUNT_NUMBER", "IP_ADDRESS": "IP_ADDRESS"}


def presidio_detector():
    """A ``text -> list[PiiSpan]`` built from Presidio's pattern recognizers, or None if unavailable."""
    try:
        from presidio_analyzer.predefined_recognizers import (
            AbaRoutingRecognizer,
            CreditCardRecognizer,
            IbanRecognizer,
            IpRecognizer,
            UsBankRecognizer,
            UsItinRecognizer,
            UsSsnRecognizer,
        )
    except ImportError:
        return None
    recognizers = [CreditCardRecognizer(), UsSsnRecognizer(), UsItinRecognizer(), IbanRecognizer(),
                   AbaRoutingRecognizer(), UsBankRecognizer(), IpRecognizer()]

    def detect(text: str) -> list[PiiSpan]:
        spans = []
        for rec in recognizers:
            for r in rec.analyze(text, rec.supported_entities, None):
                kind = PRESIDIO_KINDS.get(r.entity_type)
                if kind:
                    spans.append(PiiSpan(kind, r.start, r.end, text[r.start : r.end], float(r.score)))
        return resolve_overlaps(spans)

    return detect


def run(ctx: Context) -> Iterator[Result]:
    n_bytes = 1_000_000 if ctx.quick else 8_000_000
    n_records = 1500 if ctx.quick else 10_000
    log = synthetic_log(n_bytes, seed=0)
    mb = len(log.encode()) / 1e6
    presidio = presidio_detector()
    twin_time = None
    if presidio is not None:
        twin_time = time_fn(lambda: presidio(log), device="cpu", warmup=1, min_run_time=0.3)
    common = {"task": "throughput", "bytes": int(mb * 1e6)}
    t = time_fn(lambda: detect_pii(log), device="cpu", warmup=1, min_run_time=0.5)
    yield Result.from_timing(
        "privacy", "detect_pii", {**common, "impl": "mlcore", "op": "detect"}, device="cpu", dtype=None,
        timing=t, twin="presidio pattern recognizers" if twin_time else None, twin_timing=twin_time,
        work=mb, unit="MB/s", goal=Goal(">=", 2.0, "detect_pii throughput vs Presidio's pattern recognizers"),
        extra={"seconds": t.median, "spans": len(detect_pii(log)), "kinds": 11,
               "presidio_kinds": len(PRESIDIO_KINDS)},
    )
    for strategy in ("redact", "mask", "hash", "pseudonym", "encrypt"):
        t = time_fn(lambda s=strategy: mask_pii(log, strategy=s, key=KEY), device="cpu", warmup=1, min_run_time=0.3)
        yield Result.from_timing("privacy", f"mask_pii[{strategy}]",
                                 {**common, "impl": "mlcore", "op": f"mask_{strategy}"}, device="cpu", dtype=None,
                                 timing=t, work=mb, unit="MB/s", extra={"seconds": t.median})

    records = SyntheticPii(seed=2024).records(n_records)
    t0 = time.perf_counter()
    ours = evaluate(records, detect_pii)
    eval_s = time.perf_counter() - t0
    theirs = evaluate(records, presidio) if presidio is not None else {}
    for kind, s in ours.items():
        p = theirs.get(kind) if kind in PRESIDIO_KINDS.values() else None
        yield Result(
            "privacy", f"f2[{kind}]", {"task": "quality", "impl": "mlcore", "kind": kind}, "cpu", None,
            median=s.f2, spread=0.0, unit="F2", better="higher",
            twin="presidio pattern recognizers" if p else None, twin_median=p.f2 if p else None,
            ratio=s.f2 / p.f2 if p and p.f2 > 0 else None,
            goal=[Goal(">=", 0.99, f"{kind} recall", metric="recall"),
                  Goal(">=", 0.98, f"{kind} precision", metric="precision")] if kind in QUALITY_GOALS else None,
            extra={"precision": round(s.precision, 4), "recall": round(s.recall, 4), "support": s.support,
                   "fp": s.fp, "fn": s.fn, "records": n_records, "eval_seconds": round(eval_s, 2),
                   **({"presidio_precision": round(p.precision, 4), "presidio_recall": round(p.recall, 4),
                       "presidio_fp": p.fp, "presidio_fn": p.fn} if p else {})},
        )

    if not ctx.quick:
        from mlcore.privacy.audit import run_audit

        device = "cuda" if ctx.device.type == "cuda" else "cpu"
        t0 = time.perf_counter()
        audit = run_audit((0, 1, 2, 4, 8, 16, 32), free_digits=4, n_lines=600, steps=800, lr=5e-3,
                          device=device)
        seconds = time.perf_counter() - t0
        for impl, values in (("raw", audit.exposure_raw), ("mask_pii", audit.exposure_masked)):
            for k, e in zip(audit.repetitions, values):
                yield Result("privacy", "exposure", {"task": "exposure", "impl": impl, "k": k}, device, None,
                             median=e, spread=0.0, unit="bits",
                             extra={"space_size": audit.space_size, "method": audit.method,
                                    "loss_nats_per_byte": audit.final_loss.get("raw" if impl == "raw" else "masked"),
                                    "audit_seconds": round(seconds, 1)})
