"""Code books of the 4-bit and 8-bit "lookup" formats, and nearest-code rounding.

- **NF4** (NormalFloat4, Dettmers et al. 2023, *QLoRA*, sec. 3): 16 values that are quantiles of N(0, 1),
  normalised to [-1, 1], built from 8 positive and 7 negative quantiles plus an exact zero so that zero is
  representable: ``q_i = Phi^-1(p_i) / max``, with ``p`` evenly spaced between ``1 - delta`` and ``1/2``
  (``delta = 0.9677083`` chosen so the outermost quantile is finite). The values below are the float32 table
  bitsandbytes ships (a fact of the format, needed for bit-identical files).
- **FP4** (bitsandbytes' 4-bit float, e2m1 without infinities): bit pattern ``s e1 e0 m``; in bit-pattern order
  the magnitudes are 0, 0.0625, 8, 12, 4, 6, 2, 3 (exponent field ``01`` is the largest in bitsandbytes'
  encoding), divided by the largest (12) so that the table spans [-1, 1].
- **Signed dynamic map** (Dettmers 2016, *8-Bit Approximations for Parallelism in Deep Learning*; used by
  Dettmers et al. 2022, *8-bit Optimizers via Block-wise Quantization*, and by QLoRA's double quantization):
  for each exponent ``e = 0..6`` the midpoints of ``linspace(0.1, 1, 2**e + 1)`` scaled by ``10**(e - 6)``,
  with both signs, plus 0 and 1.0: 256 values, dense near zero, sparse near +-1.

``nearest_code(x, code)`` rounds each value to the closest entry of a code book: sort the book, take the
midpoints between neighbours, and ``bucketize`` (a value exactly on a midpoint goes to the lower entry). Equal
entries (FP4's +0 and -0) are sorted stably by code index, so ``(-m, 0]`` maps to +0 (``0b0000``) and
``(0, m]`` to -0 (``0b1000``), the same bytes bitsandbytes writes on CPU.

``table_code(x, code)`` is bitsandbytes' CPU 8-bit rounding (``quantize_blockwise``, used for the nested level
of double quantization), which is *not* nearest-code: it snaps ``x`` to one of 65536 evenly spaced points of
[-1, 1] and returns the nearest code of that point, so values closer than half a grid step (1.5e-5) to a
midpoint, and the codes of the map finer than the grid (``|x| < 1.5e-5``), fall differently.
"""

from __future__ import annotations

import torch

# NF4: bitsandbytes' table (QLoRA's construction with delta = 0.9677083), index = 4-bit code.
NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

# FP4: magnitudes of codes 0b000..0b111 in bitsandbytes' encoding; the sign bit is 0b1000.
_FP4_MAGNITUDES: tuple[float, ...] = (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0)
FP4_CODE: tuple[float, ...] = tuple(m / 12.0 for m in _FP4_MAGNITUDES) + tuple(-m / 12.0 for m in _FP4_MAGNITUDES)

FOUR_BIT_CODES: dict[str, tuple[float, ...]] = {"nf4": NF4_CODE, "fp4": FP4_CODE}


def code_tensor(name: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 values of the ``"nf4"`` or ``"fp4"`` code book as a float32 tensor (16,), index = code."""
    if name not in FOUR_BIT_CODES:
        raise ValueError(f"name: expected one of {sorted(FOUR_BIT_CODES)}, got {name!r}")
    return torch.tensor(FOUR_BIT_CODES[name], dtype=torch.float32, device=device)


def signed_dynamic_map(device: torch.device | str | None = None) -> torch.Tensor:
    """The signed 8-bit dynamic quantization map (256,) float32, sorted ascending (see module docstring).

    With 7 non-sign bits and at most 7 exponent bits, exponent ``e`` owns ``2**e`` fraction values; that gives
    ``2 * (1 + 2 + ... + 64) = 254`` signed values, plus 0 and 1.0. Computed in float32 exactly as the
    definition reads, so every value equals bitsandbytes' ``create_dynamic_map(signed=True)`` bit for bit.
    """
    exponent_bits = 7
    values: list[torch.Tensor] = []
    for e in range(exponent_bits):
        edges = torch.linspace(0.1, 1.0, 2**e + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        decade = 10 ** (e - (exponent_bits - 1))
        values += [decade * mids, -decade * mids]
    values.append(torch.tensor([0.0, 1.0], dtype=torch.float32))
    return torch.cat(values).sort().values.to(device)


def nearest_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of ``code`` (K,) for every value of ``x`` (any shape), as int64.

    Ties (a value exactly between two entries) go to the smaller entry; equal entries are ordered by index.
    """
    order = torch.sort(code, stable=True).indices
    sorted_code = code[order]
    midpoints = (sorted_code[:-1] + sorted_code[1:]) / 2
    return order[torch.bucketize(x.contiguous(), midpoints)]


# bitsandbytes 0.50's CPU 8-bit quantizer looks codes up in a table over this many points of [-1, 1]
TABLE_SIZE = 65536


def code_lookup_table(code: torch.Tensor) -> torch.Tensor:
    """(TABLE_SIZE,) int64: the index of the nearest entry of the sorted ``code`` (K,) float32 to each grid point
    ``p_i = 2 i / (TABLE_SIZE - 1) - 1``, every step in float32; a point exactly on a midpoint takes the lower entry.
    """
    i = torch.arange(TABLE_SIZE, dtype=torch.float32, device=code.device)
    points = (i + i) / (TABLE_SIZE - 1) - 1.0  # this order of float32 operations places the grid as bitsandbytes
    midpoints = (code[:-1] + code[1:]) * 0.5
    return torch.bucketize(points, midpoints)


def table_code(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' CPU 8-bit rounding of ``x`` (any shape, float32, normally in [-1, 1]) to the sorted ``code``
    (K,): int64 indices, shape of ``x``. ``x`` is clamped to [-1, 1] and snapped to grid point
    ``trunc(fma((x + 1) * 0.5, TABLE_SIZE - 1, 0.5))`` (one rounding to float32 after the fused multiply-add, as
    the compiled kernel does), then looked up in :func:`code_lookup_table`. NaN (``0 * inf`` where a block's
    absmax is so small its reciprocal overflows) lands on point 0, as the kernel's float-to-int conversion does.
    """
    half = (torch.nan_to_num(x.float().clamp(-1.0, 1.0), nan=-1.0) + 1.0) * 0.5  # float32, each step rounded
    # the product of a float32 by 65535 plus 0.5 is exact in float64, so one cast rounds like the fused op
    point = (half.double() * (TABLE_SIZE - 1) + 0.5).float().long()
    return code_lookup_table(code)[point]
