"""Prometheus metrics of one server (``prometheus-client``, text format on ``GET /metrics``).

Each app owns its own ``CollectorRegistry`` (no process-global registry), so several servers can live in one
process (tests, notebooks). Gauges read the engine when scraped; histograms are fed per request:

- ``mlcore_queue_depth``, ``mlcore_running_sequences``, ``mlcore_free_blocks``, ``mlcore_used_blocks``,
  ``mlcore_prefix_cache_hits``, ``mlcore_preemptions`` (gauges read from the engine);
- ``mlcore_time_to_first_token_seconds``, ``mlcore_time_per_output_token_seconds`` (histograms);
- ``mlcore_requests_total{endpoint,status}`` (every answer, errors included; model ids share the endpoint
  ``/v1/models/{id}``), ``mlcore_guardrail_hits_total{stage,rule}``,
  ``mlcore_completion_tokens_total``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mlcore.serve.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        for name, key, doc in (("queue_depth", "waiting", "requests waiting for admission"),
                               ("running_sequences", "running", "sequences in the running batch"),
                               ("free_blocks", "free_blocks", "KV blocks available (free + evictable cached)"),
                               ("used_blocks", "used_blocks", "KV blocks held by sequences"),
                               ("prefix_cache_hits", "prefix_hits", "prefix-cache blocks reused so far"),
                               ("preemptions", "preemptions", "sequences preempted so far")):
            Gauge(f"mlcore_{name}", doc, registry=r).set_function(lambda k=key: engine.stats()[k])
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self.ttft = Histogram("mlcore_time_to_first_token_seconds", "time to first token", registry=r,
                              buckets=buckets)
        self.tpot = Histogram("mlcore_time_per_output_token_seconds", "time per output token after the first",
                              registry=r, buckets=buckets)
        self.requests = Counter("mlcore_requests", "requests answered", ("endpoint", "status"), registry=r)
        self.guard_hits = Counter("mlcore_guardrail_hits", "guardrail rules fired", ("stage", "rule"), registry=r)
        self.tokens = Counter("mlcore_completion_tokens", "tokens generated", registry=r)

    def guard(self, stage: str, reasons: list[str]) -> None:
        for reason in reasons:
            self.guard_hits.labels(stage, reason.split(" x")[0]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
