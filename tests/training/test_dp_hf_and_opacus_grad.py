"""DP-SGD with a transformers model and an attention_mask (vmap cannot trace transformers' own 2D->4D mask
code, so mlcore passes the 4D mask); and the Opacus twin's final ``p.grad`` equal to mlcore's DPGradient."""

import math
import warnings

import pytest
import torch

from mlcore.training import TrainConfig, train
from mlcore.training.dp import DPGradient, per_sample_grads, sequence_loss
from mlcore.training.loss import causal_lm_labels

transformers = pytest.importorskip("transformers")


def tiny_llama(impl: str):
    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    cfg._attn_implementation = impl
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(cfg).double().train()


def masked_batch():
    ids = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask, "labels": causal_lm_labels(ids, attention_mask=mask)}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_per_sample_grads_with_mask_match_naive_loop(impl):
    model, data = tiny_llama(impl), masked_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no batching rule for sdpa": a fallback, still exact
        ours, _ = per_sample_grads(model, data, sequence_loss)
    params = dict(model.named_parameters())
    for i in range(4):  # the definition: one ordinary backward per example, transformers' own mask handling
        row = {k: v[i:i + 1] for k, v in data.items()}
        logits = model(row["input_ids"], attention_mask=row["attention_mask"]).logits
        naive = torch.autograd.grad(sequence_loss(logits, row)[0], list(params.values()))
        for (name, _), g in zip(params.items(), naive):
            assert (ours[name][i] - g).abs().max() < 1e-10, (i, name)


def test_hf_dp_training_with_mask_runs():
    model = tiny_llama("sdpa").float()
    data = masked_batch()
    del data["labels"]
    cfg = TrainConfig(max_steps=2, batch_size=2, dp=True, dp_noise_multiplier=1.0, progress=False, cpu=True,
                      mixed_precision="no")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(model, data, cfg)
    assert len(result.history) == 2


def test_flash_attention_with_mask_is_refused():
    model, data = tiny_llama("eager"), masked_batch()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation"):
        per_sample_grads(model, data, sequence_loss)


@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_opacus_twin_final_grad_equals_mlcore(sigma):
    """Opacus' DPOptimizer divides the noisy clipped sum by expected_batch_size only with loss_reduction="mean";
    the twin's p.grad (what AdamW sees) must be mlcore's, noise included when both draw from the same seed."""
    pytest.importorskip("opacus")
    from mlcore.model import Transformer, TransformerConfig
    from mlcore.training.dp_opacus import OpacusDP

    def tiny():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return Transformer(TransformerConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, max_seq_len=16,
                                                 tie_embeddings=False)).double().train()

    ids = torch.randint(0, 40, (6, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    data = {"input_ids": ids, "attention_mask": mask, "labels": causal_lm_labels(ids, attention_mask=mask)}
    ours = DPGradient(tiny(), max_grad_norm=0.5, noise_multiplier=sigma, expected_batch_size=8)
    ours.compute([data], torch.Generator().manual_seed(123))
    twin_model = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = OpacusDP(twin_model, noise_multiplier=sigma, max_grad_norm=0.5, expected_batch_size=8, lr=0.0,
                        generator=torch.Generator().manual_seed(123))
        twin.backward(data)
        twin.optimizer.pre_step()  # clip, noise, divide by expected_batch_size: the gradient AdamW would use
    for name, p in twin_model.named_parameters():
        assert (p.grad - ours.params[name].grad).abs().max() < 1e-8, name
    twin.close()


def test_opacus_twin_takes_a_transformers_model():
    """The twin read the model output as logits: a transformers model's ModelOutput failed with 'tuple indices
    must be integers'. Its final p.grad must be mlcore's for a right-padded batch (sigma 0, clipping active)."""
    pytest.importorskip("opacus")
    from mlcore.training.dp_opacus import OpacusDP

    data = masked_batch()
    ours = DPGradient(tiny_llama("eager"), max_grad_norm=0.05, noise_multiplier=0.0, expected_batch_size=3)
    ours.compute([data], None)
    twin_model = tiny_llama("eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = OpacusDP(twin_model, noise_multiplier=0.0, max_grad_norm=0.05, expected_batch_size=3, lr=0.0)
        twin.backward(data)
        twin.optimizer.pre_step()
    for name, p in twin_model.named_parameters():
        assert (p.grad - ours.params[name].grad).abs().max() < 1e-7, name
    twin.close()


@pytest.mark.parametrize("sigma", [0.0, 1.3])
def test_opacus_twin_steps_on_an_empty_poisson_batch(sigma):
    """Poisson sampling can draw no example; mlcore's loop then steps on noise / expected_batch_size, and Opacus'
    DPOptimizer does too (its empty-batch branch). The twin ran the model on 0 rows, which the model refuses."""
    pytest.importorskip("opacus")
    from mlcore.model import Transformer, TransformerConfig
    from mlcore.training.dp_opacus import OpacusDP

    def tiny():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return Transformer(TransformerConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, max_seq_len=8))

    empty = {"input_ids": torch.zeros(0, 8, dtype=torch.long), "labels": torch.zeros(0, 8, dtype=torch.long)}
    ours = DPGradient(tiny(), max_grad_norm=0.5, noise_multiplier=sigma, expected_batch_size=4)
    ours.compute([], torch.Generator().manual_seed(7))
    twin_model = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = OpacusDP(twin_model, noise_multiplier=sigma, max_grad_norm=0.5, expected_batch_size=4, lr=0.0,
                        generator=torch.Generator().manual_seed(7))
        assert float(twin.backward(empty)) == 0.0
        twin.optimizer.pre_step()
        for name, p in twin_model.named_parameters():
            assert torch.equal(p.grad, ours.params[name].grad), name
        twin.optimizer.original_optimizer.step()
        twin.optimizer.zero_grad(set_to_none=True)
        ids = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(1))
        assert math.isfinite(twin.step({"input_ids": ids, "labels": ids}))  # a normal step still follows
    twin.close()
