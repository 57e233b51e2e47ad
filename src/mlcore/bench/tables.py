"""Narrow Markdown tables for REPORT.md: a topic's results split into focused tables (``Table``).

Each table has the columns a reader needs to answer "is mlcore faster, and by how much": the implementation,
the params that vary within the table, the figure with its IQR in percent, the twin's figure, the speed-up over
the twin (> 1: mlcore faster or better), the extras the topic asks for and a ``note`` naming why a figure is
unreliable (fewer than 3 runs, IQR above 10 % of the median). Params that are the same on every row are printed
once above the table. Everything else stays in ``results.json``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .schema import TIME_UNITS, Result, Table, better_for_unit


def fmt(value: Any) -> str:
    """A number as a short string (thousands separators for ints, 4 significant digits for floats)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(float(f"{value:.4g}")) >= 1e4 or abs(value) < 1e-3:  # rounded: 9999.9 would print 1e+04
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if round(abs(n), 0 if unit == "B" else 1) < 1024 or unit == "GiB":  # rounded: no "1024.0 KiB"
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_seconds(seconds: float | None) -> str:
    """Seconds with a readable prefix: ``1.23 s``, ``45.6 ms``, ``789 µs``, ``12.0 ns``."""
    if seconds is None:
        return ""
    if math.isnan(seconds):
        return "nan"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_value(value: float | None, unit: str, *, with_unit: bool) -> str:
    """A figure in its unit; times always carry their (rescaled) unit."""
    if value is None:
        return ""
    if unit == "s":
        return fmt_seconds(value)
    return f"{fmt(value)} {unit}" if with_unit else fmt(value)


def fmt_speedup(value: float | None) -> str:
    if value is None:
        return ""
    return "nan" if math.isnan(value) else f"{value:.2f}×"


def _relative_spread(r: Result) -> str:
    if (not r.spread and r.runs is None) or (r.runs is not None and r.runs < 2):
        return ""  # not a timing (a quality score, a ceiling), or a single run: no spread to show
    return f"{100 * abs(r.spread / r.median):.0f}%" if r.median else ""


def _constant(results: list[Result], key: str) -> tuple[bool, Any]:
    """(True, value) when every result has param ``key`` with the same value."""
    values = [r.params.get(key, _ABSENT) for r in results]
    first = values[0]
    return (first is not _ABSENT and all(v == first for v in values)), first


_ABSENT = object()


def results_table(results: list[Result], table: Table | None = None) -> str:
    """One narrow Markdown table (with a one-line caption of what every row shares) for ``results``."""
    table = table or Table("")
    candidates: list[str] = []
    for r in results:
        candidates += [k for k in (table.params if table.params is not None else r.params) if k not in candidates]
    caption, param_cols = [], []
    for key in candidates:
        same, value = _constant(results, key)
        if same:
            if key not in table.where:  # the title already says what the table was filtered on
                caption.append(f"{key}={fmt(value)}")
        elif not all(r.params.get(key) == r.name for r in results):  # "impl" repeating the name adds nothing
            param_cols.append(key)
    dtypes = {r.dtype for r in results}
    if len(dtypes) == 1 and None not in dtypes:
        caption.append(f"dtype {dtypes.pop()}")
    show_dtype = len({r.dtype for r in results}) > 1
    twins = {r.twin for r in results if r.twin}
    if len(twins) == 1:
        caption.append(f"twin: {twins.pop()}")

    units = {r.unit for r in results}
    unit = units.pop() if len(units) == 1 else None
    per_cell_unit = unit is None
    value_head = "time" if unit == "s" else (unit or "value")
    has_spread = any(_relative_spread(r) for r in results)
    has_mem = any(r.memory_bytes is not None for r in results)
    has_twin = any(r.twin_median is not None for r in results)
    speed = all(better_for_unit(r.unit) for r in results if r.twin_median is not None)
    has_note = any(r.flags for r in results)

    header = ["name", *param_cols] + (["dtype"] if show_dtype else []) + [value_head]
    header += (["IQR"] if has_spread else []) + (["peak mem"] if has_mem else [])
    header += (["twin " + value_head if not per_cell_unit else "twin", "speed-up" if speed else "vs twin"]
               if has_twin else [])
    header += list(table.columns) + (["note"] if has_note else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        row = [r.name, *(fmt(r.params.get(k)) for k in param_cols)] + ([r.dtype or ""] if show_dtype else [])
        row += [fmt_value(r.median, r.unit, with_unit=per_cell_unit)]
        row += ([_relative_spread(r)] if has_spread else []) + ([fmt_bytes(r.memory_bytes)] if has_mem else [])
        if has_twin:
            row += [fmt_value(r.twin_median, r.unit, with_unit=per_cell_unit), fmt_speedup(r.speedup)]
        row += [fmt(r.extra.get(k, r.params.get(k))) for k in table.columns]
        row += (["⚠ " + ", ".join(r.flags) if r.flags else ""] if has_note else [])
        lines.append("| " + " | ".join(row) + " |")
    head = ([f"### {table.title}", ""] if table.title else [])
    head += ([f"All rows: {', '.join(caption)}.", ""] if caption else [])
    return "\n".join(head + lines)


def _default_group(r: Result) -> tuple[str | None, str | None, str]:
    """(param key, its value as text, unit) of the default table ``r`` lands in: by ``params["task"]`` (else
    ``params["mode"]``) and unit. Text, so that NaN, lists and sets group without being hashed or compared."""
    key = next((k for k in ("task", "mode") if k in r.params), None)
    return key, (str(r.params[key]) if key else None), str(r.unit)


def topic_tables(results: list[Result], tables: list[Table] | None) -> list[str]:
    """The Markdown tables of one topic: its declared ``tables``, then defaults for whatever they missed."""
    out: list[str] = []
    claimed: set[int] = set()
    for table in tables or []:
        rows = [r for r in results if table.matches(r)]
        claimed.update(id(r) for r in rows)
        if rows:
            out.append(results_table(rows, table))
    # the rest by task / mode and unit, in first-seen order: grouped directly rather than through
    # Table.matches, which a param named "unit" or a NaN value would keep from matching its own group
    groups: dict[tuple[str | None, str | None, str], list[Result]] = defaultdict(list)
    for r in results:
        if id(r) not in claimed:
            groups[_default_group(r)].append(r)
    for (key, value, unit), rows in groups.items():
        unit_name = "time" if unit in TIME_UNITS else unit
        title = "" if len(groups) == 1 else (f"{value} ({unit_name})" if key else unit_name)
        where = {"unit": unit, **({key: value} if key else {})}  # keys the title states, left out of the caption
        out.append(results_table(rows, Table(title or ("Other results" if tables else ""), where)))
    return out
