"""What a benchmark yields (``Result``, with optional ``Goal``s), how its section is laid out (``Table``,
``Plot``) and what it is given (``Context``).

Speed-up. Every result measured against an ecosystem twin in the same run carries ``speedup``, how many times
better mlcore is: ``twin / mlcore`` for figures where lower is better (seconds, bytes), ``mlcore / twin`` where
higher is better (MB/s, tokens/s, F2). Above 1 means mlcore is faster (or better); 0.5 means it takes twice as
long. The direction comes from ``unit`` (times and byte sizes: lower; anything per second: higher); for any other
unit with a twin, pass ``better="higher"`` or ``"lower"``. ``ratio`` (mlcore / twin in ``unit``, whatever the
direction) is kept in ``results.json`` for older readers but no longer shown.

Headline figures and goals. A result becomes a headline of its topic by carrying one or more ``Goal``s:

    Result(..., twin="transformers generate", twin_median=..., goal=Goal(">=", 1.25, "decode tok/s vs HF generate"))
    Result(..., extra={"frac_roofline": 0.9},
           goal=[Goal(">=", 1.25, "decode vs HF generate"),
                 Goal(">=", 0.85, "decode / roofline", metric="frac_roofline")])

``Goal.metric`` names the figure the goal is about: ``"speedup"`` (the default), ``"median"``, or a key of
``extra`` (metrics whose name starts with "speedup" are shown as ``1.32×``). ``REPORT.md`` opens with one row
per goal: the measured value, the goal, met / not met, and the noise flags of that result.

Noise flags. ``runs`` (how many timed measurements the median and IQR come from) and ``spread`` (their IQR, in
``unit``) flag a figure as unreliable when ``runs < MIN_RUNS`` (3) or ``spread / median > MAX_REL_SPREAD``
(0.10); the same holds for the twin through ``twin_runs`` / ``twin_spread``. Figures that are not timings (F2,
bytes per token, probed ceilings) leave ``runs`` at None and are never flagged for it. The easiest way to fill
all of this from :func:`mlcore.bench.time_fn` timings is :meth:`Result.from_timing`.

A goal carries the flags of the figures its metric rests on (:meth:`Result.flags_for`): ``speedup`` both
sides, ``median`` mlcore's alone. An ``extra`` figure is flagged like the whole result unless ``extra_runs``
names it: ``extra_runs={"speedup_vs_naive": 1}`` says it also rests on a baseline timed once (flagged),
``extra_runs={"memory_vs_naive": None}`` says it is not a timing at all (never flagged).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .probe import Probe
from .timing import Timing

MIN_RUNS = 3  # fewer timed runs than this: the median is one or two samples, flagged
MAX_REL_SPREAD = 0.10  # IQR above 10 % of the median: the machine was noisy, flagged
TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
SIZE_UNITS = ("B", "bytes", "KB", "MB", "GB", "KiB", "MiB", "GiB")
GOAL_OPS = (">=", ">", "<=", "<")


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (numpy scalars and 0-d tensors too), else None."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def better_for_unit(unit: str) -> str | None:
    """``"lower"`` for times ("s", "ms", "s/token") and sizes, ``"higher"`` for rates ("MB/s"), else None."""
    if unit in TIME_UNITS or unit.split("/")[0] in TIME_UNITS or unit in SIZE_UNITS:
        return "lower"
    if unit.endswith("/s"):
        return "higher"
    return None


@dataclass(frozen=True)
class Goal:
    """A target for one figure of a result: ``value op target``, e.g. ``Goal(">=", 1.25, "decode vs HF")``.

    ``metric`` is ``"speedup"`` (default), ``"median"`` or a key of the result's ``extra``; ``label`` is the
    line the summary table shows, so say what is compared and where ("flash / naive peak memory at T=2048").
    """

    op: str
    target: float
    label: str
    metric: str = "speedup"

    def __post_init__(self) -> None:
        if self.op not in GOAL_OPS:
            raise ValueError(f"Goal.op must be one of {GOAL_OPS}, got {self.op!r}")
        target = as_number(self.target)
        if target is None or math.isnan(target):
            raise ValueError(f"Goal.target must be a number, got {self.target!r}")
        object.__setattr__(self, "target", target)  # a numpy scalar would reach results.json as a string
        if not isinstance(self.label, str) or not self.label.strip():
            raise ValueError(f"Goal.label must be a non-empty string, got {self.label!r}")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"Goal.metric must be 'speedup', 'median' or a key of Result.extra, got {self.metric!r}")

    def value_of(self, result: Result) -> float | None:
        """The figure this goal is about in ``result`` (None when it was not measured)."""
        value = getattr(result, self.metric) if self.metric in ("speedup", "median") else result.extra.get(self.metric)
        return as_number(value)

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the goal; None when there is no value (or it is NaN or infinite)."""
        if value is None or not math.isfinite(value):  # inf comes from a division by a ~0 time: not a win
            return None
        return {">=": value >= self.target, ">": value > self.target, "<=": value <= self.target,
                "<": value < self.target}[self.op]

    def evaluate(self, result: Result) -> dict[str, Any]:
        """``asdict(self)`` plus the measured ``value`` and ``met``, as results.json stores it."""
        value = self.value_of(result)
        return {**asdict(self), "value": value, "met": self.met(value)}


@dataclass
class Result:
    """One implementation measured at one setting (see the module docstring for speed-up, goals and flags).

    ``median`` and ``spread`` (its interquartile range) are in ``unit``; ``twin_median`` / ``twin_spread`` are
    the ecosystem twin's, in the same unit and the same run. ``runs`` / ``twin_runs`` count timed measurements.
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
    runs: int | None = None
    twin_runs: int | None = None
    twin_spread: float | None = None
    better: str | None = None
    speedup: float | None = None
    goal: Goal | Sequence[Goal] | None = None
    extra_runs: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("params", "extra", "extra_runs"):  # extra=None failed later, inside the report's tables
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        self.device = str(self.device)
        if not isinstance(self.unit, str) or not self.unit:
            raise TypeError(f"Result.unit must be a non-empty string such as 's' or 'tokens/s', got {self.unit!r}")
        for name in ("median", "spread", "twin_median", "twin_spread"):  # numpy / 0-d tensor figures -> float
            value = getattr(self, name)
            number = as_number(value)
            if number is None and (value is not None or name in ("median", "spread")):
                # a string figure ("1.5") was kept as text and compared as text; None has no speed-up or flag
                optional = "" if name in ("median", "spread") else " or None"
                raise TypeError(f"Result.{name} must be a real number{optional} (NaN for not measured), got {value!r}")
            setattr(self, name, number)
        for name in ("runs", "twin_runs"):
            runs = getattr(self, name)
            if runs is not None and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 0):
                raise TypeError(f"Result.{name} must be a non-negative int (timed measurements) or None, got {runs!r}")
        if self.ratio is None and self.twin_median and not math.isnan(self.twin_median):
            self.ratio = self.median / self.twin_median
        if self.better is None:
            self.better = better_for_unit(self.unit)
        elif self.better not in ("lower", "higher"):
            raise ValueError(f"Result.better must be 'lower', 'higher' or None, got {self.better!r}")
        if self.speedup is None and self.twin_median is not None:
            if self.better is None:
                raise ValueError(f"Result {self.benchmark}/{self.name}: unit {self.unit!r} has a twin but no known "
                                 "direction; pass better='higher' or better='lower'")
            self.speedup = _speedup(self.median, self.twin_median, self.better)
        goals = (self.goal,) if isinstance(self.goal, Goal) else tuple(self.goal or ())
        if not all(isinstance(g, Goal) for g in goals):
            raise ValueError(f"Result.goal must be a Goal, a list of Goals or None, got {self.goal!r}")
        self.goal = goals[0] if len(goals) == 1 else (goals or None)

    @property
    def goals(self) -> tuple[Goal, ...]:
        """The result's goals as a tuple (empty when it is not a headline figure)."""
        return (self.goal,) if isinstance(self.goal, Goal) else tuple(self.goal or ())

    @property
    def flags(self) -> list[str]:
        """Why this figure is unreliable: too few runs or a wide IQR (of mlcore's figure or the twin's)."""
        return _noise("", self.runs, self.spread, self.median) + _noise("twin ", self.twin_runs, self.twin_spread,
                                                                        self.twin_median)

    def flags_for(self, metric: str) -> list[str]:
        """The flags of the figures a goal on ``metric`` rests on (see the module docstring)."""
        if metric == "median":
            return _noise("", self.runs, self.spread, self.median)
        if metric in self.extra_runs:
            runs = self.extra_runs[metric]
            if runs is None:  # not a timing: a timing's IQR says nothing about it
                return []
            return _noise("", self.runs, self.spread, self.median) + _noise("baseline ", runs, None, None)
        return self.flags

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("goal")
        data["goals"] = [g.evaluate(self) for g in self.goals]
        data["flags"] = self.flags
        return data

    @classmethod
    def from_timing(
        cls,
        benchmark: str,
        name: str,
        params: dict[str, Any],
        *,
        device: torch.device | str,
        dtype: str | None,
        timing: Timing,
        twin: str | None = None,
        twin_timing: Timing | None = None,
        work: float | None = None,
        unit: str | None = None,
        **kwargs: Any,
    ) -> Result:
        """A result from :func:`time_fn` timings of mlcore and (optionally) its twin, with runs and spreads filled.

        Without ``work`` the figure is seconds per call. With ``work`` (tokens, bytes, ... per call) it is the
        rate ``work / seconds`` in ``unit`` (say ``"tokens/s"``); its IQR is ``work * IQR_s / median_s^2``.
        ``kwargs`` go to the constructor (``memory_bytes``, ``extra``, ``goal``, ...).
        """
        if (twin is None) != (twin_timing is None):
            raise ValueError(f"twin and twin_timing go together, got twin={twin!r} and twin_timing={twin_timing!r}")
        if work is not None and (as_number(work) is None or not 0 < work < math.inf or unit is None):
            raise ValueError(f"work must be a finite number > 0 (amount done per call) and come with a rate unit "
                             f"such as 'tokens/s', got work={work!r}, unit={unit!r}")
        if work is None and unit not in (None, "s"):
            raise ValueError(f"without work the figure is seconds per call: unit must be 's' or None, got {unit!r}")
        for arg, t in (("timing", timing), ("twin_timing", twin_timing)):
            if t is None and arg == "twin_timing":
                continue
            if not isinstance(t, Timing):
                raise TypeError(f"{arg} must be a mlcore.bench.Timing (from time_fn), got {type(t).__name__}")
            # a rate work / 0 s raised ZeroDivisionError, and work / 1e-320 s reached the report as an "inf×" win
            if work is not None and not (0 < t.median < math.inf and work / t.median < math.inf):
                raise ValueError(f"{arg}.median must be finite and > 0 seconds to give a rate, got {t.median!r}")

        def figure(t: Timing) -> tuple[float, float]:
            return (t.median, t.iqr) if work is None else (work / t.median, work * t.iqr / t.median**2)

        median, spread = figure(timing)
        twin_median, twin_spread = figure(twin_timing) if twin_timing is not None else (None, None)
        return cls(benchmark, name, params, str(device), dtype, median, spread,
                   unit=unit or "s", twin=twin, twin_median=twin_median,
                   runs=timing.runs, twin_runs=twin_timing.runs if twin_timing else None, twin_spread=twin_spread,
                   **kwargs)


def _noise(who: str, runs: int | None, spread: float | None, median: float | None) -> list[str]:
    out = []
    if runs is not None and runs < MIN_RUNS:
        out.append(f"{who}{runs} run{'s' if runs != 1 else ''}")
    if spread and median:
        rel = abs(spread / median)
        if not rel <= MAX_REL_SPREAD:  # "not <=": a NaN spread is flagged too
            out.append(f"{who}IQR {100 * rel:.0f}%")
    return out


def _speedup(median: float, twin_median: float, better: str) -> float | None:
    """How many times better mlcore is than the twin (> 1: mlcore faster / better); None when undefined: a zero
    denominator, an infinite figure or an infinite quotient ("inf×" would read as a win where a time was ~0 or a
    rate infinite). NaN stays NaN (a figure that was not measured)."""
    num, den = (twin_median, median) if better == "lower" else (median, twin_median)
    if den == 0 or math.isinf(num) or math.isinf(den):
        return None
    speedup = num / den
    return None if math.isinf(speedup) else speedup


@dataclass(frozen=True)
class Table:
    """One focused table in a topic's section of REPORT.md (declare a list of them as ``TABLES``).

    ``where`` keeps the results whose params (or, for keys that are not params, Result fields such as "name"
    or "unit") equal every item; a tuple / list / set value means "any of". ``params`` lists the params that
    may become columns (default: every param that varies within the table); ``columns`` lists keys of
    ``extra`` to show. Params that are the same on every row are printed once above the table instead of as
    columns, and a topic's results that no table matches land in an extra table, so nothing is lost.
    """

    title: str
    where: dict[str, Any] = field(default_factory=dict)
    params: tuple[str, ...] | None = None
    columns: tuple[str, ...] = ()

    def matches(self, result: Result) -> bool:
        for key, want in self.where.items():
            have = result.params[key] if key in result.params else getattr(result, key, _MISSING)
            if have is _MISSING:
                return False
            if isinstance(want, (tuple, list, set, frozenset)) and not isinstance(have, (tuple, list)):
                if not any(have == w for w in want):  # not "in": an unhashable param value would raise
                    return False
            elif have != want:
                return False
        return True


_MISSING = object()


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
