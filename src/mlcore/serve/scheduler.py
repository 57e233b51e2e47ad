"""Iteration-level scheduling (Yu et al. 2022, Orca) with preemption by recomputation (vLLM).

Every engine step the scheduler decides which sequences run and how many of their tokens:

1. **running sequences first, oldest first**: a decoding sequence needs 1 token (its last sampled one), a
   prefilling one the rest of its prompt, cut to the step's token budget (chunked prefill). If the pool cannot
   give the blocks these tokens need, the **newest** running sequence is preempted: its blocks are released and
   it goes back to the front of the queue with its tokens so far (prompt + output), to be recomputed later.
   Nothing is ever written into another sequence's block, and no request fails for lack of memory.
2. **then admission** (``policy="continuous"``): waiting requests join, oldest first, while the batch has room,
   the budget has tokens and the pool has their blocks (after a prefix-cache lookup, which may cover most of
   the prompt). ``policy="static"`` admits only into an empty batch (a batch runs until its longest member
   ends), the baseline continuous batching improves on.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mlcore.serve.block_manager import BlockManager, block_hashes

POLICIES = ("continuous", "static")


@dataclass
class SamplingParams:
    """Per-request decoding knobs (OpenAI's names). ``temperature=0`` is greedy, and so is any temperature
    below ``inference.sampling.GREEDY_BELOW`` (1e-5, as vLLM; ``is_greedy``), where ``logits / T`` overflows."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()


Emit = Callable[[int | None, str | None], Any]  # (token, None) per token; (None, finish_reason) once at the end


@dataclass
class Sequence:
    """One request inside the engine: its tokens, its block table and how many of its tokens are cached."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    emit: Emit | None = None
    output: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K, V are in the blocks
    hashes: list[bytes] = field(default_factory=list)  # chained hashes of full computed blocks
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache at (last) admission
    preemptions: int = 0
    generator: torch.Generator | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def to_compute(self) -> int:
        return len(self.prompt) + len(self.output) - self.num_computed


class Scheduler:
    """Queue, running batch and block accounting (see the module docstring)."""

    def __init__(self, blocks: BlockManager, *, max_running: int = 32, max_step_tokens: int = 512,
                 policy: str = "continuous", salt: str = "", batch_timeout: float = 0.05) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if max_running < 1 or max_step_tokens < 1:
            raise ValueError(f"max_running and max_step_tokens must be >= 1, got {max_running}, {max_step_tokens}")
        self.blocks, self.policy, self.salt = blocks, policy, salt
        self.max_running, self.max_step_tokens = max_running, max_step_tokens
        self.batch_timeout = batch_timeout  # static batching: how long the first request waits for a full batch
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def _need(self, seq: Sequence, n: int) -> int:
        return max(0, math.ceil((seq.num_computed + n) / self.blocks.block_size) - len(seq.blocks))

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks and queue it first again; its tokens so far are recomputed on readmission."""
        self.running.remove(seq)
        self.blocks.release(seq.blocks)
        seq.blocks, seq.num_computed, seq.hashes = [], 0, []
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def retire(self, seq: Sequence) -> None:
        """A finished (or aborted) sequence gives its blocks back."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq.blocks)
        seq.blocks = []

    def _admit_prefix(self, seq: Sequence) -> int:
        """Reuse cached blocks of the longest cached prefix (never the whole sequence: one token must run).
        Returns the number of block hashes looked up."""
        bs = self.blocks.block_size
        tokens = seq.tokens
        usable = (len(tokens) - 1) // bs
        hashes = block_hashes(tokens[:usable * bs], bs, salt=self.salt)
        # not counted yet: a request that waits for room looks up again next step, and counting every retry
        # inflated the hit rate; schedule() counts the lookup once, at admission
        seq.blocks = self.blocks.match_prefix(hashes, record=False)
        seq.hashes = hashes[:len(seq.blocks)]
        seq.num_computed = len(seq.blocks) * bs
        seq.cached_tokens = seq.num_computed
        return len(hashes)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """This step's (sequence, new tokens) pairs; takes the blocks they need."""
        plan: list[tuple[Sequence, int]] = []
        budget = self.max_step_tokens
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.to_compute, budget)
            need = self._need(seq, n)
            while need > self.blocks.available and seq in self.running:
                self.preempt(self.running[-1])  # the newest goes back to the queue
                preempted = True
            if seq not in self.running:
                break
            seq.blocks += self.blocks.allocate(need)
            plan.append((seq, n))
            budget -= n
            i += 1
        if preempted or (self.policy == "static" and self.running):
            return plan
        if (self.policy == "static" and len(self.waiting) < self.max_running and self.waiting
                and time.perf_counter() - self.waiting[0].arrival < self.batch_timeout):
            return plan  # static batching waits for a full batch (or the timeout)
        watermark = max(1, self.blocks.num_blocks // 100)
        while self.waiting and len(self.running) < self.max_running and budget > 0:
            seq = self.waiting[0]
            looked_up = self._admit_prefix(seq)
            n = min(seq.to_compute, budget)
            need = self._need(seq, n)
            if need + watermark > self.blocks.available and (self.running or need > self.blocks.available):
                self.blocks.release(seq.blocks)  # not now: give the prefix references back
                seq.blocks, seq.num_computed, seq.hashes, seq.cached_tokens = [], 0, [], 0
                break
            self.waiting.popleft()
            self.blocks.record_lookup(looked_up, len(seq.blocks))
            seq.blocks += self.blocks.allocate(need)
            self.running.append(seq)
            plan.append((seq, n))
            budget -= n
        return plan

    def after_step(self, seq: Sequence, n: int) -> None:
        """``n`` more tokens of ``seq`` are cached: register its newly full blocks for prefix caching."""
        seq.num_computed += n
        if not self.blocks.prefix_caching:
            return
        bs = self.blocks.block_size
        full = seq.num_computed // bs
        if full > len(seq.hashes):
            tokens = seq.tokens[:full * bs]
            new = block_hashes(tokens, bs, salt=self.salt)[len(seq.hashes):]  # chained: recompute from the start
            for j, h in enumerate(new, start=len(seq.hashes)):
                self.blocks.register(seq.blocks[j], h)
            seq.hashes.extend(new)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
