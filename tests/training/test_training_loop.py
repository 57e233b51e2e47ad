"""The training loop against plain PyTorch: one step equals a hand-written AdamW step, accumulation equals
one big batch, a fixed batch can be memorized, and a resumed run continues with the uninterrupted losses."""

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup
from transformers.loss.loss_utils import ForCausalLMLoss

from mlcore.training import TrainConfig, batch_indices, evaluate, train

FAST = dict(progress=False, cpu=True, mixed_precision="no")


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_steps_match_plain_pytorch_adamw(toy_factory, token_data):
    cfg = TrainConfig(max_steps=3, batch_size=6, lr=3e-3, warmup_steps=1, weight_decay=0.1, grad_clip=0.5,
                      seed=5, **FAST)
    ours = toy_factory(seed=3)
    train(ours, token_data, cfg)

    ref = toy_factory(seed=3)
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.95), eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=1, num_training_steps=3)
    for step in range(3):
        ids = token_data["input_ids"][batch_indices(24, 6, step, seed=5)]
        loss = ForCausalLMLoss(ref(ids), ids, vocab_size=32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt.step()
        sched.step()
        opt.zero_grad()
    for name, value in _params(ref).items():
        torch.testing.assert_close(dict(ours.named_parameters())[name].detach(), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padded", [False, True])
def test_grad_accumulation_equals_one_big_batch(toy_factory, token_data, padded):
    data = dict(token_data)
    if padded:  # rows with different numbers of real tokens: micro-batches hold different target counts
        lengths = torch.arange(24) % 9 + 3
        data["attention_mask"] = (torch.arange(12)[None, :] < lengths[:, None]).long()
    big, small = toy_factory(seed=1), toy_factory(seed=1)
    common = dict(max_steps=3, lr=1e-2, warmup_steps=0, seed=2, **FAST)
    r_big = train(big, data, TrainConfig(batch_size=8, grad_accum_steps=1, **common))
    r_small = train(small, data, TrainConfig(batch_size=2, grad_accum_steps=4, **common))
    for (name, a), b in zip(big.named_parameters(), small.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    for h_big, h_small in zip(r_big.history, r_small.history):
        assert h_small["loss"] == pytest.approx(h_big["loss"], rel=1e-5)


def test_overfits_a_fixed_batch(toy_factory):
    g = torch.Generator().manual_seed(7)
    data = {"input_ids": torch.randint(0, 32, (4, 16), generator=g)}
    model = toy_factory(seed=0, dim=64)
    result = train(model, data, TrainConfig(max_steps=150, batch_size=4, lr=2e-2, warmup_steps=5,
                                            weight_decay=0.0, **FAST))
    assert result.history[0]["loss"] > 3.0          # ~ ln(32) at the start
    final = evaluate(model, data, batch_size=4)
    assert final["loss"] < 0.05, final
    assert final["perplexity"] == pytest.approx(math.exp(final["loss"]))


def test_history_records_the_transformers_schedule(toy_factory, token_data):
    cfg = TrainConfig(max_steps=8, batch_size=4, lr=1e-3, warmup_steps=3, **FAST)
    result = train(toy_factory(), token_data, cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=8)
    for h in result.history:
        assert h["lr"] == pytest.approx(sched.get_last_lr()[0], abs=1e-15)
        opt.step()
        sched.step()
    assert [h["step"] for h in result.history] == list(range(1, 9))
    assert all(h["tokens_per_s"] > 0 for h in result.history)


def test_resume_gives_the_uninterrupted_losses(toy_factory, token_data, tmp_path):
    common = dict(max_steps=6, batch_size=4, grad_accum_steps=2, lr=5e-3, warmup_steps=2, seed=4, **FAST)
    eval_data = {"input_ids": token_data["input_ids"][:8]}
    full = train(toy_factory(seed=0, dropout=0.2), token_data,
                 TrainConfig(checkpoint_every=3, out_dir=str(tmp_path / "run"), eval_every=3, **common),
                 eval_data=eval_data)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000003"
    assert ckpt.is_dir()
    resumed_model = toy_factory(seed=99, dropout=0.2)          # different init: everything comes from the checkpoint
    resumed = train(resumed_model, token_data, TrainConfig(out_dir=str(tmp_path / "resumed"), **common),
                    eval_data=eval_data, resume_from=ckpt)
    assert resumed.steps == 3
    assert [h["step"] for h in resumed.history] == list(range(1, 7))   # history carried over from the checkpoint
    for a, b in zip(full.history[3:], resumed.history[3:]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6, rel=0)
    assert resumed.final_eval["loss"] == pytest.approx(full.final_eval["loss"], abs=1e-6, rel=0)
    # "latest" finds the newest checkpoint (step 6): nothing left to run
    again = train(toy_factory(seed=5, dropout=0.2), token_data,
                  TrainConfig(out_dir=str(tmp_path / "run"), **common), resume_from="latest")
    assert again.steps == 0


def test_mlcore_transformer_trains(token_data):
    model_mod = pytest.importorskip("mlcore.model")
    config = model_mod.TransformerConfig(vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                                         max_seq_len=16)
    torch.manual_seed(0)
    model = model_mod.Transformer(config)
    result = train(model, token_data, TrainConfig(max_steps=30, batch_size=8, lr=1e-2, warmup_steps=2, **FAST))
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.3


def test_train_bad_input(toy_factory, tmp_path):
    model = toy_factory()
    cfg = TrainConfig(max_steps=1, **FAST)
    with pytest.raises(ValueError, match="input_ids"):
        train(model, {"tokens": torch.zeros(2, 4, dtype=torch.long)}, cfg)
    with pytest.raises(ValueError, match="empty"):
        train(model, {"input_ids": torch.zeros(0, 4, dtype=torch.long)}, cfg)
    with pytest.raises(ValueError, match="attention_mask"):
        train(model, {"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 3)}, cfg)
    with pytest.raises(FileNotFoundError):
        train(model, {"input_ids": torch.zeros(2, 4, dtype=torch.long)}, cfg, resume_from=tmp_path / "nope")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="out_dir"):
        TrainConfig(checkpoint_every=5)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")


def test_trains_a_transformers_model_and_logs_its_own_loss(token_data):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))
    ids = token_data["input_ids"][batch_indices(24, 8, 0, seed=0)]
    with torch.no_grad():
        expected_first = float(hf(input_ids=ids, labels=ids).loss)   # transformers' own loss, before any step
    result = train(hf, token_data, TrainConfig(max_steps=20, batch_size=8, lr=1e-2, warmup_steps=0, **FAST))
    assert result.history[0]["loss"] == pytest.approx(expected_first, rel=1e-5)
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.3


def test_bf16_autocast_runs_and_is_undone_afterwards(toy_factory, token_data):
    model = toy_factory()
    forward_before = model.forward
    result = train(model, token_data, TrainConfig(max_steps=5, batch_size=8, lr=1e-2, warmup_steps=0,
                                                  progress=False, cpu=True, mixed_precision="bf16"))
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert model.forward == forward_before             # accelerate's autocast wrapper is removed
    assert next(model.parameters()).dtype == torch.float32
