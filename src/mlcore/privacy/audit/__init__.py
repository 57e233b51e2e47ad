"""Memorization audits (Carlini et al. 2019): canary exposure (`memorization`) and an end-to-end run that
plants canaries, trains mlcore's decoder and measures exposure with and without masking (`canary_audit`).

This package trains models (it imports `mlcore.model` and `mlcore.training` lazily, inside `run_audit`)."""

from mlcore.privacy.audit.canary_audit import (
    PAD,
    AuditResult,
    card_secret_format,
    card_space,
    corpus_lines,
    encode_bytes,
    greedy_bytes,
    make_log_perplexity,
    plot_audit,
    run_audit,
)

__all__ = [
    "PAD", "AuditResult", "card_secret_format", "card_space", "corpus_lines", "encode_bytes", "greedy_bytes",
    "make_log_perplexity", "plot_audit", "run_audit",
]
