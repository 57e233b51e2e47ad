"""Per-sample gradients (torch.func vmap/grad and the Linear outer product) and clipping, against Opacus'
GradSampleModule / DPOptimizer and against the naive loop of batch-size-1 backward passes."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlcore.model import Transformer, TransformerConfig
from mlcore.training.dp import (
    LinearGradSampler,
    check_per_sample_support,
    clip_and_sum,
    linear_per_sample_grads,
    per_sample_grads,
    sequence_loss,
)
from mlcore.training.dp_opacus import OpacusDP, opacus_sequence_loss
from mlcore.training.loss import causal_lm_labels

pytest.importorskip("opacus")
V, B, T = 40, 5, 9
CONFIGS = {  # Llama-style: RMSNorm, RoPE, GQA, SwiGLU, tied head; GPT-2-style: LayerNorm, GELU, biases, untied
    "llama": dict(norm="rmsnorm", n_kv_heads=1, tie_embeddings=True),
    "gpt2": dict(norm="layernorm", mlp="gelu", activation="gelu", qkv_bias=True, out_bias=True,
                 mlp_bias=True, tie_embeddings=False),
    # learned positions once checked their range with int(tensor) in every forward, which vmap cannot trace
    "gpt2-learned": dict(norm="layernorm", mlp="gelu", activation="gelu", position="learned",
                         tie_embeddings=False),
}


def tiny(kind: str) -> Transformer:
    cfg = TransformerConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=2, max_seq_len=16, **CONFIGS[kind])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Transformer(cfg).double()
    for p in model.parameters():  # move norm gains / biases off their init so their gradients are generic
        p.data += 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype)
    return model.train()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "labels": causal_lm_labels(ids, attention_mask=mask)}


def naive_grads(model: Transformer, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One backward pass per example (batch of 1): the definition of a per-sample gradient."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    for i in range(B):
        row = {k: v[i:i + 1] for k, v in data.items()}
        logits = model(row["input_ids"], attention_mask=row["attention_mask"])
        rows.append(torch.autograd.grad(sequence_loss(logits, row)[0], list(params.values())))
    return {n: torch.stack([r[j] for r in rows]) for j, n in enumerate(params)}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_vmap_grads_match_opacus_and_naive_loop(kind):
    model, data = tiny(kind), batch()
    ours, aux = per_sample_grads(model, data, sequence_loss)
    naive = naive_grads(model, data)
    if kind == "gpt2-learned":  # Opacus' functorch sampler calls LearnedEncoding itself, with its host check on
        for name in naive:
            assert (ours[name] - naive[name]).abs().max() < 1e-6, name
        assert set(ours) == set(naive) and "pos_emb.weight" in ours
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opacus = OpacusDP(model, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=B)
        opacus.backward(data)
    assert set(ours) == set(naive) and len(ours) >= 10
    for name, p in model.named_parameters():
        assert ours[name].shape == (B, *p.shape)
        assert (ours[name] - naive[name]).abs().max() < 1e-6, name
        assert (ours[name] - p.grad_sample).abs().max() < 1e-6, name
    assert aux[1, 1] == 5  # the padded row keeps 6 tokens: 5 of them are next-token targets
    opacus.close()


def test_linear_outer_product_matches_vmap():
    model, data = tiny("gpt2"), batch()
    ours, _ = per_sample_grads(model, data, sequence_loss)
    with LinearGradSampler(model) as sampler:
        logits = model(data["input_ids"], attention_mask=data["attention_mask"])
        opacus_sequence_loss(logits, data["labels"]).backward()
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert len(sampler.grads) == 2 * len(linear) - 1  # weights and biases; lm_head has no bias
    for name, g in sampler.grads.items():
        assert (g - ours[name]).abs().max() < 1e-6, name  # norms compute in float32 inside


def test_linear_formula_on_explicit_example():
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    layer = nn.Linear(5, 2).double()
    w, b = linear_per_sample_grads(x, torch.ones(3, 4, 2, dtype=torch.float64), bias=True)
    for i in range(3):  # d/dW of sum(layer(x_i)) = ones^T x_i
        gw, gb = torch.autograd.grad(layer(x[i]).sum(), [layer.weight, layer.bias])
        assert torch.allclose(w[i], gw) and torch.allclose(b[i], gb)
    with pytest.raises(ValueError, match="activations"):
        linear_per_sample_grads(x, torch.ones(3, 5, 2))


def test_clipped_sum_matches_opacus():
    model, data = tiny("llama"), batch()
    grads, _ = per_sample_grads(model, data, sequence_loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opacus = OpacusDP(model, noise_multiplier=0.0, max_grad_norm=0.5, expected_batch_size=B)
        opacus.backward(data)
        opacus.optimizer.clip_and_accumulate()
    summed, norms = clip_and_sum(grads, 0.5)
    assert 0 < int((norms > 0.5).sum()) < B or (norms > 0.5).all()  # clipping is active
    for name, p in model.named_parameters():
        assert (summed[name] - p.summed_grad).abs().max() < 1e-6, name
    flat = torch.cat([s.flatten() for s in summed.values()])
    assert flat.norm() <= 0.5 * B + 1e-9  # each clipped example contributes at most C
    opacus.close()


def test_lora_only_adapters_get_per_sample_grads():
    from mlcore.finetune import LoraConfig, apply_lora

    model = apply_lora(tiny("llama"), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                       generator=torch.Generator().manual_seed(0), verbose=False)
    for module in model.modules():  # B starts at zero; move it so A's gradient is not zero too
        if hasattr(module, "lora_B"):
            module.lora_B.weight.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    data = batch()
    ours, _ = per_sample_grads(model, data, sequence_loss)
    assert set(ours) == {n for n, p in model.named_parameters() if p.requires_grad} and len(ours) == 8
    naive = naive_grads(model, data)
    for name in ours:
        assert (ours[name] - naive[name]).abs().max() < 1e-6


def test_batchnorm_is_refused_by_name():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"1 \(BatchNorm1d\)"):
        check_per_sample_support(model)
    with pytest.raises(ValueError, match="BatchNorm"):
        LinearGradSampler(model)


def test_clip_bad_norm():
    with pytest.raises(ValueError, match="max_grad_norm"):
        clip_and_sum({"w": torch.ones(2, 3)}, 0.0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        clip_and_sum({"w": torch.ones(2, 3)}, -1.0)


def test_float32_model_agrees_too():
    model = tiny("llama").float()
    data = batch()
    ours, _ = per_sample_grads(model, data, sequence_loss)
    naive = naive_grads(model, data)
    assert max(float((ours[n] - naive[n]).abs().max()) for n in ours) < 1e-5
    assert F.cosine_similarity(ours["embed.weight"].flatten(), naive["embed.weight"].flatten(), dim=0) > 0.999999


@pytest.mark.parametrize("key, value, message", [
    ("input_ids", -1, r"input_ids must lie in \[0, vocab_size=40\)"),   # was IndexError deep inside vmap
    ("input_ids", V, r"input_ids must lie in \[0, vocab_size=40\)"),
    ("labels", -1, "labels must lie in"),                               # was read as token 0: a wrong gradient
    ("labels", V + 3, "labels must lie in"),                            # was a RuntimeError from gather
    ("attention_mask", 2, "attention_mask must hold only 0"),           # was used as is: a wrong gradient
])
def test_per_sample_grads_check_values_vmap_cannot(key, value, message):
    """The model's own value checks cannot run under vmap (validate=False), so the batch is checked outside."""
    data = batch()
    data[key] = data[key].clone()
    data[key][2, 3] = value
    with pytest.raises(ValueError, match=message):
        per_sample_grads(tiny("llama"), data, sequence_loss)


def test_dp_loop_refuses_a_non_binary_mask():
    from mlcore.training import TrainConfig, train

    ids = torch.randint(0, V, (8, 6), generator=torch.Generator().manual_seed(0))
    data = {"input_ids": ids, "attention_mask": torch.full((8, 6), 0.5)}
    with pytest.raises(ValueError, match="attention_mask"):
        train(tiny("llama").float(), data, TrainConfig(max_steps=1, batch_size=8, dp=True, dp_noise_multiplier=1.0,
                                                      dp_poisson=False, progress=False, cpu=True))


def test_untraceable_forward_is_a_clear_error():
    """A forward that reads a tensor value on the host (here ``int(t)``) cannot be traced by vmap: the
    RuntimeError from deep inside torch.func becomes a ValueError that says why."""

    class HostRead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(V, V)

        def forward(self, input_ids, attention_mask=None):
            return self.emb(input_ids) * int(input_ids.max())  # a host read

    with pytest.raises(ValueError, match="reads a tensor value on the host"):
        per_sample_grads(HostRead(), batch(), sequence_loss)
