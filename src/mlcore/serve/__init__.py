"""Serving: a continuous-batching engine over the paged KV cache, prefix caching, and an OpenAI-compatible
HTTP server with API keys, rate limits, PII guardrails, an audit log and Prometheus metrics.

    from mlcore.serve import Engine, EngineConfig, SamplingParams      # in-process engine
    python -m mlcore.serve --model tiny-target                          # the HTTP server (keys required)

FastAPI / uvicorn / prometheus-client are imported only by the server modules (``app``, ``runner``, ``metrics``).
"""

from mlcore.serve.block_manager import BlockManager, block_hashes
from mlcore.serve.engine import Engine, EngineConfig
from mlcore.serve.scheduler import SamplingParams, Scheduler, Sequence

__all__ = ["BlockManager", "Engine", "EngineConfig", "SamplingParams", "Scheduler", "Sequence", "block_hashes"]
