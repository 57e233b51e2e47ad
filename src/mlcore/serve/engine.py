"""The continuous-batching engine: one decode loop over a paged KV pool (Orca, Yu et al. 2022; vLLM, Kwon et al. 2023).

    engine = Engine(model, EngineConfig(num_blocks=256))
    seq = engine.submit(prompt_ids, SamplingParams(max_tokens=32), emit=callback)   # any thread
    engine.start()          # a background thread runs step() while there is work
    ...
    engine.shutdown()       # finishes what is in flight (drain=True) or aborts it, then stops

One :meth:`Engine.step`:

1. the :class:`~mlcore.serve.scheduler.Scheduler` picks (sequence, n new tokens) pairs: running sequences
   first, preempting the newest when blocks run out, then admits waiting requests (with prefix-cache hits);
2. a batched forward over every picked row through a :class:`~mlcore.inference.paged_batch.PagedBatch` view
   of the pool (ragged rows right-aligned so the model's index-based masks hold exactly); decode rows (one
   token each) and prefill chunks go in two forwards, since padding a decode row to a chunk's length would
   multiply its cost (vLLM flattens all tokens into one varlen batch instead; our masks come from per-row
   key indices, so rows cannot be packed into one);
3. each row that has computed all its tokens samples its next token with *its own* parameters and generator
   (greedy rows share one argmax), emits it, and finishes on a stop token, ``max_tokens`` or the model's
   length; finished rows return their blocks at once, so the next step can admit more.

Greedy outputs equal ``mlcore.inference.generate`` on the request alone: rows never see each other's keys
(the masks come from per-row key indices), and a preempted request resumes from its own tokens.

Not served: RoPE whose frequencies depend on the longest position of a forward (dynamic NTK; LongRoPE's switch to
its long factors), where the model can reach that point. In a batch the longest row would choose every row's
frequencies, a chunked or recomputed prefill rotates keys otherwise than one ``generate`` call, and a shared
prefix block was rotated for another request; outputs would differ from ``generate`` (measured: 6 of 6 random
requests on a dynamic-NTK model, 5 of 6 on LongRoPE), so :func:`check_servable` refuses the model.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

from mlcore.inference.paged_batch import PagedBatch, allocate_pool
from mlcore.inference.sampling import (
    is_greedy,
    make_generator,
    process_logits,
    sample_next,
    validate_sampling_args,
)
from mlcore.serve.block_manager import BlockManager
from mlcore.serve.scheduler import POLICIES, Emit, SamplingParams, Scheduler, Sequence


@dataclass
class EngineConfig:
    """Pool and batch sizes. ``num_blocks`` x ``block_size`` tokens of KV per layer in all."""

    num_blocks: int = 256
    block_size: int = 16
    max_running: int = 32
    max_step_tokens: int = 512
    prefix_caching: bool = True
    policy: str = "continuous"
    batch_timeout: float = 0.05
    history: int = 10_000  # steps of pool-use history kept (time, used blocks, running, waiting)

    def __post_init__(self) -> None:
        # refused here, naming the field, rather than at the first request: max_step_tokens=1.5 failed every
        # step (a 500 for every request), a NaN max_running / max_step_tokens admitted nothing (requests hung),
        # prefix_caching="no" was truthy
        for name in ("num_blocks", "block_size", "max_running", "max_step_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.history, int) or isinstance(self.history, bool) or self.history < 0:
            raise ValueError(f"history must be an int >= 0, got {self.history!r}")
        if not isinstance(self.prefix_caching, bool):
            raise ValueError(f"prefix_caching must be a bool, got {self.prefix_caching!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        t = self.batch_timeout
        if not isinstance(t, Real) or isinstance(t, bool) or not t >= 0:  # `not >=` also refuses NaN
            raise ValueError(f"batch_timeout must be a real number >= 0 (seconds), got {t!r}")


def check_servable(model: nn.Module) -> None:
    """Raise a ValueError naming why ``model`` cannot be served with outputs equal to ``generate`` (see the module
    docstring): not an mlcore ``Transformer``, or RoPE frequencies that change with a forward's longest position
    below ``max_seq_len``."""
    from mlcore.model import Transformer

    if not isinstance(model, Transformer):
        raise ValueError(f"Engine serves an mlcore Transformer, got {type(model).__name__}")
    rope, c = model.rope, model.config
    if not getattr(rope, "per_call", False):
        return
    switch = rope.per_call_limit
    if c.max_seq_len > switch:
        raise ValueError(
            f"Engine cannot serve rope_type={rope.rope_type!r} past position {switch} (max_seq_len={c.max_seq_len}): "
            "its RoPE frequencies depend on the longest position in a forward, so batched rows, chunked prefill "
            "and shared prefix blocks would change a request's tokens; use mlcore.inference.generate per request, "
            f"or a model with max_seq_len <= {switch}")


class Engine:
    """Continuous batching over a paged KV cache; thread-safe ``submit`` / ``abort`` (see the module docstring)."""

    def __init__(self, model: nn.Module, config: EngineConfig | None = None, *,
                 device: torch.device | str | None = None) -> None:
        check_servable(model)
        self.model = model.eval()
        self.config = config = config or EngineConfig()
        c = model.config
        self.max_seq_len: int = c.max_seq_len
        self.vocab_size: int = c.vocab_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.cache = allocate_pool(model, config.num_blocks, config.block_size, device=self.device)
        self.blocks = BlockManager(self.cache, prefix_caching=config.prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_running=config.max_running,
                                   max_step_tokens=config.max_step_tokens, policy=config.policy,
                                   batch_timeout=config.batch_timeout)
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._inbox: deque[Sequence] = deque()
        self._aborts: set[str] = set()
        self._live: set[str] = set()  # ids of requests not finished yet (abort() finds requests by id)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._drain = True
        self.history: deque[tuple[float, int, int, int]] = deque(maxlen=config.history)
        self.steps = 0
        self.tokens_out = 0
        self.last_error: Exception | None = None

    # --- requests (any thread) -------------------------------------------------------------------------

    def submit(self, prompt: list[int], params: SamplingParams | None = None, *, emit: Emit | None = None,
               request_id: str | None = None) -> Sequence:
        """Queue a request; ``emit(token, None)`` is called per token and ``emit(None, reason)`` at the end (an
        ``emit`` that raises ends its own request with reason "error"). ``request_id`` must not name a request
        that has not finished (ValueError)."""
        params = params if params is not None else SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        stops = params.stop_token_ids
        # checked here: a bad value (None, a bare int or str) raised inside step() and failed the whole batch
        if (not isinstance(stops, (list, tuple, set, frozenset))
                or not all(isinstance(t, Integral) and not isinstance(t, bool) for t in stops)):
            raise TypeError(f"stop_token_ids must be a tuple (or list, set) of int token ids, got {stops!r}")
        if not isinstance(prompt, (list, tuple)):
            raise TypeError(f"prompt must be a list of int token ids, got {type(prompt).__name__}")
        if not prompt or not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in prompt):
            raise ValueError(f"prompt must be a non-empty list of token ids in [0, {self.vocab_size}), got "
                             f"{len(prompt)} ids")
        if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {params.max_tokens!r}")
        validate_sampling_args(params.temperature, params.top_k, params.top_p)
        if len(prompt) >= self.max_seq_len:
            raise ValueError(f"prompt has {len(prompt)} tokens; this model's length is {self.max_seq_len}, so "
                             f"prompts may hold at most {self.max_seq_len - 1}")
        total = min(len(prompt) + params.max_tokens, self.max_seq_len)
        if -(-total // self.config.block_size) > self.config.num_blocks:
            raise ValueError(f"a request of {total} tokens needs more blocks than the pool has "
                             f"({self.config.num_blocks} of {self.config.block_size})")
        seq = Sequence(request_id or f"req-{next(self._ids)}", list(prompt), params, emit)
        if not is_greedy(params.temperature):
            seq.generator = make_generator(params.seed, self.device)
        elif params.seed is not None:
            make_generator(params.seed)  # a bad seed is named even when greedy never draws, as in generate()
        with self._lock:
            if self._stop:
                raise RuntimeError("the engine is shutting down and takes no new requests")
            if seq.request_id in self._live:  # abort(id) would stop both requests
                raise ValueError(f"request_id {seq.request_id!r} is already in use by a request not finished yet")
            self._live.add(seq.request_id)
            self._inbox.append(seq)
            self._lock.notify()
        return seq

    def abort(self, request_id: str) -> None:
        """Stop a request (a client went away, a stop string matched): it finishes with reason "abort"."""
        with self._lock:
            self._aborts.add(request_id)
            self._lock.notify()

    # --- the loop --------------------------------------------------------------------------------------

    def _take_inbox(self) -> None:
        with self._lock:
            while self._inbox:
                self.scheduler.waiting.append(self._inbox.popleft())
            aborts, self._aborts = self._aborts, set()
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            if seq.request_id in aborts:
                self._finish(seq, "abort")

    def _emit(self, seq: Sequence, token: int | None, reason: str | None) -> bool:
        """Call ``seq``'s callback; False if it raised. A caller's callback that fails must cost only its own
        request: raised inside step() it failed every request in the batch, and raised again by the error
        handler it killed the engine thread (every later request hung)."""
        if seq.emit is None:
            return True
        try:
            seq.emit(token, reason)
        except Exception as err:
            self.last_error = err
            return False
        return True

    def _finish(self, seq: Sequence, reason: str) -> None:
        self.scheduler.retire(seq)
        seq.finish_reason, seq.finish_time = reason, time.perf_counter()
        with self._lock:
            self._live.discard(seq.request_id)
        self._emit(seq, None, reason)

    @torch.no_grad()
    def step(self) -> int:
        """One iteration: schedule, one batched forward, sample, emit, retire. Returns the rows run."""
        self._take_inbox()
        plan = self.scheduler.schedule()
        self.history.append((time.perf_counter(), self.blocks.used, len(self.scheduler.running),
                             len(self.scheduler.waiting)))
        if not plan:
            return 0
        # Decode rows (1 token) and prefill chunks run as two forwards: padded together, every decode row
        # would carry the longest chunk's length of padding through every layer.
        decode = [b for b, (_, n) in enumerate(plan) if n == 1]
        prefill = [b for b, (_, n) in enumerate(plan) if n > 1]
        parts = [(group, self._forward([plan[b] for b in group])) for group in (decode, prefill) if group]
        logits = torch.cat([lg for _, lg in parts])[torch.argsort(torch.tensor([b for g, _ in parts for b in g]))]
        for seq, n in plan:
            self.scheduler.after_step(seq, n)
        done = [b for b, (seq, _) in enumerate(plan) if seq.to_compute == 0]
        tokens = self._sample(logits, [plan[b][0] for b in done], done)
        now = time.perf_counter()
        for b, token in zip(done, tokens):
            seq = plan[b][0]
            seq.output.append(token)
            self.tokens_out += 1
            if seq.first_token_time is None:
                seq.first_token_time = now
            if not self._emit(seq, token, None):
                self._finish(seq, "error")  # its callback raised: this request ends, the batch goes on
            elif token in seq.params.stop_token_ids:
                self._finish(seq, "stop")
            elif len(seq.output) >= seq.params.max_tokens or len(seq.tokens) >= self.max_seq_len:
                self._finish(seq, "length")
        self.steps += 1
        return len(plan)

    def _forward(self, rows: list[tuple[Sequence, int]]) -> torch.Tensor:
        """One batched forward over ragged rows; the logits (B, V) of each row's last new token."""
        view = PagedBatch(self.cache, [seq.blocks for seq, _ in rows], [seq.num_computed for seq, _ in rows],
                          [n for _, n in rows], self.max_seq_len, device=self.device)
        ids = view.input_ids([seq.tokens[seq.num_computed:seq.num_computed + n] for seq, n in rows])
        return self.model(ids, attention_mask=view.attention_mask, cache=view, position_ids=view.position_ids,
                          logits_to_keep=1, validate=False)[:, -1]

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], rows: list[int]) -> list[int]:
        if not rows:
            return []
        picked = logits[rows]  # (b, V)
        greedy = picked.argmax(dim=-1).tolist()
        out = []
        for j, seq in enumerate(seqs):
            p = seq.params
            if is_greedy(p.temperature):
                out.append(int(greedy[j]))
                continue
            scores = process_logits(picked[j:j + 1], temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
            out.append(int(sample_next(scores, generator=seq.generator)[0]))
        return out

    def run_until_done(self, max_steps: int = 1_000_000) -> None:
        """Step in this thread until nothing is queued or running (tests, benchmarks)."""
        for _ in range(max_steps):
            self._take_inbox()
            if not self.scheduler.has_work:
                return
            self.step()
        raise RuntimeError(f"run_until_done: still busy after {max_steps} steps")

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._inbox and not self.scheduler.has_work and not self._stop and not self._aborts:
                    self._lock.wait(timeout=0.5)
                if self._stop and not self._drain:
                    break
                if self._stop and not self._inbox and not self.scheduler.has_work:
                    break
            try:
                if self.step() == 0 and self.scheduler.has_work:
                    time.sleep(0.002)  # static batching waiting for a batch
            except Exception as err:  # a failed step must not leave requests hanging, nor stop the loop
                self.last_error = err
                for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                    self._finish(seq, "error")
        self._take_inbox()
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            self._finish(seq, "abort")

    def start(self) -> Engine:
        """Run the loop in a daemon thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="mlcore-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, *, drain: bool = True, timeout: float | None = 30.0) -> None:
        """Stop taking requests; with ``drain`` finish every queued and running one first, else abort them."""
        with self._lock:
            self._stop, self._drain = True, drain
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- state, for metrics and notebooks --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        b = self.blocks
        return {"waiting": len(self.scheduler.waiting) + len(self._inbox), "running": len(self.scheduler.running),
                "free_blocks": b.available, "used_blocks": b.used, "num_blocks": b.num_blocks,
                "cached_blocks": len(b.block_of), "shared_blocks": b.shared_blocks(),
                "prefix_hits": b.hits, "prefix_queries": b.queries, "preemptions": self.scheduler.preemptions,
                "steps": self.steps, "tokens_out": self.tokens_out}
