"""llama.cpp as a benchmark anchor: load a GGUF file with ``llama-cpp-python``, check it, time greedy decoding.

On a CPU the engine practitioners reach for is llama.cpp (Gerganov et al., ``ggml-org/llama.cpp``): C/C++ with
hand-vectorised kernels, weights in GGUF block formats, no framework dispatch per op. This module is the
benchmark's handle on it; it imports nothing of mlcore (``mlcore.bench`` sits beside the library), and
``llama_cpp`` only when called, so the suite runs without it:

    reason = llama_cpp_missing()          # None when usable, else a line saying how to enable it
    runner = LlamaCppRunner("m-f32.gguf", n_threads=2, kv_type="f32")
    logits = runner.prefill(prompt_ids)   # (V,) float32, last position
    report = correctness_gate(ref_logits, ref_tokens, runner, prompt_ids)   # before any timing
    t = runner.timed_greedy(prompt_ids, 64)   # tokens, prefill seconds, decode seconds

Timing definition, the same the benchmark uses for transformers and mlcore: *prefill* is the time to the first
new token (prompt forward + argmax); *decode* is the time of the remaining ``n - 1`` tokens, each a one-token
forward with the KV cache plus an argmax, so decode tokens/s = ``(n - 1) / decode_seconds``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ENABLE_HINT = ("llama.cpp column off: `llama_cpp` is not importable. Enable it with `make anchors` (builds "
               "llama-cpp-python from source with CMAKE_ARGS=-DGGML_NATIVE=ON, plus the gguf package)")
KV_TYPES = {"f32": 0, "f16": 1}  # GGML_TYPE_F32 / GGML_TYPE_F16 for the K and V cache
QUANT_FTYPES = {"q4_0": 2, "q8_0": 7, "q4_K_M": 15, "q4_K_S": 14}  # llama_ftype values (llama.h)


def llama_cpp_missing() -> str | None:
    """None when ``llama_cpp`` imports, else :data:`ENABLE_HINT` with the import error."""
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # noqa: BLE001 -- any import failure (missing, broken build) disables the column
        return f"{ENABLE_HINT} [{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}]"
    return None


def _llama_cpp() -> Any:
    reason = llama_cpp_missing()
    if reason is not None:
        raise ImportError(reason)
    import llama_cpp

    return llama_cpp


@dataclass(frozen=True)
class GreedyTiming:
    """One greedy run: the ``n`` new tokens, seconds to the first one, seconds for the other ``n - 1`` (and
    each of those ``n - 1`` decode steps' seconds, in ``steps``)."""

    tokens: list[int]
    prefill_s: float
    decode_s: float
    steps: tuple[float, ...] = ()


class LlamaCppRunner:
    """A llama.cpp context over one GGUF file, batch 1, greedy decoding driven token by token from Python.

    ``kv_type``: "f16" (llama.cpp's default cache) or "f32" (for the f32 correctness gate). ``n_ctx`` bounds
    prompt + new tokens; the prompt is evaluated in one batch of at most ``n_ctx`` tokens.
    """

    def __init__(self, path: str | Path, *, n_threads: int = 2, n_ctx: int = 512, kv_type: str = "f16") -> None:
        if not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive int, got {n_threads!r}")
        if not isinstance(n_ctx, int) or n_ctx < 2:
            raise ValueError(f"n_ctx must be an int >= 2, got {n_ctx!r}")
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {tuple(KV_TYPES)}, got {kv_type!r}")
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path must be an existing GGUF file, got {str(path)!r}")
        lc = _llama_cpp()
        self.path, self.n_threads, self.n_ctx, self.kv_type = path, n_threads, n_ctx, kv_type
        self._lc = lc
        self.llm = lc.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n_threads,
                            n_threads_batch=n_threads, logits_all=False, type_k=KV_TYPES[kv_type],
                            type_v=KV_TYPES[kv_type], flash_attn=False, n_gpu_layers=0, verbose=False)
        self.n_vocab = int(self.llm.n_vocab())

    def _check(self, tokens: list[int], extra: int = 0) -> list[int]:
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("tokens must hold at least one id, got an empty list")
        if min(tokens) < 0 or max(tokens) >= self.n_vocab:
            raise ValueError(f"tokens must lie in [0, {self.n_vocab}), got [{min(tokens)}, {max(tokens)}]")
        if len(tokens) + extra > self.n_ctx:
            raise ValueError(f"prompt ({len(tokens)}) + new tokens ({extra}) exceed n_ctx={self.n_ctx}")
        return tokens

    def _last_logits(self) -> np.ndarray:
        ptr = self._lc.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Empty the KV cache, evaluate ``tokens`` in one batch; the last position's logits, (V,) float32."""
        tokens = self._check(tokens)
        self.llm.reset()
        self.llm.eval(tokens)
        return self._last_logits()

    def step(self, token: int) -> np.ndarray:
        """Append one token to the cache and evaluate it; its logits, (V,) float32."""
        self.llm.eval([int(token)])
        return self._last_logits()

    def timed_greedy(self, prompt: list[int], n: int) -> GreedyTiming:
        """Greedy-decode ``n`` >= 2 tokens after ``prompt``, timing prefill and decode apart (module docstring)."""
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"n must be an int >= 2 (one prefill token, at least one decode step), got {n!r}")
        prompt = self._check(prompt, n)
        t0 = time.perf_counter()
        out = [int(np.argmax(self.prefill(prompt)))]
        stamps = [time.perf_counter()]
        for _ in range(n - 1):
            out.append(int(np.argmax(self.step(out[-1]))))
            stamps.append(time.perf_counter())
        steps = tuple(b - a for a, b in zip(stamps, stamps[1:]))
        return GreedyTiming(out, stamps[0] - t0, stamps[-1] - stamps[0], steps)

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """The ``n`` greedy tokens after ``prompt`` (argmax, first index on ties, as torch.argmax)."""
        return self.timed_greedy(prompt, max(n, 2)).tokens[:n]

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of ``text`` (no BOS, special-token text treated as text)."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        self.llm.close()


@dataclass
class GateReport:
    """The correctness gate: last-position logits and the first greedy tokens against a reference."""

    valid: bool
    max_abs_diff: float
    tokens_checked: int
    tokens_equal: int
    first_mismatch: int | None
    reason: str = ""
    tokens: list[int] = field(default_factory=list)


def correctness_gate(ref_logits: np.ndarray, ref_tokens: list[int], runner: LlamaCppRunner, prompt: list[int], *,
                     atol: float = 1e-3, n_tokens: int = 8) -> GateReport:
    """Compare ``runner`` with a reference (mlcore float32): valid when every last-position logit is within
    ``atol`` of ``ref_logits`` (V,) and the first ``n_tokens`` greedy tokens equal ``ref_tokens``."""
    ref = np.asarray(ref_logits, dtype=np.float64).reshape(-1)
    if ref.shape[0] != runner.n_vocab:
        raise ValueError(f"ref_logits must have the runner's vocabulary size {runner.n_vocab}, got {ref.shape}")
    if not isinstance(n_tokens, int) or not 1 <= n_tokens <= len(ref_tokens):
        raise ValueError(f"n_tokens must be in [1, len(ref_tokens)={len(ref_tokens)}], got {n_tokens!r}")
    got = runner.prefill(prompt).astype(np.float64)
    diff = float(np.max(np.abs(got - ref)))
    tokens = runner.greedy(prompt, n_tokens)
    want = [int(t) for t in ref_tokens[:n_tokens]]
    equal = sum(a == b for a, b in zip(tokens, want))
    mismatch = next((i for i, (a, b) in enumerate(zip(tokens, want)) if a != b), None)
    reasons = []
    if not diff <= atol:
        reasons.append(f"max |logit diff| {diff:.2e} > {atol:.0e}")
    if mismatch is not None:
        reasons.append(f"greedy token {mismatch} differs ({tokens[mismatch]} vs {want[mismatch]})")
    return GateReport(not reasons, diff, n_tokens, equal, mismatch, "; ".join(reasons), tokens)


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (llama.cpp's C code logs every tensor it quantizes there)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quantize_gguf(src: str | Path, dst: str | Path, ftype: str = "q4_K_M", *, n_threads: int = 2) -> Path:
    """Quantize a f32/f16 GGUF file with llama.cpp's own quantizer (``llama_model_quantize``, what the
    ``llama-quantize`` tool runs): the path to the K-quants, which have no Python quantizer."""
    if ftype not in QUANT_FTYPES:
        raise ValueError(f"ftype must be one of {tuple(QUANT_FTYPES)}, got {ftype!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ValueError(f"src must be an existing GGUF file, got {str(src)!r}")
    lc = _llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = QUANT_FTYPES[ftype]
    with _quiet_stderr():
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, {ftype}) failed with code {rc}")
    return dst


def gguf_tensor_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of each tensor stored in a GGUF file (read with the ``gguf`` package), by name."""
    return {name: nbytes for name, (nbytes, _) in _gguf_tensors(path).items()}


def _gguf_tensors(path: str | Path) -> dict[str, tuple[int, int]]:
    """(bytes, rows) of each tensor in a GGUF file; GGUF lists dimensions innermost first, so rows = ``ne[-1]``."""
    import gguf

    return {t.name: (int(t.n_bytes), int(t.shape[-1]) if len(t.shape) else 1)
            for t in gguf.GGUFReader(str(path)).tensors}


def decode_weight_bytes(path: str | Path) -> int:
    """Weight bytes one batch-1 decode step reads from a llama.cpp model: every tensor at its stored size
    (quantized blocks with their scales), except that an untied ``token_embd`` contributes one row (a lookup,
    ``bytes / vocab``), not the whole table; a tied one is the output projection and counts whole."""
    tensors = _gguf_tensors(path)
    sizes = {name: nbytes for name, (nbytes, _) in tensors.items()}
    if "output.weight" in sizes and "token_embd.weight" in sizes:
        nbytes, rows = tensors["token_embd.weight"]
        sizes["token_embd.weight"] = nbytes // rows  # a row of whole blocks: ggml quantizes along rows
    return sum(sizes.values())
