"""The mlcore benchmark suite: one module per topic, run with ``python -m benchmarks``."""
