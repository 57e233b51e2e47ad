"""What a benchmark yields (``Result``), what it asks to be drawn (``Plot``) and what it is given (``Context``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .probe import Probe


@dataclass
class Result:
    """One implementation measured at one setting.

    ``ratio`` is mlcore's figure divided by the ecosystem twin's, in ``unit``, both measured in the
    same run: for seconds, 2.0 means mlcore takes twice as long; for MB/s, 2.0 means twice as fast.
    """

    benchmark: str
    name: str
    params: dict[str, Any]
    device: str
    dtype: str | None
    median: float
    spread: float
    unit: str = "s"
    memory_bytes: int | None = None
    twin: str | None = None
    twin_median: float | None = None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.params, dict):
            raise ValueError(f"params must be a dict, got {type(self.params).__name__}")
        if self.ratio is None and self.twin_median and not math.isnan(self.twin_median):
            self.ratio = self.median / self.twin_median

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plot:
    """A line plot of ``y`` against ``params[x]``, one line per value of ``params[series]``.

    ``series`` may also name a Result field ("dtype", "name"). ``y`` is "median", "memory_bytes",
    "ratio" or a key of ``Result.extra``; ``where`` keeps only the results whose params match every item.
    """

    name: str
    x: str
    y: str = "median"
    series: str = "impl"
    where: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    ylabel: str = ""
    logx: bool = False
    logy: bool = False


@dataclass
class Context:
    """Everything a benchmark module's ``run(ctx)`` may use."""

    device: torch.device
    preset: str
    probe: Probe
    out_dir: Path

    @property
    def quick(self) -> bool:
        return self.preset == "quick"
