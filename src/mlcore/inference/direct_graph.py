"""Calling a compiled decode step's graph directly, without dynamo's per-call entry.

Every call of a ``torch.compile``d function enters dynamo first: it finds the frame's cache entry, checks its
guards (the decode loop skips those after the first step, see ``compile_options.GUARDS_ONCE``), gathers the graph's
inputs by walking the attribute paths the trace read (an 8-layer model's ~75 weights and 17 cache buffers),
and only then calls the graph inductor compiled. For a small model that entry is a large share of a step:
measured on the 27M Llama's bfloat16 batch-1 CPU step (one thread), 4.9 ms through dynamo against 4.0 ms
calling the same graph directly.

Between two steps of one generation the graph's inputs are the same tensor objects except the new token and
the positions (the model's weights, the cache's buffers and its column tensor do not change identity). So:

    step 1 after start():  through dynamo, every guard checked; :class:`GraphCapture` (the torch.compile
                           backend) keeps the graph that ran and the inputs dynamo passed it
    later steps:           :class:`DirectCall` calls that graph with those inputs, the token and positions
                           swapped in: no frame entry, no input gathering

A plan is made only when every input is one of the tensors the caller names as persistent (weights, buffers,
cache tensors) or the token / positions themselves, and the graph has a single output; otherwise the step
keeps going through dynamo. The graph runs exactly what dynamo would have run: the same compiled callable
(inductor's kernels and AOT autograd's wrapper, which also applies the cache's in-place writes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["GraphCapture", "DirectCall"]


class DirectCall:
    """One compiled graph and its inputs; ``call(token, positions)`` runs it with those two swapped in.

    Valid while the persistent inputs are the objects the step would read (the caller makes a new plan after
    every ``start()``) and under the grad / inference mode the graph was traced in (the caller checks it)."""

    __slots__ = ("graph", "inputs", "token_slots", "position_slots")

    def __init__(self, graph: Callable[..., Any], inputs: list[Any], token_slots: list[int],
                 position_slots: list[int]) -> None:
        self.graph, self.inputs = graph, inputs
        self.token_slots, self.position_slots = token_slots, position_slots

    def call(self, token: Tensor, positions: Tensor) -> Tensor:
        args = self.inputs  # our own list: the graph receives the values unpacked
        for i in self.token_slots:
            args[i] = token
        for i in self.position_slots:
            args[i] = positions
        return self.graph(*args)[0]


class GraphCapture(torch._TorchCompileInductorWrapper):
    """A ``torch.compile`` backend: inductor as ``torch.compile(mode=mode)`` runs it (the same class, which
    torch >= 2.0 uses for ``backend="inductor"``), keeping the latest (graph, inputs) dynamo called."""

    def __init__(self, mode: str) -> None:
        super().__init__(mode, None, False)
        self.latest: tuple[Callable[..., Any], tuple[Any, ...], int] | None = None

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable[..., Any]:
        compiled = super().__call__(gm, example_inputs, **kwargs)
        outputs = _output_count(gm)

        def run(*args: Any) -> Any:
            self.latest = (compiled, args, outputs)
            return compiled(*args)

        return run

    def __eq__(self, other: object) -> bool:  # one capture per decoder: never shared through dynamo's caches
        return self is other

    __hash__ = object.__hash__

    def plan(self, token: Tensor, positions: Tensor, persistent: Iterable[Tensor]) -> DirectCall | None:
        """A :class:`DirectCall` for the latest graph call, made right after a step with this ``token`` and
        these ``positions``; None when an input is neither of them nor in ``persistent``."""
        if self.latest is None or token is positions:
            return None
        graph, args, outputs = self.latest
        if outputs != 1:
            return None
        keep = {id(t) for t in persistent}
        token_slots, position_slots = [], []
        for i, a in enumerate(args):
            if a is token:
                token_slots.append(i)
            elif a is positions:
                position_slots.append(i)
            elif not isinstance(a, Tensor) or id(a) not in keep:
                return None
        return DirectCall(graph, list(args), token_slots, position_slots)


def _output_count(gm: torch.fx.GraphModule) -> int:
    """Values the traced graph returns (dynamo's output node holds one tuple)."""
    for node in gm.graph.nodes:
        if node.op == "output":
            out = node.args[0]
            return len(out) if isinstance(out, (tuple, list)) else 1
    return 0
