"""Test-wide settings: fully offline, deterministic."""

import os

# Nothing may download weights or data while tests run.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# The tests' models are tiny: one thread avoids OpenMP's spin-waiting between two (10x slower on a busy machine).
# Set here, in the test process; library code never changes thread counts.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """CUDA-only tests carry @pytest.mark.cuda and are skipped cleanly without a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
