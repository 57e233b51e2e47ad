"""``QuantizedTensor``: low-bit codes plus everything needed to undo the quantization.

A weight ``w`` of shape (out, in) (any shape for NF4/FP4) is stored as

- ``data``: the codes. int8: one code per element, shape (R, K) with ``R = prod(shape[:-1])``, ``K =
  shape[-1]`` (int8 when symmetric, uint8 with a zero point otherwise). int4: two codes per byte, (R, K // 2)
  uint8. NF4 / FP4: the flattened tensor, two codes per byte, (ceil(numel / 2),) uint8. Packed bytes hold the
  first element in the HIGH nibble (bitsandbytes' order).
- ``scales``: float32 scale per group (int8, int4) or per block absmax (NF4 / FP4), or, with double
  quantization, the uint8 codes of those absmax values, whose second level is ``nested``.
- ``zeros``: integer zero points (uint8) for asymmetric int8 / int4, else ``None``.

``bits_per_parameter = 8 * nbytes / numel`` counts everything stored: codes, scales, zero points and the second
level of double quantization. ``state_dict()`` gives a flat dict of tensors and a JSON-able metadata dict
(what ``safetensors`` files hold); ``QuantizedTensor.from_state_dict`` checks and reverses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import torch

SCHEMES: tuple[str, ...] = ("int8", "int4", "nf4", "fp4")
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
GRANULARITIES: dict[str, tuple[str, ...]] = {
    "int8": ("tensor", "channel", "group"), "int4": ("group",), "nf4": ("block",), "fp4": ("block",)}
# block sizes bitsandbytes' 4-bit and blockwise (double-quant) levels take; bounded, so a file cannot ask for a
# block of 2**40 elements to be allocated
FOUR_BIT_BLOCKSIZES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
_DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                        "bfloat16": torch.bfloat16}


@dataclass
class NestedScales:
    """Second level of double quantization (Dettmers et al. 2023, sec. 3), shape notes for ``n`` blocks.

    The first-level absmax values (n,) minus their mean ``offset`` are quantized in blocks of ``blocksize``
    with the signed 8-bit dynamic map ``D``; ``absmax`` (ceil(n / blocksize),) float32 holds each block's
    absmax, and the first level is recovered as ``D[codes[i]] * absmax[i // blocksize] + offset``.
    """

    absmax: torch.Tensor
    offset: torch.Tensor
    blocksize: int = 256


@dataclass
class QuantizedTensor:
    """Packed codes and scales of one quantized tensor (see the module docstring for the layouts)."""

    data: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    scheme: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    group_size: int | None = None
    granularity: str = "group"
    symmetric: bool = False
    nested: NestedScales | None = field(default=None)

    @property
    def blocksize(self) -> int | None:
        """NF4 / FP4 name for ``group_size``: consecutive elements of the flattened tensor sharing an absmax."""
        return self.group_size

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def device(self) -> torch.device:
        return self.data.device

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor by flat name (``data``, ``scales``, ``zeros``, ``nested_absmax``, ...)."""
        out = {"data": self.data, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        if self.nested is not None:
            out["nested_absmax"] = self.nested.absmax
            out["nested_offset"] = self.nested.offset
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of everything stored: codes, scales, zero points and the double-quantization level."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def bits_per_parameter(self) -> float:
        return 8.0 * self.nbytes / max(self.numel, 1)

    def to(self, device: torch.device | str) -> QuantizedTensor:
        """A copy with every tensor on ``device`` (metadata unchanged)."""
        if not isinstance(device, (torch.device, str, int)) or isinstance(device, bool):
            # a dtype here would turn the codes into floats (torch's Tensor.to takes either): the stored dtypes
            # are part of the format; dequantize() gives the weight in the dtype it came from
            raise ValueError(f"device: expected a torch.device or device string, got {device!r} (a "
                             "QuantizedTensor keeps its stored dtypes; use dequantize(qt).to(dtype))")
        nested = None
        if self.nested is not None:
            nested = replace(self.nested, absmax=self.nested.absmax.to(device),
                             offset=self.nested.offset.to(device))
        zeros = None if self.zeros is None else self.zeros.to(device)
        return replace(self, data=self.data.to(device), scales=self.scales.to(device), zeros=zeros, nested=nested)

    def metadata(self) -> dict[str, Any]:
        """JSON-able description (everything but the tensors)."""
        return {"scheme": self.scheme, "shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch."),
                "group_size": self.group_size, "granularity": self.granularity, "symmetric": self.symmetric,
                "nested_blocksize": None if self.nested is None else self.nested.blocksize}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(flat dict of tensors, JSON-able metadata); ``from_state_dict`` reverses it."""
        return dict(self.tensors()), self.metadata()

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> QuantizedTensor:
        """Rebuild from ``state_dict()`` output; a missing key or a tensor that does not fit gives ValueError."""
        try:
            scheme = metadata["scheme"]
            shape = tuple(int(s) for s in metadata["shape"])
            dtype_name = metadata["dtype"]
            group_size = metadata["group_size"]
            granularity = metadata["granularity"]
            symmetric = bool(metadata["symmetric"])
            nested_blocksize = metadata["nested_blocksize"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"metadata: expected the keys of QuantizedTensor.metadata(), got {metadata!r}") from e
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPE_NAMES:
            raise ValueError(f"metadata['dtype']: expected one of {sorted(_DTYPE_NAMES)}, got {dtype_name!r}")
        for key in ("data", "scales"):
            if key not in tensors:
                raise ValueError(f"tensors: missing {key!r} (have {sorted(tensors)})")
        nested = None
        if nested_blocksize is not None:
            if "nested_absmax" not in tensors or "nested_offset" not in tensors:
                raise ValueError(f"tensors: double quantization needs 'nested_absmax' and 'nested_offset', "
                                 f"have {sorted(tensors)}")
            if not isinstance(nested_blocksize, int) or isinstance(nested_blocksize, bool):
                raise ValueError(f"metadata['nested_blocksize']: expected an int or None, got {nested_blocksize!r}")
            nested = NestedScales(tensors["nested_absmax"], tensors["nested_offset"], nested_blocksize)
        qt = cls(data=tensors["data"], scales=tensors["scales"], zeros=tensors.get("zeros"), scheme=scheme,
                 shape=shape, dtype=_DTYPE_NAMES[dtype_name], group_size=group_size, granularity=granularity,
                 symmetric=symmetric, nested=nested)
        check_layout(qt)
        check_values(qt)
        return qt


def metadata_to_tensor(metadata: dict[str, Any]) -> torch.Tensor:
    """``metadata`` (``QuantizedTensor.metadata()``) as UTF-8 JSON bytes in a 1-D uint8 CPU tensor.

    A state dict holds only tensors, and the codes and scales alone do not say how to read them (NF4 and FP4
    codes, or two block sizes over the same number of blocks, have the same shapes and dtypes), so the format
    travels as a tensor beside them; bitsandbytes does the same for its 4-bit weights
    (``weight.quant_state.bitsandbytes__nf4``, ``bitsandbytes.utils.pack_dict_to_tensor``).
    """
    raw = json.dumps(metadata, sort_keys=True).encode("utf-8")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def metadata_from_tensor(t: object, name: str) -> dict[str, Any]:
    """Inverse of :func:`metadata_to_tensor`; ValueError naming ``name`` if ``t`` is not such a tensor."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a 1-D uint8 tensor of JSON (a quantization format marker), got {got}")
    try:
        meta = json.loads(bytes(t.detach().cpu().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{name}: the quantization format marker is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: the quantization format marker must be a JSON object, got {type(meta).__name__}")
    return meta


def metadata_mismatch(stored: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``"key: stored != expected"`` for each field of ``expected`` that ``stored`` gives another value."""
    return [f"{k}: {stored.get(k)!r} != {v!r}" for k, v in expected.items() if stored.get(k) != v]


def _expect(ok: bool, what: str, seen: object, expected: object) -> None:
    if not ok:
        raise ValueError(f"{what}: expected {expected}, got {seen}")


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    """(R, K): a tensor of ``shape`` seen as R rows of its last dimension K."""
    k = shape[-1] if shape else 1
    r = 1
    for s in shape[:-1]:
        r *= s
    return r, k


def check_layout(qt: QuantizedTensor) -> None:
    """Every tensor of ``qt`` has the dtype and shape its scheme and metadata imply (ValueError otherwise)."""
    _expect(qt.scheme in SCHEMES, "scheme", repr(qt.scheme), f"one of {SCHEMES}")
    _expect(qt.granularity in GRANULARITIES[qt.scheme], "granularity", repr(qt.granularity),
            f"one of {GRANULARITIES[qt.scheme]} for {qt.scheme}")
    _expect(len(qt.shape) >= 1 and all(s > 0 for s in qt.shape), "shape", qt.shape, "positive sizes")
    r, k = rows_cols(qt.shape)
    n = qt.numel
    g = qt.group_size
    if qt.granularity in ("group", "block"):
        _expect(isinstance(g, int) and not isinstance(g, bool) and g > 0, "group_size", repr(g), "a positive int")
        if qt.granularity == "block":
            _expect(g in FOUR_BIT_BLOCKSIZES, "group_size", g, f"one of {FOUR_BIT_BLOCKSIZES} for {qt.scheme}")
    else:
        _expect(g is None, "group_size", repr(g), f"None for granularity {qt.granularity!r}")
    if qt.scheme == "int8":
        _expect(qt.data.dtype == (torch.int8 if qt.symmetric else torch.uint8), "data.dtype", qt.data.dtype,
                "int8 (symmetric) or uint8 (zero point)")
        _expect(tuple(qt.data.shape) == (r, k), "data.shape", tuple(qt.data.shape), (r, k))
        groups = {"tensor": (1, 1), "channel": (r, 1), "group": (r, k // g if g else 0)}[qt.granularity]
        if qt.granularity == "group":
            _expect(k % g == 0, "group_size", g, f"a divisor of the last dimension {k}")
    elif qt.scheme == "int4":
        _expect(qt.data.dtype == torch.uint8, "data.dtype", qt.data.dtype, torch.uint8)
        _expect(k % 2 == 0 and k % g == 0, "group_size", g, f"an even divisor of the last dimension {k}")
        _expect(tuple(qt.data.shape) == (r, k // 2), "data.shape", tuple(qt.data.shape), (r, k // 2))
        groups = (r, k // g)
    else:
        _expect(qt.data.dtype == torch.uint8, "data.dtype", qt.data.dtype, torch.uint8)
        _expect(tuple(qt.data.shape) == ((n + 1) // 2,), "data.shape", tuple(qt.data.shape), ((n + 1) // 2,))
        groups = (-(-n // g),)
    if qt.nested is None:
        _expect(qt.scales.dtype == torch.float32, "scales.dtype", qt.scales.dtype, torch.float32)
    else:
        _expect(qt.scheme in ("nf4", "fp4"), "nested", "double quantization", "only for nf4 / fp4")
        _expect(qt.scales.dtype == torch.uint8, "scales.dtype", qt.scales.dtype, "uint8 codes (double quant)")
        nb = qt.nested.blocksize
        _expect(nb in FOUR_BIT_BLOCKSIZES and not isinstance(nb, bool), "nested.blocksize", repr(nb),
                f"one of {FOUR_BIT_BLOCKSIZES}")
        for name, t in (("nested.absmax", qt.nested.absmax), ("nested.offset", qt.nested.offset)):
            _expect(t.dtype == torch.float32, f"{name}.dtype", t.dtype, torch.float32)
        _expect(tuple(qt.nested.absmax.shape) == (-(-groups[0] // nb),), "nested.absmax.shape",
                tuple(qt.nested.absmax.shape), (-(-groups[0] // nb),))
        _expect(tuple(qt.nested.offset.shape) in ((), (1,)), "nested.offset.shape", tuple(qt.nested.offset.shape),
                "() or (1,)")
    _expect(tuple(qt.scales.shape) == groups, "scales.shape", tuple(qt.scales.shape), groups)
    needs_zeros = qt.scheme == "int4" or (qt.scheme == "int8" and not qt.symmetric)
    if needs_zeros:
        _expect(qt.zeros is not None and qt.zeros.dtype == torch.uint8 and tuple(qt.zeros.shape) == groups,
                "zeros", None if qt.zeros is None else (qt.zeros.dtype, tuple(qt.zeros.shape)),
                f"uint8 of shape {groups}")
    else:
        _expect(qt.zeros is None, "zeros", "a tensor", f"None for {qt.scheme} (symmetric={qt.symmetric})")


def check_values(qt: QuantizedTensor) -> None:
    """The stored values can stand for a weight (ValueError naming the tensor otherwise): finite float scales
    (a NaN / Inf scale, or a NaN double-quant level, turns whole groups of outputs into NaN) and int4 zero points
    in [0, 15] (a zero of 200 is a valid uint8 but no int4 grid's, as ``int4_from_codes`` says). For tensors read
    from outside (``from_state_dict``, so ``load_quantized``): ``quantize`` never makes such values, and this
    syncs with the host, so it is not run per forward."""
    for key, t in qt.tensors().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{key}: expected finite values, got {bad} NaN/Inf of {t.numel()}")
    if qt.scheme == "int4" and qt.zeros is not None and qt.zeros.numel() and int(qt.zeros.max()) > 15:
        raise ValueError(f"zeros: expected int4 zero points in [0, 15], got a maximum of {int(qt.zeros.max())}")


def check_weight(w: object, name: str = "w") -> torch.Tensor:
    """A finite float32 / float16 / bfloat16 tensor with at least one dimension, else ValueError."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}.dtype: expected one of {FLOAT_DTYPES}, got {w.dtype}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"{name}.shape: expected at least one dimension and one element, got {tuple(w.shape)}")
    if w.device.type == "meta":  # no values to quantize (a model built on the meta device, not yet loaded)
        raise ValueError(f"{name}: expected a tensor with values, got one on the meta device")
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf of {w.numel()}")
    return w


def range_scale(lo: torch.Tensor, hi: torch.Tensor, steps: int) -> torch.Tensor:
    """``(hi - lo) / steps`` in float32 (bit-identical to PyTorch's observers), recomputed in float64 where the
    float32 difference overflows: finite weights of both signs beyond about +-1.7e38 (an inf scale would
    dequantize every element of the group to NaN)."""
    s = (hi - lo) / steps
    return torch.where(torch.isfinite(s), s, ((hi.double() - lo.double()) / steps).float())


def to_weight_dtype(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float32 dequantized weight cast to ``dtype``; for float16 first clamped to its finite range: a code times
    its scale may land a rounding step past the largest weight (65504 -> 65760), which float16 would make inf."""
    if dtype == torch.float16:
        limit = torch.finfo(torch.float16).max
        w = w.clamp(-limit, limit)
    return w.to(dtype)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (..., 2m) into bytes (..., m): element 2j in the high nibble, 2j + 1 in the low."""
    c = codes.to(torch.uint8)
    return (c[..., 0::2] << 4) | c[..., 1::2]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_nibbles``: bytes (..., m) -> codes (..., 2m) uint8 (high nibble first)."""
    return torch.stack((packed >> 4, packed & 0xF), dim=-1).reshape(*packed.shape[:-1], -1)
