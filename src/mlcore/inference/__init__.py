"""KV-cached inference: caches, sampling, ``generate`` and speculative decoding.

    from mlcore.inference import generate, DynamicCache
    out = generate(model, input_ids, max_new_tokens=32)        # greedy, StaticCache, (B, T + 32)
    out = generate(model, input_ids, max_new_tokens=32, compile=True)   # decode steps as one compiled graph
"""

from mlcore.inference.cache_factory import make_cache
from mlcore.inference.compiled import CompiledDecoder
from mlcore.inference.dynamic_cache import DynamicCache
from mlcore.inference.generate import generate, generate_no_cache
from mlcore.inference.paged_cache import PagedCache, PagedSequence
from mlcore.inference.quantized_cache import QuantizedCache
from mlcore.inference.sliding_cache import SlidingWindowCache
from mlcore.inference.speculative import SpeculativeStats, speculative_generate
from mlcore.inference.static_cache import StaticCache

__all__ = [
    "generate", "generate_no_cache", "make_cache", "speculative_generate", "SpeculativeStats",
    "CompiledDecoder", "DynamicCache", "StaticCache", "PagedCache", "PagedSequence", "SlidingWindowCache",
    "QuantizedCache",
]
