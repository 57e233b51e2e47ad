"""Attention forward: naive (full score matrix) vs flash_attention (tiled, online softmax) vs torch SDPA.

Work: ``4 * B * H * Tq * Tk * D`` FLOPs (two matmuls, Q K^T and P V), half of it when causal. The
naive version writes the (Tq, Tk) scores and weights to memory, so its peak memory grows as T^2;
flash_attention keeps one (block_q, block_k) tile at a time, so its peak is the output, O(T).

Implementations (``params["impl"]``):

- ``naive``: ``mlcore.attention.naive.scaled_dot_product_attention``
- ``flash``: ``mlcore.attention.flash_attention`` in plain PyTorch (``use_triton=False``)
- ``triton``: the same function through its Triton kernel (CUDA, bf16, D in {64, 128} only)
- ``torch_sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, the ecosystem twin every ratio
  refers to (on CUDA, bf16 and no mask, torch dispatches it to its FlashAttention-2 backend).

CPU runs fp32, CUDA runs bf16. ``speedup`` = torch SDPA seconds / mlcore seconds (> 1: mlcore faster).
``params["mode"]``: "fwd" (inference, under no_grad) always; "train" (forward + backward via
``torch.autograd.grad``, where flash's memory stays linear because backward recomputes P) in the full preset.
Quick: T = 256..2048, D = 64, fwd only. Full: T = 256..8192, D = 64 and 128, fwd and train (on CPU the
naive version stops at T = 4096, 2048 for train: its fp32 score matrices would need several GiB).

Goals (issue 3): flash_attention's peak memory at the largest T the naive version runs at most 1/8 of naive's
(forward, D=64, not causal); on CUDA the Triton forward at T=4096, D=128, bf16 at least 0.7x SDPA's speed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from mlcore.attention.flash import flash_attention
from mlcore.attention.naive import scaled_dot_product_attention as naive_attention
from mlcore.bench import Context, Goal, Plot, Result, Table, peak_memory, roofline, time_fn

DESCRIPTION = (
    "attention forward: naive vs flash_attention (PyTorch, Triton) vs torch SDPA; time, FLOP/s, memory"
)


def _vs_t(name: str, y: str, causal: bool, mode: str, title: str) -> Plot:
    """A log-log curve of ``y`` against T at D=64, one line per implementation."""
    return Plot(name=name, x="T", y=y, series="impl", where={"D": 64, "causal": causal, "mode": mode},
                logx=True, logy=True, title=title, ylabel="bytes" if y == "memory_bytes" else "seconds")


PLOTS = [
    _vs_t("attention_time_vs_T", "median", False, "fwd", "attention forward time vs T (D=64, not causal)"),
    _vs_t("attention_time_vs_T_causal", "median", True, "fwd", "attention forward time vs T (D=64, causal)"),
    _vs_t("attention_memory_vs_T", "memory_bytes", False, "fwd",
          "attention forward peak memory vs T (D=64, not causal)"),
    _vs_t("attention_train_memory_vs_T", "memory_bytes", False, "train",
          "attention forward + backward peak memory vs T (D=64; full preset)"),
]


def _table(mode: str, causal: bool) -> Table:
    title = f"{'forward' if mode == 'fwd' else 'forward + backward'}, {'causal' if causal else 'not causal'}"
    return Table(title, where={"mode": mode, "causal": causal}, params=("T", "D"), columns=("frac_peak_flops",))


TABLES = [_table(mode, causal) for mode in ("fwd", "train") for causal in (False, True)]

B, H = 1, 8
FLASH_BLOCK = 128  # plain-PyTorch flash: bigger tiles mean fewer Python-level steps (64 is the API default)
NAIVE_CPU_MAX_T = (
    4096  # the (B, H, T, T) fp32 scores at T=8192 alone are 2 GiB: too much for a shared CPU box
)


def _settings(ctx: Context) -> tuple[list[int], list[int]]:
    if ctx.quick:
        return [256, 512, 1024, 2048], [64]
    return [256, 512, 1024, 2048, 4096, 8192], [64, 128]


def _impls(ctx: Context, T: int, D: int, dtype: torch.dtype, mode: str) -> dict[str, object]:
    """name -> fn(q, k, v, causal) for the implementations that run at this setting."""
    block = FLASH_BLOCK
    impls: dict[str, object] = {
        "torch_sdpa": lambda q, k, v, c: F.scaled_dot_product_attention(q, k, v, is_causal=c),  # Tq == Tk here
        "flash": lambda q, k, v, c: flash_attention(q, k, v, is_causal=c, block_q=block, block_k=block,
                                                    use_triton=False),
    }  # fmt: skip
    if ctx.device.type == "cuda" or T <= (NAIVE_CPU_MAX_T if mode == "fwd" else NAIVE_CPU_MAX_T // 2):
        impls["naive"] = lambda q, k, v, c: naive_attention(q, k, v, is_causal=c)
    if ctx.device.type == "cuda" and D in (64, 128):
        from mlcore.attention.triton_kernel import triton_available

        if triton_available():
            impls["triton"] = lambda q, k, v, c: flash_attention(q, k, v, is_causal=c, use_triton=True)
    return impls


def _timed(ctx: Context, impls: dict[str, object], q, k, v, causal: bool, mode: str) -> dict[str, tuple]:
    """impl -> (Timing, peak bytes) of the forward ("fwd") or forward + backward ("train")."""
    measured = {}
    for name, impl in impls.items():
        if mode == "fwd":

            def fn(impl=impl):
                with torch.no_grad():
                    return impl(q, k, v, causal)
        else:
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            d_out = torch.randn_like(q)

            def fn(impl=impl, leaves=leaves, d_out=d_out):
                return torch.autograd.grad(impl(*leaves, causal), leaves, d_out)

        t = time_fn(fn, device=ctx.device, min_run_time=0.1 if ctx.quick else 0.3)
        measured[name] = (t, peak_memory(fn, device=ctx.device))
    return measured


def _goal(ctx: Context, name: str, mode: str, T: int, D: int, causal: bool, Ts: list[int]) -> Goal | None:
    """Issue 3's targets, on the one result each is about."""
    if mode != "fwd" or causal:
        return None
    naive_max_t = max(Ts) if ctx.device.type == "cuda" else max(t for t in Ts if t <= NAIVE_CPU_MAX_T)
    if name == "flash" and D == 64 and T == naive_max_t:
        return Goal("<=", 1 / 8, f"flash peak memory / naive at T={T}, D=64", metric="memory_vs_naive")
    if name == "triton" and D == 128 and T == 4096:
        return Goal(">=", 0.7, "Triton forward vs SDPA flash at T=4096, D=128, bf16")
    return None


def run(ctx: Context) -> Iterator[Result]:
    dev = ctx.device
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    Ts, Ds = _settings(ctx)
    modes = ["fwd"] if ctx.quick else ["fwd", "train"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    for mode, D, causal, T in ((m, d, c, t) for m in modes for d in Ds for c in (False, True) for t in Ts):
        q, k, v = (torch.randn(B, H, T, D, generator=gen).to(dev, dtype) for _ in range(3))
        impls = _impls(ctx, T, D, dtype, mode)
        # useful work: Q K^T and P V (2 * 2 T^2 D each), halved when causal; backward does 2.5x the forward
        flops = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0) * (1.0 if mode == "fwd" else 3.5)
        measured = _timed(ctx, impls, q, k, v, causal, mode)
        twin_t, twin_mem = measured["torch_sdpa"]
        naive_mem = measured["naive"][1] if "naive" in measured else None
        for name, (t, mem) in measured.items():
            rl = roofline(seconds=t.median, flops=flops, probe=ctx.probe, dtype=dtype_name)
            extra = {
                "gflops": round(rl["gflops"], 3),
                "frac_peak_flops": round(rl["frac_peak_flops"], 4),
                "memory_vs_sdpa": round(mem / twin_mem, 3) if twin_mem else None,
                "memory_vs_naive": round(mem / naive_mem, 4) if naive_mem else None,
            }
            is_twin = name == "torch_sdpa"
            yield Result.from_timing(
                "attention", name,
                {"impl": name, "mode": mode, "T": T, "D": D, "causal": causal, "B": B, "H": H,
                 "block": FLASH_BLOCK if name == "flash" else None},
                device=dev, dtype=dtype_name, timing=t, memory_bytes=mem,
                twin=None if is_twin else "torch.nn.functional.scaled_dot_product_attention",
                twin_timing=None if is_twin else twin_t, extra=extra,
                extra_runs={"memory_vs_naive": None},  # a byte count: no timing spread applies to it
                goal=_goal(ctx, name, mode, T, D, causal, Ts),
            )  # fmt: skip
        del q, k, v
