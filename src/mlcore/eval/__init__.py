"""Evaluation and monitoring: perplexity, answer metrics, calibration, latency, context-window limits, drift.

    from mlcore.eval import perplexity, token_accuracy, exact_match, token_f1, expected_calibration_error
    from mlcore.eval import latency_summary, psi, kl_divergence, js_divergence, mmd_permutation_test
    from mlcore.eval import cosine_shift, DriftMonitor
    from mlcore.eval.context_window import position_perplexity, plot_position_perplexity

One concept per file: ``perplexity.py`` (strided window, transformers docs), ``answers.py`` (SQuAD EM / F1,
token accuracy), ``calibration.py`` (ECE), ``latency.py`` (TTFT / TPOT / percentiles), ``context_window.py``
(RoPE scalings and attention sinks past the trained length), ``drift.py`` (PSI, KL, JS),
``embedding_drift.py`` (cosine shift, MMD + permutation test), ``output_drift.py`` (length, refusals,
guardrail hits), ``monitor.py`` (rolling-window alerts), ``streams.py`` (synthetic shifted streams),
``plots.py`` (matplotlib Figures).
"""

from mlcore.eval.answers import exact_match, normalize_answer, token_accuracy, token_f1
from mlcore.eval.calibration import expected_calibration_error, reliability_table
from mlcore.eval.drift import histograms, js_divergence, kl_divergence, psi
from mlcore.eval.embedding_drift import MMDResult, cosine_shift, mmd2, mmd_permutation_test
from mlcore.eval.latency import RequestTiming, latency_summary, measure_generate
from mlcore.eval.monitor import DriftEvent, DriftMonitor
from mlcore.eval.output_drift import OutputStats, is_refusal, output_drift, output_stats
from mlcore.eval.perplexity import perplexity, token_nll

__all__ = [
    "DriftEvent", "DriftMonitor", "MMDResult", "OutputStats", "RequestTiming", "cosine_shift", "exact_match",
    "expected_calibration_error", "histograms", "is_refusal", "js_divergence", "kl_divergence",
    "latency_summary", "measure_generate", "mmd2", "mmd_permutation_test", "normalize_answer", "output_drift",
    "output_stats", "perplexity", "psi", "reliability_table", "token_accuracy", "token_f1", "token_nll",
]
