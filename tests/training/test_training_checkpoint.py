"""safetensors checkpoints: exact round trip of weights, AdamW state and RNG; clear errors for bad ones."""

import json

import pytest
import torch
from safetensors import safe_open

from mlcore.training import TrainConfig, build_optimizer, load_checkpoint, save_checkpoint, train


def _trained(toy_factory, token_data, **kwargs):
    model = toy_factory(**kwargs)
    cfg = TrainConfig(max_steps=2, batch_size=4, lr=1e-2, warmup_steps=0, progress=False, cpu=True,
                      mixed_precision="no")
    opt = build_optimizer(model, cfg)
    for _ in range(2):
        ids = token_data["input_ids"][:4]
        torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, cfg


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_is_exact(toy_factory, token_data, tmp_path, tie):
    model, opt, cfg = _trained(toy_factory, token_data, tie=tie)
    rng_before = torch.get_rng_state()
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, step=2, extra={"note": "hi"})
    torch.rand(5)  # move the RNG on; loading must bring it back

    fresh = toy_factory(seed=42, tie=tie)
    fresh_opt = build_optimizer(fresh, cfg)
    meta = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert meta == {"step": 2, "extra": {"note": "hi"}}
    assert torch.equal(torch.get_rng_state(), rng_before)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    if tie:
        assert fresh.head.weight is fresh.embed.weight
        with safe_open(str(path / "model.safetensors"), "pt") as f:   # the tied matrix is stored once
            assert len(list(f.keys())) == len(model.state_dict()) - 1
    sd_a, sd_b = opt.state_dict(), fresh_opt.state_dict()
    assert sd_a["param_groups"] == sd_b["param_groups"]
    for pid, state in sd_a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sd_b["state"][pid][key]), (pid, key)
    # the same next step from both
    ids = token_data["input_ids"][4:8]
    for m, o in ((model, opt), (fresh, fresh_opt)):
        torch.nn.functional.cross_entropy(m(ids)[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1)).backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_holds_no_pickle(toy_factory, token_data, tmp_path):
    model, opt, _ = _trained(toy_factory, token_data)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, step=2)
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "training_state.safetensors"]
    with safe_open(str(path / "training_state.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["mlcore_checkpoint"])
        assert meta["step"] == 2 and len(meta["optimizer"]["param_groups"]) == 2
        assert any(k.endswith(".exp_avg_sq") for k in f.keys())


def test_corrupt_checkpoint(toy_factory, token_data, tmp_path):
    model, opt, _ = _trained(toy_factory, token_data)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, step=2)
    raw = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(raw[: len(raw) // 2])       # truncated
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path, model=toy_factory())
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)        # not safetensors at all
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(path, model=toy_factory())
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path, model=toy_factory())
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing", model=toy_factory())


def test_checkpoint_from_another_model_shape(toy_factory, token_data, tmp_path):
    model, opt, cfg = _trained(toy_factory, token_data)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, step=2)
    with pytest.raises(ValueError, match="another model shape"):
        load_checkpoint(path, model=toy_factory(dim=16))
    with pytest.raises(ValueError, match="another model shape"):
        load_checkpoint(path, model=toy_factory(vocab=40))
    with pytest.raises(ValueError, match="another model shape"):   # right model, optimizer of a different one
        load_checkpoint(path, model=toy_factory(), optimizer=build_optimizer(toy_factory(dim=16), cfg))


def test_train_refuses_a_checkpoint_of_another_shape(toy_factory, token_data, tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=4, checkpoint_every=2, out_dir=str(tmp_path), progress=False,
                      cpu=True, mixed_precision="no")
    train(toy_factory(), token_data, cfg)
    with pytest.raises(ValueError, match="another model shape"):
        train(toy_factory(dim=16), token_data, cfg, resume_from="latest")


def test_checkpoint_with_damaged_metadata(toy_factory, token_data, tmp_path):
    from safetensors.torch import load_file, save_file

    model, opt, _ = _trained(toy_factory, token_data)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, step=2)
    state = load_file(str(path / "training_state.safetensors"))
    save_file(state, str(path / "training_state.safetensors"), metadata={"mlcore_checkpoint": json.dumps({"x": 1})})
    with pytest.raises(ValueError, match="corrupt"):  # valid JSON, but no step
        load_checkpoint(path, model=toy_factory(), optimizer=opt)


def test_a_transposed_view_is_not_stored_as_an_alias(tmp_path):
    """Shared tensors are stored once, but a transposed view of a square weight shares storage, offset, shape and
    dtype with it, not its strides: it is a tensor of its own (it came back un-transposed before)."""

    class Both(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.arange(9.0).reshape(3, 3))
            self.register_buffer("wt", self.w.data.t())

    saved = Both()
    save_checkpoint(tmp_path, model=saved, step=0)
    loaded = Both()
    loaded.wt = torch.zeros(3, 3)
    load_checkpoint(tmp_path, model=loaded)
    assert torch.equal(loaded.wt, saved.wt) and torch.equal(loaded.w, saved.w)
