"""Direct calls of a compiled step's graph (mlcore.inference.direct_graph): the same results as going through
dynamo, and no plan when an input could change behind the plan's back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlcore.inference import generate
from mlcore.inference.compiled import decoder_for
from mlcore.inference.direct_graph import GraphCapture
from mlcore.model import Transformer, TransformerConfig


def _compiled(fn):
    capture = GraphCapture("default")
    return torch.compile(fn, backend=capture, fullgraph=True, dynamic=False), capture


@pytest.mark.slow
def test_a_plan_replays_the_graph_with_new_token_and_positions():
    w = torch.randn(4, 3)

    def f(w, token, positions):
        return (w[token.view(-1)] * positions).sum(-1)

    fn, capture = _compiled(f)
    token, positions = torch.tensor([[1]]), torch.tensor([[2.0]])
    fn(w, token, positions)
    plan = capture.plan(token, positions, persistent=[w])
    assert plan is not None and plan.token_slots and plan.position_slots
    for t, p in ((torch.tensor([[3]]), torch.tensor([[0.5]])), (torch.tensor([[0]]), torch.tensor([[-1.0]]))):
        torch.testing.assert_close(plan.call(t, p), f(w, t, p))
    w.mul_(2)  # an in-place edit of a persistent input is read by the next call
    t, p = torch.tensor([[2]]), torch.tensor([[1.0]])
    torch.testing.assert_close(plan.call(t, p), f(w, t, p))


@pytest.mark.slow
def test_no_plan_for_an_unknown_input_or_several_outputs():
    w, token, positions = torch.randn(4, 3), torch.tensor([[1]]), torch.tensor([[2.0]])
    fn, capture = _compiled(lambda w, t, p: w[t.view(-1)] * p)
    fn(w, token, positions)
    assert capture.plan(token, positions, persistent=[]) is None  # w is neither persistent nor the token
    assert capture.plan(token, token, persistent=[w]) is None  # one tensor in both roles: ambiguous
    fn2, capture2 = _compiled(lambda w, t, p: (w[t.view(-1)], p * 2))
    fn2(w, token, positions)
    assert capture2.plan(token, positions, persistent=[w]) is None


@pytest.mark.slow
def test_a_replaced_parameter_reaches_the_next_generate_call():
    """The plan is remade after every start(): a parameter object swapped between calls is the one read."""
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, max_seq_len=32)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), generate(model, ids, max_new_tokens=6))
    with torch.no_grad():
        model.lm_head.weight = nn.Parameter(torch.randn_like(model.lm_head.weight))
    assert torch.equal(generate(model, ids, max_new_tokens=6, compile=True), generate(model, ids, max_new_tokens=6))
    assert decoder_for(model, batch=1, needed=11, mode="default")._direct is not None


@pytest.mark.slow
def test_steps_under_another_grad_mode_leave_the_plan_for_dynamo():
    cfg = TransformerConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(4))
    decoder = decoder_for(model, batch=1, needed=16, mode="default")
    with torch.no_grad():
        full = model(ids)
        model(ids[:, :3], cache=decoder.start())
        first = decoder.step(ids[:, 3:4], torch.full((1, 1), 3))
    assert decoder._direct is not None  # made under no_grad
    second = decoder.step(ids[:, 4:5], torch.full((1, 1), 4))  # grad mode on: through dynamo, not the plan
    torch.testing.assert_close(torch.cat([first, second.detach()], 1), full[:, 3:5], atol=1e-4, rtol=1e-4)
