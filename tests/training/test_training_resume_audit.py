"""Checkpoints and resume: a pathlib out_dir, the token count across a resume, tampered checkpoints refused
before anything is loaded, and a warning when the resumed config differs from the stored one."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlcore.training import TrainConfig, build_optimizer, load_checkpoint, save_checkpoint, train


def _cfg(out_dir, **kwargs):
    base = dict(max_steps=4, batch_size=4, checkpoint_every=2, out_dir=out_dir, progress=False, cpu=True,
                mixed_precision="no")
    return TrainConfig(**{**base, **kwargs})


def test_pathlib_out_dir_checkpoints(toy_factory, token_data, tmp_path):
    cfg = _cfg(Path(tmp_path))
    assert json.loads(json.dumps(cfg.to_dict()))["out_dir"] == str(tmp_path)
    train(toy_factory(), token_data, cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000002", "step_000004"]


def test_save_checkpoint_with_bad_extra_writes_nothing(toy_factory, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "ck", model=toy_factory(), step=1, extra={"p": Path("x")})
    assert list(tmp_path.iterdir()) == []


def test_history_tokens_continue_after_resume(toy_factory, token_data, tmp_path):
    full = train(toy_factory(), token_data, _cfg(str(tmp_path)))
    resumed = train(toy_factory(), token_data, _cfg(str(tmp_path)),
                    resume_from=tmp_path / "checkpoints" / "step_000002")
    assert [h["tokens"] for h in resumed.history] == [h["tokens"] for h in full.history] == [48, 96, 144, 192]
    assert resumed.total_tokens == full.total_tokens == 192 and resumed.tokens == 96  # tokens: this call


def _saved(toy_factory, token_data, tmp_path):
    model = toy_factory()
    opt = build_optimizer(model, _cfg(None, checkpoint_every=0))
    ids = token_data["input_ids"][:4]
    torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1)).backward()
    opt.step()
    return save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, step=1, extra={"history": []})


def _tamper(path, tensors=None, meta=None):
    file = str(path / "training_state.safetensors")
    state = load_file(file)
    from safetensors import safe_open
    with safe_open(file, "pt") as f:
        old = json.loads(f.metadata()["mlcore_checkpoint"])
    state = tensors(state) if tensors else state
    save_file(state, file, metadata={"mlcore_checkpoint": json.dumps(meta(old) if meta else old)})


def _drop_exp_avg_sq(s):
    return {k: v for k, v in s.items() if not k.endswith("exp_avg_sq")}


def _edit_group(meta, **changes):
    """The metadata with param_groups[0] changed (a value None: the key removed)."""
    group = {**meta["optimizer"]["param_groups"][0], **changes}
    group = {k: v for k, v in group.items() if v is not None}
    return {**meta, "optimizer": {**meta["optimizer"], "param_groups": [group, *meta["optimizer"]["param_groups"][1:]]}}


@pytest.mark.parametrize("tensors, meta, message", [
    (lambda s: {**s, "rng.torch": s["rng.torch"][:7]}, None, "rng.torch"),
    # damaged bytes of the right size: torch.set_rng_state raised a RuntimeError after the model was loaded
    (lambda s: {**s, "rng.torch": torch.full_like(s["rng.torch"], 255)}, None, "invalid rng.torch"),
    # damaged hyper-parameters: a TypeError / ZeroDivisionError / KeyError in optimizer.step(), model loaded
    (None, lambda m: _edit_group(m, betas="x"), "betas"),
    (None, lambda m: _edit_group(m, betas=[1, 2]), "betas"),
    (None, lambda m: _edit_group(m, weight_decay=None), "weight_decay"),
    (None, lambda m: _edit_group(m, eps=[1e-8]), "eps"),
    (None, lambda m: _edit_group(m, amsgrad="yes"), "amsgrad"),
    (lambda s: {**s, "rng.torch": s["rng.torch"].float()}, None, "rng.torch"),
    (None, lambda m: {**m, "optimizer": {"scalars": {}}}, "param_groups"),
    (None, lambda m: {**m, "optimizer": []}, "param_groups"),
    (lambda s: {**s, "optim.x.exp_avg": s["optim.0.exp_avg"].clone()}, None, "optim.x.exp_avg"),
    (_drop_exp_avg_sq, None, "exp_avg_sq"),
    (None, lambda m: {**m, "extra": []}, "extra"),
    (None, lambda m: {**m, "extra": {"history": {"a": 1}}}, "history"),
    (None, lambda m: {**m, "step": -3}, "step"),
])
def test_tampered_checkpoint_is_refused_before_loading(toy_factory, token_data, tmp_path, tensors, meta, message):
    path = _saved(toy_factory, token_data, tmp_path)
    _tamper(path, tensors, meta)
    model = toy_factory(seed=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, _cfg(None, checkpoint_every=0))
    with pytest.raises(ValueError, match=message) as err:
        load_checkpoint(path, model=model, optimizer=opt)
    assert "ck" in str(err.value)  # names the checkpoint
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded
    assert opt.state_dict()["state"] == {}


def test_missing_alias_target_is_refused(toy_factory, token_data, tmp_path):
    path = _saved(toy_factory, token_data, tmp_path)
    weights = load_file(str(path / "model.safetensors"))
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt", "aliases": '{"x": "nope"}'})
    with pytest.raises(ValueError, match="nope"):
        load_checkpoint(path, model=toy_factory())


def test_resume_with_a_different_config_warns(toy_factory, token_data, tmp_path):
    train(toy_factory(), token_data, _cfg(str(tmp_path), max_steps=2))
    with pytest.warns(UserWarning, match=r"seed.*lr|lr.*seed"):
        train(toy_factory(), token_data, _cfg(str(tmp_path), seed=3, lr=1e-3), resume_from="latest")


def test_resume_latest_without_out_dir_is_refused(toy_factory, token_data):
    with pytest.raises(ValueError, match="out_dir"):
        train(toy_factory(), token_data, _cfg(None, checkpoint_every=0), resume_from="latest")
    with pytest.raises(ValueError, match="config"):
        train(toy_factory(), token_data, {"max_steps": 1})


@pytest.mark.parametrize("step", [-1, 1.5, True])
def test_save_checkpoint_refuses_a_step_load_would_refuse(toy_factory, tmp_path, step):
    """step=-1 was written and then refused by load_checkpoint; 1.5 was stored silently as 1."""
    with pytest.raises(ValueError, match="save_checkpoint: step"):
        save_checkpoint(tmp_path / "ck", model=toy_factory(), step=step)
    assert list(tmp_path.iterdir()) == []


def test_train_names_a_bad_model_or_forward(toy_factory, token_data):
    """A function as model failed with AttributeError ('parameters'), forward=None with 'not callable' mid-run."""
    cfg = _cfg(None, checkpoint_every=0, max_steps=1)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        train(lambda ids: ids, token_data, cfg)
    with pytest.raises(ValueError, match="forward must be a callable"):
        train(toy_factory(), token_data, cfg, forward=None)


def test_latest_checkpoint_skips_names_int_cannot_read(tmp_path):
    """"step_²" passed str.isdigit and made latest_checkpoint fail in int(); like transformers'
    get_last_checkpoint (checkpoint-\\d+), only decimal step numbers count, and an unfinished .tmp folder never."""
    from transformers.trainer_utils import get_last_checkpoint

    from mlcore.training import latest_checkpoint

    names = ["2", "10", "²", "11.tmp", "x", "٣"]  # "٣" is Arabic-Indic 3: a decimal digit to both
    for name in names:
        (tmp_path / "checkpoints" / f"step_{name}").mkdir(parents=True)
        (tmp_path / "hf" / f"checkpoint-{name}").mkdir(parents=True)
    expected = Path(get_last_checkpoint(tmp_path / "hf")).name.split("-")[1]
    assert expected == "10" and latest_checkpoint(tmp_path).name.split("_")[1] == expected
