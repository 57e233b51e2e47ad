"""DP-SGD in the training loop: noise statistics, virtual batches, Poisson sampling, epsilon in the log,
DP-LoRA, bad input, and no global RNG side effects."""

import math

import pytest
import torch

from mlcore.model import Transformer, TransformerConfig
from mlcore.training import TrainConfig, train
from mlcore.training.dp import DPGradient, epsilon, poisson_sample, sequence_loss
from mlcore.training.loss import causal_lm_labels

V = 32


def tiny(seed: int = 0) -> Transformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Transformer(TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_seq_len=16))


def data(n: int = 40, t: int = 10) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(1))}


def labelled(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**d, "labels": causal_lm_labels(d["input_ids"])}


def test_noise_mean_and_variance_match_sigma_c():
    """g_tilde * E - clipped_sum must be N(0, (sigma C)^2) per coordinate. With n = 12 steps x ~3.6k coordinates
    = ~43k draws: the z-test on the mean at |z| < 4 (false alarm 6e-5) detects a bias of 0.04 sigma C with power
    0.9996 (shift 8.3 sd); the variance ratio, whose sd is sqrt(2/n) = 0.0068, is held to +-0.03 (4.4 sd): a std
    off by 3% (ratio 1.061, 4.5 sd beyond the bound) is caught with power > 0.9999, noise sigma instead of
    sigma*C (C = 0.3) always."""
    model, batch = tiny(), labelled(data(8))
    sigma, c, expected = 1.7, 0.3, 8.0
    dp = DPGradient(model, max_grad_norm=c, noise_multiplier=sigma, expected_batch_size=expected)
    dp0 = DPGradient(model, max_grad_norm=c, noise_multiplier=0.0, expected_batch_size=expected)
    dp0.compute([batch], None)
    clean = torch.cat([p.grad.flatten() for p in dp0.params.values()]) * expected
    draws = []
    for step in range(12):
        dp.compute([batch], torch.Generator().manual_seed(100 + step))
        draws.append(torch.cat([p.grad.flatten() for p in dp.params.values()]) * expected - clean)
    noise = torch.cat(draws).double()
    n, std = noise.numel(), sigma * c
    assert n > 40_000
    z = float(noise.mean()) / (std / math.sqrt(n))
    assert abs(z) < 4, z
    ratio = float(noise.var()) / std**2
    assert abs(ratio - 1) < 0.03, ratio


def test_virtual_batches_add_noise_once():
    """Cutting the logical batch into chunks changes nothing: clipped sums add up and the noise is drawn once."""
    model, batch = tiny(), labelled(data(12))
    dp = DPGradient(model, max_grad_norm=0.5, noise_multiplier=1.0, expected_batch_size=12)
    dp.compute([batch], torch.Generator().manual_seed(5))
    whole = [p.grad.clone() for p in dp.params.values()]
    chunks = [{k: v[i:i + 5] for k, v in batch.items()} for i in range(0, 12, 5)]
    stats = dp.compute(chunks, torch.Generator().manual_seed(5))
    assert stats["examples"] == 12
    for a, p in zip(whole, dp.params.values()):
        assert torch.allclose(a, p.grad, atol=1e-6, rtol=0)


def test_poisson_sampling_rate():
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([poisson_sample(1000, 0.05, g).numel() for _ in range(200)], dtype=torch.float64)
    # Binomial(1000, 0.05): mean 50, sd 6.9; the mean of 200 draws has sd 0.49
    assert abs(float(sizes.mean()) - 50) < 2.5 and 4 < float(sizes.std()) < 10
    assert poisson_sample(10, 1.0, g).tolist() == list(range(10))


def test_dp_training_reports_epsilon_and_is_deterministic():
    config = TrainConfig(max_steps=3, batch_size=4, grad_accum_steps=2, lr=1e-2, dp=True, dp_noise_multiplier=1.1,
                         dp_max_grad_norm=1.0, progress=False, cpu=True, mixed_precision="no", log_every=1)
    state = torch.get_rng_state()
    a, b = tiny(), tiny()
    ra, rb = train(a, data(), config), train(b, data(), config)
    assert torch.equal(torch.get_rng_state(), state)  # no global RNG side effect
    q = 8 / 40
    for h in ra.history:
        assert h["epsilon"] == pytest.approx(epsilon(1.1, q, h["step"], 1e-5), rel=1e-9)
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]
    assert all(torch.equal(p, r) for p, r in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, r) for p, r in zip(a.parameters(), tiny().parameters()))


def test_virtual_batch_in_loop_equals_one_big_batch():
    """Same q (8/40) and seed: physical batch 8 x 1, or 2 x 4 micro-batches, give the same training run."""
    common = dict(max_steps=2, lr=1e-2, dp=True, dp_noise_multiplier=1.0, progress=False, cpu=True,
                  mixed_precision="no")
    a, b = tiny(), tiny()
    train(a, data(), TrainConfig(batch_size=8, grad_accum_steps=1, **common))
    train(b, data(), TrainConfig(batch_size=2, grad_accum_steps=4, **common))
    for p, r in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, r, atol=1e-5)


def test_target_epsilon_and_fixed_size_batches():
    config = TrainConfig(max_steps=4, batch_size=5, lr=1e-3, dp=True, dp_target_epsilon=2.0, dp_poisson=False,
                         progress=False, cpu=True, mixed_precision="no")
    result = train(tiny(), data(), config)
    assert result.history[-1]["epsilon"] <= 2.0 and result.history[-1]["epsilon"] > 1.99
    assert all(h["examples"] == 5 for h in result.history)


def test_dp_lora_trains_only_adapters():
    from mlcore.finetune import LoraConfig, apply_lora

    model = apply_lora(tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                       generator=torch.Generator().manual_seed(0), verbose=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, data(), TrainConfig(max_steps=2, batch_size=8, lr=1e-2, dp=True, dp_noise_multiplier=1.0,
                                     progress=False, cpu=True, mixed_precision="no"))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n  # adapters moved, the base did not


def test_batchnorm_model_refused_in_loop():
    class WithBN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.bn, self.head = torch.nn.Embedding(V, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, V)

        def forward(self, ids, attention_mask=None):
            return self.head(self.bn(self.emb(ids).transpose(1, 2)).transpose(1, 2))

    with pytest.raises(ValueError, match=r"bn \(BatchNorm1d\)"):
        train(WithBN(), data(), TrainConfig(max_steps=1, batch_size=4, dp=True, dp_noise_multiplier=1.0,
                                            progress=False, cpu=True))


@pytest.mark.parametrize("kwargs,match", [
    (dict(dp_delta=0.0), "dp_delta"), (dict(dp_delta=1.0), "dp_delta"), (dict(dp_max_grad_norm=0.0), "dp_max_grad_norm"),
    (dict(dp_max_grad_norm=-1.0), "dp_max_grad_norm"), (dict(dp_noise_multiplier=None), "exactly one"),
    (dict(dp_target_epsilon=1.0), "exactly one"), (dict(mixed_precision="fp16"), "fp16"),
])
def test_config_bad_input(kwargs, match):
    args = dict(dp=True, dp_noise_multiplier=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        TrainConfig(**args)


def test_unreachable_epsilon_and_oversized_batch_in_loop():
    with pytest.raises(ValueError, match="unreachable"):
        train(tiny(), data(), TrainConfig(max_steps=2, batch_size=4, dp=True, dp_target_epsilon=0.01, progress=False,
                                          cpu=True))
    with pytest.raises(ValueError, match="sample rate"):
        train(tiny(), data(), TrainConfig(max_steps=2, batch_size=50, dp=True, dp_noise_multiplier=1.0,
                                          progress=False, cpu=True))


def test_sequence_loss_is_per_example_mean():
    d = labelled(data(1))
    logits = torch.randn(1, 10, V, generator=torch.Generator().manual_seed(0))
    loss, aux = sequence_loss(logits, d)
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], d["input_ids"][0, 1:])
    assert torch.allclose(loss, ref) and aux[1] == 9


def test_resume_continues_the_accountant_and_the_run(tmp_path):
    config = TrainConfig(max_steps=4, batch_size=4, grad_accum_steps=2, lr=1e-2, dp=True, dp_noise_multiplier=1.0,
                         progress=False, cpu=True, mixed_precision="no", out_dir=str(tmp_path), checkpoint_every=2)
    a, b = tiny(), tiny()
    full = train(a, data(), config)
    resumed = train(b, data(), config, resume_from=tmp_path / "checkpoints" / "step_000002")
    assert [h["epsilon"] for h in resumed.history] == [h["epsilon"] for h in full.history]
    assert resumed.history[-1]["epsilon"] == pytest.approx(epsilon(1.0, 8 / 40, 4, 1e-5), rel=1e-12)
    assert all(torch.allclose(p, r, atol=1e-6) for p, r in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("kwargs, name", [
    (dict(noise_multiplier=float("nan")), "noise_multiplier"),   # NaN > 0 is False: no noise was drawn at all
    (dict(noise_multiplier=float("inf")), "noise_multiplier"),   # an inf gradient
    (dict(noise_multiplier="1.0"), "noise_multiplier"),          # TypeError from '<'
    (dict(expected_batch_size=float("inf")), "expected_batch_size"),  # a zero gradient
    (dict(max_grad_norm=float("inf")), "max_grad_norm"),         # no clipping: no sensitivity bound
])
def test_dp_gradient_refuses_non_finite_settings(kwargs, name):
    args = dict(max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=4.0) | kwargs
    with pytest.raises(ValueError, match=name):
        DPGradient(tiny(), **args)


def test_noise_and_sampling_helpers_refuse_bad_values():
    from mlcore.training.dp import add_noise

    with pytest.raises(ValueError, match="noise_std"):  # was a silent zero noise
        add_noise({"w": torch.zeros(3)}, float("nan"), None)
    for n in (-1, 2.5):  # were errors from inside torch.rand
        with pytest.raises(ValueError, match="num_examples"):
            poisson_sample(n, 0.5, torch.Generator())
