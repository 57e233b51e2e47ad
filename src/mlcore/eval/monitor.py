"""A small drift monitor: rolling windows over a stream of records, PSI against a reference, alerts.

    monitor = DriftMonitor({"intent": ref_intents, "length": ref_lengths}, categorical=["intent"],
                           window=200, threshold=0.2, callback=print)
    for record in stream:                      # record = {"intent": "fraud_report", "length": 14}
        events = monitor.observe(record)       # DriftEvents raised by this record (usually none)

Each feature keeps the last ``window`` values. Every ``every`` records, once a window holds ``min_samples``
values, the monitor computes the PSI (``mlcore.eval.drift.psi``: quantile bins of the reference for numbers,
one bin per category for ``categorical`` features) of the window against the reference. When a feature's PSI
rises above its threshold the monitor emits one ``DriftEvent(kind="alert")`` and calls ``callback``; it
stays silent while the feature stays above, and emits ``kind="recovered"`` when it falls back to or below
the threshold (hysteresis-free re-arming). ``history`` keeps ``(n_seen, {feature: psi})`` for plotting.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from mlcore.eval.drift import PSI_EPS, check_eps, histograms, psi_from_shares


@dataclass(frozen=True)
class DriftEvent:
    """``feature`` crossed ``threshold`` (``kind`` "alert" upwards, "recovered" back) with ``value`` after
    ``n_seen`` records."""

    kind: str
    feature: str
    value: float
    threshold: float
    n_seen: int


class DriftMonitor:
    """Rolling-window PSI per feature against a reference sample, with threshold alerts (module docstring).

    Args:
        reference: feature name -> reference sample (at least ``min_samples`` values each).
        window: records kept per feature; ``min_samples``: fewest values a check accepts (else no check, and
            :meth:`check` raises); ``every``: records between checks (default ``window // 10``, at least 1).
        threshold: the PSI alert level (0.2 by default), or per feature with ``thresholds``.
        categorical: features whose values are categories; ``bins``: quantile bins for numeric features.
        callback: called with each ``DriftEvent`` as it happens.
    """

    def __init__(self, reference: Mapping[str, Sequence[Any]], *, window: int = 200, min_samples: int = 50,
                 every: int | None = None, threshold: float = 0.2, thresholds: Mapping[str, float] | None = None,
                 categorical: Iterable[str] = (), bins: int = 10, eps: float = PSI_EPS,
                 callback: Callable[[DriftEvent], Any] | None = None) -> None:
        if not isinstance(reference, Mapping):
            raise ValueError(f"reference must map feature names to reference samples (a dict), got "
                             f"{type(reference).__name__}")
        if not reference:
            raise ValueError("reference must name at least one feature, got none")
        for name, value in (("window", window), ("min_samples", min_samples), ("bins", bins)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "bins" else 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if min_samples > window:
            raise ValueError(f"min_samples={min_samples} exceeds window={window}: no window could ever be checked")
        self.every = max(window // 10, 1) if every is None else every
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if isinstance(categorical, str):  # set("intent") would be {"i", "n", "t", "e"}
            raise ValueError(f"categorical must be a collection of feature names, got the str {categorical!r}; "
                             "wrap it in a list")
        self.categorical = set(categorical)
        unknown = self.categorical - set(reference)
        if unknown:
            raise ValueError(f"categorical names features {sorted(unknown)} missing from reference {sorted(reference)}")
        self.thresholds = {f: self._threshold("threshold", threshold) for f in reference}
        for f, t in (thresholds or {}).items():
            if f not in reference:
                raise ValueError(f"thresholds names feature {f!r}, not in reference {sorted(reference)}")
            self.thresholds[f] = self._threshold(f"thresholds[{f!r}]", t)
        self.window, self.min_samples, self.bins, self.eps = window, min_samples, bins, check_eps(eps)
        self.reference = {f: list(v) for f, v in reference.items()}
        for f, values in self.reference.items():
            if len(values) < min_samples:
                raise ValueError(f"reference[{f!r}] needs at least min_samples={min_samples} values, got {len(values)}")
            for v in values:  # every value, once: a bad one would otherwise surface at the first check, mid-stream
                self._check_value(f, v, where=f"reference[{f!r}]")
        self.callback = callback
        self.windows: dict[str, deque[Any]] = {f: deque(maxlen=window) for f in reference}
        self.alarmed = {f: False for f in reference}
        self.n_seen = 0
        self.history: list[tuple[int, dict[str, float]]] = []
        self.events: list[DriftEvent] = []

    @staticmethod
    def _threshold(name: str, value: Any) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not value > 0:
            raise ValueError(f"{name} must be a number > 0 (a PSI level; inf: never alert), got {value!r}")
        return float(value)

    def _check_value(self, feature: str, value: Any, where: str = "") -> None:
        where = where or f"feature {feature!r}"
        if feature in self.categorical:
            if value is None or (isinstance(value, Real) and math.isnan(value)):
                raise ValueError(f"{where} holds a None / NaN category")
        # numbers.Real takes NumPy's ints and floats (a reference read from an array), as psi does
        elif isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{where} must hold finite numbers, got {value!r}")

    def check(self) -> dict[str, float]:
        """PSI of every feature's current window against its reference; ValueError below ``min_samples``."""
        out = {}
        for f, values in self.windows.items():
            if len(values) < self.min_samples:
                raise ValueError(f"window of feature {f!r} holds {len(values)} values, fewer than "
                                 f"min_samples={self.min_samples}: too few for a stable PSI")
            r, c, _ = histograms(self.reference[f], list(values), bins=self.bins, categorical=f in self.categorical)
            out[f] = psi_from_shares(r, c, eps=self.eps)
        return out

    def observe(self, record: Mapping[str, Any]) -> list[DriftEvent]:
        """Add one record (feature -> value, every reference feature present); return the events it raised."""
        missing = set(self.windows) - set(record)
        if missing:
            raise ValueError(f"record lacks features {sorted(missing)}; expected {sorted(self.windows)}")
        for f in self.windows:
            self._check_value(f, record[f])
        for f in self.windows:
            self.windows[f].append(record[f])
        self.n_seen += 1
        if self.n_seen % self.every or min(len(w) for w in self.windows.values()) < self.min_samples:
            return []
        scores = self.check()
        self.history.append((self.n_seen, scores))
        events = []
        for f, value in scores.items():
            above = value > self.thresholds[f]
            if above != self.alarmed[f]:
                self.alarmed[f] = above
                events.append(DriftEvent("alert" if above else "recovered", f, value, self.thresholds[f],
                                         self.n_seen))
        for e in events:
            self.events.append(e)
            if self.callback is not None:
                self.callback(e)
        return events

    def extend(self, records: Iterable[Mapping[str, Any]]) -> list[DriftEvent]:
        """``observe`` each record in turn; all events raised."""
        return [e for r in records for e in self.observe(r)]

    def series(self, feature: str) -> list[tuple[int, float]]:
        """``(n_seen, psi)`` of ``feature`` at every check so far (for ``plots.stream_plot``)."""
        if feature not in self.windows:
            raise ValueError(f"feature must be one of {sorted(self.windows)}, got {feature!r}")
        return [(n, s[feature]) for n, s in self.history]
