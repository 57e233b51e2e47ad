"""Bad arguments a new user hit in the sixth audit's walkthrough: each is refused by name, up front."""

from __future__ import annotations

import pytest
import torch

from mlcore.eval import DriftMonitor
from mlcore.inference import generate
from mlcore.model import Transformer, TransformerConfig
from mlcore.privacy import canary_exposure
from mlcore.privacy.audit.memorization import SecretSpace


def test_generate_refuses_a_module_that_is_not_a_language_model():
    with pytest.raises(ValueError, match="model must be an mlcore Transformer .* got Linear"):
        generate(torch.nn.Linear(4, 4), torch.tensor([[1, 2]]), max_new_tokens=2)


def test_drift_monitor_refuses_a_list_for_its_reference():
    with pytest.raises(ValueError, match="reference must map feature names"):
        DriftMonitor([1.0] * 100)


def test_canary_exposure_names_a_log_perplexity_that_returns_no_tensor_and_a_bad_exact_limit():
    space = SecretSpace("pin {}", "0123456789", 2)
    with pytest.raises(ValueError, match="log_perplexity must return a torch.Tensor .* got list"):
        canary_exposure(lambda texts: [0.0] * len(texts), ["12"], space, method="exact")
    with pytest.raises(ValueError, match="exact_limit must be a positive int, got 0"):
        canary_exposure(lambda texts: torch.zeros(len(texts)), ["12"], space, exact_limit=0)


def test_an_over_long_input_names_input_ids():
    model = Transformer(TransformerConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, max_seq_len=4)).eval()
    with pytest.raises(ValueError, match="input_ids: sequence length 5"):
        model(torch.zeros(1, 5, dtype=torch.long))
