"""Machine probe: what this machine is, and the ceilings it reaches *measured in this run*.

The ceilings are the denominators of every roofline fraction in the report:

- read bandwidth: ``x.sum()`` over a buffer several times the last-level cache;
- copy bandwidth: ``dst.copy_(src)`` (bytes read + bytes written);
- batch-1 matmul (GEMV) bandwidth per dtype, with a weight larger than the last-level cache:
  token-by-token decoding reads every weight once per token, so this is its practical ceiling. The weight is
  timed in both memory layouts, row-major ``(out, in)`` (``nn.Linear``'s) and column-major, and the faster
  counts: on CPU float32 the column-major one reads ~1.7x faster (MKL's sgemv "N" path), and mlcore's decode
  uses it (``mlcore.attention.fused_linear.decode_layout``), so a row-major-only figure would not be a ceiling;
  on CPU bfloat16 oneDNN's packed layout (``mkldnn._reorder_linear_weight``, which mlcore's eager decode and
  inductor's frozen graphs both use) is timed as a third candidate, for the same reason; and on CPU the
  compiled row-dot GEMV (``mlcore._row_dot``, inductor's own reduction kernel, which a compiled decode
  step runs) is a candidate too: it reads small models' weights 1.5x faster than MKL or oneDNN here; and so is
  the same GEMV on the weight in ``tiled_weight``'s layout (what a compiled batch-1 step reads where it can),
  ~1.1x faster again on this 4096-wide weight; on a CPU with AMX, bfloat16 also times inductor's C++ GEMM
  template over the weight frozen into a compiled graph (what a compiled batch-1 bf16 step runs there;
  ``mlcore._gemm_template``): 24.7 GB/s against oneDNN's 25.3 on a 4096-wide weight, one thread;
- matmul throughput (FLOP/s) per dtype, ``2 n^3`` FLOPs for an ``n x n`` product.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mlcore._gemm_template import TEMPLATE_OPTIONS, has_amx
from mlcore._onednn import onednn_bf16_available

from .timing import time_fn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Probe:
    """Facts and measured ceilings of one machine (GB/s are 1e9 bytes per second)."""

    device: str
    device_name: str
    cpu_model: str
    cpu_count: int
    cache_bytes: dict[str, int]
    torch_version: str
    torch_threads: int
    read_gbs: float = 0.0
    copy_gbs: float = 0.0
    gemv_gbs: dict[str, float] = field(default_factory=dict)
    matmul_flops: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def last_level_cache(self) -> int:
        return max(self.cache_bytes.values(), default=32 * 2**20)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def _cpu_caches() -> dict[str, int]:
    """Cache sizes per level from sysfs, e.g. {"L1d": 49152, "L2": 2097152, "L3": 33554432}."""
    caches: dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        name = f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, ""))
        caches[name] = size
    return caches


def describe_machine(device: torch.device) -> Probe:
    """The static facts, no measurement."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return Probe(
        device=str(device),
        device_name=name,
        cpu_model=_cpu_model(),
        cpu_count=os.cpu_count() or 1,
        cache_bytes=_cpu_caches(),
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
    )


def _buffer_bytes(probe: Probe, quick: bool) -> int:
    """A working set well past the last-level cache (4x), so we measure DRAM, not cache; in the quick preset at
    most 1 GiB (still 2x a 480 MiB L3, the largest this project has met: 4x would be 1.9 GB per buffer, and the
    probe's nine GEMV weights would take minutes to fill)."""
    floor = 64 * 2**20 if quick else 256 * 2**20
    if probe.device.startswith("cuda"):
        floor = 1 * 2**30  # GPU L2 is tens of MB; 1 GiB is safely DRAM/HBM
    size = max(floor, 4 * probe.last_level_cache)
    return min(size, max(floor, 2**30)) if quick else size


def _measure(fn, device: torch.device, quick: bool, repeats: int = 3) -> float:
    """Best of a few medians: a ceiling is what the machine *can* do, so a moment of interference from
    another process (which only ever slows a run down) should not lower it."""
    run_time = 0.1 if quick else 0.4
    return min(time_fn(fn, device=device, warmup=1, min_run_time=run_time).median for _ in range(repeats))


def _bandwidths(device: torch.device, nbytes: int, quick: bool) -> tuple[float, float]:
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    read = nbytes / _measure(lambda: src.sum(), device, quick) / 1e9
    copy = 2 * nbytes / _measure(lambda: dst.copy_(src), device, quick) / 1e9
    return read, copy


@dataclass
class GemvKernel:
    """One batch-1 GEMV candidate: ``fn()`` multiplies one row by a weight of ``weight_bytes`` that it holds."""

    name: str
    fn: Callable[[], object]
    weight_bytes: int

    def gbs(self, seconds: float) -> float:
        """Weight-read bandwidth (GB/s) of one call that took ``seconds``."""
        return self.weight_bytes / max(seconds, 1e-12) / 1e9


def gemv_kernels(device: torch.device, dtype: torch.dtype, nbytes: int) -> Iterator[GemvKernel]:
    """The GEMV candidates for ``dtype`` on ``device`` (see the module docstring), each with a weight of about
    ``nbytes``, made one at a time (each is sized against the memory: keep only the ones you need)."""
    k = 4096
    rows = max(nbytes // (k * dtype.itemsize), k)
    size = rows * k * dtype.itemsize
    x = torch.randn(1, k, device=device).to(dtype)
    F = torch.nn.functional

    def weight(*shape: int) -> torch.Tensor:  # filled in its own dtype: no float32 copy of a 1 GiB weight
        return torch.empty(*shape, dtype=dtype, device=device).uniform_(-1.0, 1.0)

    def linear(w: torch.Tensor) -> Callable[[], object]:
        return lambda: F.linear(x, w)

    yield GemvKernel("row-major", linear(weight(rows, k)), size)  # (out, in)
    yield GemvKernel("column-major", linear(weight(k, rows).t()), size)
    if device.type == "cpu" and dtype == torch.bfloat16 and onednn_bf16_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight(rows, k), 1)  # batch hint 1
        yield GemvKernel("onednn-packed", lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
                         size)
    if device.type == "cpu":
        row_dots = _compiled_row_dots(x, weight(rows, k))
        if row_dots is not None:
            yield GemvKernel("row-dots (compiled)", row_dots, size)
        tiled = _compiled_row_dots(x, weight(rows, k), tiled=True)
        if tiled is not None:
            yield GemvKernel("tiled row-dots (compiled)", tiled, size)
    if device.type == "cpu" and dtype == torch.bfloat16 and has_amx():
        template = _compiled_template(x, weight(rows, k))
        if template is not None:
            yield GemvKernel("gemm template (compiled, frozen)", template, size)


def fastest_gemv(device: torch.device, dtype: torch.dtype, nbytes: int, quick: bool) -> tuple[float, GemvKernel]:
    """(GB/s, kernel) of the fastest :func:`gemv_kernels` candidate: weight bytes / time of ``x (1, k) @ W^T``."""
    best: tuple[float, GemvKernel] | None = None
    for kernel in gemv_kernels(device, dtype, nbytes):
        seconds = _measure(kernel.fn, device, quick)
        if best is None or seconds < best[0]:
            best = (seconds, kernel)
    assert best is not None  # the two plain layouts always exist
    return best[1].gbs(best[0]), best[1]


def _compiled_row_dots(x: torch.Tensor, weight: torch.Tensor, tiled: bool = False) -> Callable[[], object] | None:
    """The compiled row-dot GEMV (``mlcore._row_dot``, what a compiled CPU decode step runs) on ``weight`` (or, with
    ``tiled``, on its ``tiled_weight`` tiles), or None where ``torch.compile`` cannot build it (no C++ compiler):
    then it is no candidate."""
    from mlcore._row_dot import row_dot_linear, tiled_row_dot_linear, tiled_weight

    if tiled:
        weight = tiled_weight(weight)
        if weight is None:
            return None

    def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return tiled_row_dot_linear(x, weight) if tiled else row_dot_linear(x, weight)

    compiled = torch.compile(gemv, dynamic=False, fullgraph=True)

    def run() -> torch.Tensor:
        with torch.no_grad():  # one grad mode for every call: dynamo guards on it
            return compiled(x, weight)

    try:
        run()
    except Exception:  # noqa: BLE001 -- any compiler failure only removes this candidate
        return None
    return run


def _compiled_template(x: torch.Tensor, weight: torch.Tensor) -> Callable[[], object] | None:
    """``F.linear(x, weight)`` compiled with the weight frozen in and inductor's C++ GEMM template selected
    (``mlcore._gemm_template.TEMPLATE_OPTIONS``), or None where ``torch.compile`` cannot build it."""
    from torch._inductor import config as inductor_config

    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)  # the same tensor: no second copy of it
    compiled = torch.compile(layer.eval(), dynamic=False, fullgraph=True)
    options = {k: v for k, v in TEMPLATE_OPTIONS.items() if hasattr(inductor_config, k)}

    def run() -> torch.Tensor:
        with torch.no_grad():
            return compiled(x)

    try:
        with inductor_config.patch(freezing=True, **options):
            run()  # compiles (reads the settings) once
    except Exception:  # noqa: BLE001 -- any compiler failure only removes this candidate
        return None
    return run


def _matmul_flops(device: torch.device, dtype: torch.dtype, quick: bool) -> float:
    size = (4096 if quick else 8192) if device.type == "cuda" else (1024 if quick else 2048)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / _measure(lambda: a @ b, device, quick)


def probe_machine(device: torch.device | str = "cpu", *, quick: bool = True) -> Probe:
    """Describe the machine and measure its bandwidth and matmul ceilings on ``device``."""
    device = torch.device(device)
    probe = describe_machine(device)
    nbytes = _buffer_bytes(probe, quick)
    probe.read_gbs, probe.copy_gbs = _bandwidths(device, nbytes, quick)
    dtypes = ["float32", "bfloat16"] + (["float16"] if device.type == "cuda" else [])
    for name in dtypes:
        probe.gemv_gbs[name] = fastest_gemv(device, _DTYPES[name], nbytes, quick)[0]
        probe.matmul_flops[name] = _matmul_flops(device, _DTYPES[name], quick)
    return probe
