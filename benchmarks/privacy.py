"""PII detection and masking: throughput on a generated log, detection quality per kind, canary exposure.

Implementations (``params["impl"]``):

- ``mlcore``: ``mlcore.privacy.detect_pii`` / ``mask_pii`` (validating recognizers, overlap resolution);
- ``presidio``: Presidio's pattern recognizers called directly, with no NLP engine and no spaCy model
  (CreditCard, UsSsn, UsItin, Iban, AbaRouting, UsBank, Ip; their spans merged with the same overlap rule).
  Presidio's e-mail recognizer is left out (it tries to download the public-suffix list) and so is its phone
  recognizer (libphonenumber, ~100x slower than the others). Without an NLP engine Presidio applies no
  context enhancement, so its scores are the bare pattern scores; every hit is kept.

Figures: detection throughput in MB/s on a synthetic log (speed-up = mlcore MB/s / presidio MB/s, > 1
means mlcore is faster), mask_pii throughput per strategy, and precision / recall / F2 per kind on two
labelled sets, reported side by side and named in every row:

- ``set=synthetic``: `evaluation.synthetic`, the corpus the recognizers were developed on (optimistic);
- ``set=heldout``: `evaluation.heldout`, values built from issuers' and registries' rules, written in the
  wild's formats, in hand-written customer messages and Faker locales the recognizers were not tuned on.

In the full preset, the optional MiniLM NER head (names, addresses) is trained on four locales and scored on
them and on held-out locales. In the full preset, canary exposure
(bits) against repetitions k for raw and mask_pii-redacted training data (plot ``privacy_exposure_vs_k``).

Goals: ``detect_pii`` at least 2x the throughput of Presidio's pattern recognizers (issue 14); recall at
least 0.99 and precision at least 0.98 on cards, SSNs and IBANs (issue 6).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from benchmarks._privacy_guards import INJECTION_TABLE, injection_results
from mlcore.bench import Context, Goal, Plot, Result, Table, time_fn
from mlcore.privacy import detect_pii, mask_pii
from mlcore.privacy.evaluation.evaluate import KindScore, evaluate
from mlcore.privacy.evaluation.heldout import heldout_records
from mlcore.privacy.evaluation.synthetic import SyntheticPii, synthetic_log
from mlcore.privacy.spans import PiiSpan, resolve_overlaps

DESCRIPTION = "PII detection/masking MB/s vs Presidio patterns; precision/recall/F2 per kind; canary exposure vs k"
PLOTS = [
    Plot(name="privacy_exposure_vs_k", x="k", y="median", series="impl", where={"task": "exposure"},
         title="canary exposure vs repetitions (Carlini et al. 2019)", ylabel="exposure (bits)"),
]
TABLES = [
    Table("Throughput", where={"task": "throughput"}, params=("bytes",)),
    Table("Detection quality per kind, synthetic (dev) set", where={"task": "quality", "set": "synthetic"},
          params=(), columns=("precision", "recall", "presidio_precision", "presidio_recall", "support")),
    Table("Detection quality per kind, held-out set", where={"task": "quality", "set": "heldout"},
          params=(), columns=("precision", "recall", "presidio_precision", "presidio_recall", "support")),
    Table("Optional NER (MiniLM head) on held-out locales (full preset)", where={"task": "ner"}, params=()),
    Table("Canary exposure (full preset)", where={"task": "exposure"}),
    INJECTION_TABLE,
]
QUALITY_GOALS = ("CARD", "SSN", "IBAN")  # recall >= 0.99 and precision >= 0.98 on these (synthetic set)
SYNTHETIC_KINDS = ("CARD", "SSN", "ITIN", "IBAN", "ABA_ROUTING", "ACCOUNT_NUMBER", "EMAIL", "PHONE", "IP_ADDRESS",
                   "DATE_OF_BIRTH", "SECRET")  # what the synthetic set labels (it does not label CVVs or expiries)

KEY = b"benchmark-key-0123456789"
NER_TRAIN_LOCALES = ("en_US", "de_DE", "fr_FR", "en_GB")
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
    n_bytes = 300_000 if ctx.quick else 8_000_000
    n_records = 800 if ctx.quick else 10_000
    log = synthetic_log(n_bytes, seed=0)
    mb = len(log.encode()) / 1e6
    presidio = presidio_detector()
    twin_time = None
    if presidio is not None:
        # a second each: Presidio's time per call varies by half between runs (GC, allocator); fewer runs hid it
        twin_time = time_fn(lambda: presidio(log), device="cpu", warmup=1, min_run_time=1.0)
    common = {"task": "throughput", "bytes": int(mb * 1e6)}
    t = time_fn(lambda: detect_pii(log), device="cpu", warmup=1, min_run_time=1.0)
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

    sets = {"synthetic": (SyntheticPii(seed=2024).records(n_records), SYNTHETIC_KINDS),
            "heldout": (heldout_records(400 if ctx.quick else 2000, split="heldout"), None)}
    for set_name, (records, kinds) in sets.items():
        t0 = time.perf_counter()
        ours = evaluate(records, lambda text, k=kinds: detect_pii(text, kinds=k))
        eval_s = time.perf_counter() - t0
        theirs = evaluate(records, presidio) if presidio is not None else {}
        for kind, s in ours.items():
            yield _quality_row(set_name, kind, s, theirs.get(kind) if kind in PRESIDIO_KINDS.values() else None,
                               len(records), eval_s)

    yield from injection_results()

    if not ctx.quick:
        yield from _ner_rows()

    if not ctx.quick:
        from mlcore.privacy.audit.canary_audit import run_audit

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


def _quality_row(set_name: str, kind: str, s: KindScore, p: KindScore | None, n_records: int,
                 eval_s: float) -> Result:
    goals = None
    if set_name == "synthetic" and kind in QUALITY_GOALS:
        goals = [Goal(">=", 0.99, f"{kind} recall", metric="recall"),
                 Goal(">=", 0.98, f"{kind} precision", metric="precision")]
    return Result(
        "privacy", f"f2[{set_name}:{kind}]", {"task": "quality", "set": set_name, "impl": "mlcore", "kind": kind},
        "cpu", None, median=s.f2, spread=0.0, unit="F2", better="higher",
        twin="presidio pattern recognizers" if p else None, twin_median=p.f2 if p else None,
        ratio=s.f2 / p.f2 if p and p.f2 > 0 else None, goal=goals,
        extra={"precision": round(s.precision, 4), "recall": round(s.recall, 4), "support": s.support,
               "fp": s.fp, "fn": s.fn, "records": n_records, "eval_seconds": round(eval_s, 2),
               **({"presidio_precision": round(p.precision, 4), "presidio_recall": round(p.recall, 4),
                   "presidio_fp": p.fp, "presidio_fn": p.fn} if p else {})},
    )


def _ner_rows() -> Iterator[Result]:
    """The optional MiniLM token-classification head: trained on four locales, scored on those and on three
    locales it never saw."""
    try:
        from mlcore.privacy.recognizers.ner import EncoderNer, ner_records

        ner = EncoderNer().fit([r for loc in NER_TRAIN_LOCALES for r in ner_records(150, seed=0, locale=loc)])
    except (ImportError, OSError):
        return
    for locale in ("en_US", "de_DE", "it_IT", "es_ES", "nl_NL"):
        scores = evaluate(ner_records(120, seed=9, locale=locale), lambda text: list(ner(text)))
        for kind in ("PERSON", "ADDRESS"):
            s = scores.get(kind, KindScore(kind))
            yield Result("privacy", f"ner[{locale}:{kind}]", {"task": "ner", "impl": "mlcore", "kind": kind,
                                                             "locale": locale},
                         "cpu", None, median=s.f2, spread=0.0, unit="F2", better="higher",
                         extra={"precision": round(s.precision, 4), "recall": round(s.recall, 4),
                                "support": s.support, "heldout_locale": locale not in NER_TRAIN_LOCALES})
