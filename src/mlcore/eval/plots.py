"""Matplotlib figures for the evaluation tables (object API only: never pyplot state, never ``matplotlib.use``)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


def line_plot(table: Any, *, x: str, y: str, group: str, vline: float | None = None, ax: Any = None,
              xlabel: str = "", ylabel: str = "", title: str = "", logy: bool = False) -> Figure:
    """One line per value of ``group`` in a tidy table (pandas DataFrame); a dashed vertical line at ``vline``."""
    if ax is None:
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    for name, part in table.groupby(group, sort=False):
        ax.plot(part[x], part[y], marker="o", markersize=3, label=str(name))
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1, label=f"trained length {vline:g}")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def stream_plot(values: Any, *, threshold: float, alerts: Any = (), xlabel: str = "observations seen",
                ylabel: str = "PSI", title: str = "Drift over a stream") -> Figure:
    """A monitored statistic over a stream (``values``: (n_seen, value) pairs), its threshold and alerts."""
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    if len(values):
        xs, ys = zip(*values)
        ax.plot(xs, ys, marker=".", label=ylabel)
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for i, a in enumerate(alerts):
        ax.axvline(a, color="orange", linewidth=1, label="alert" if i == 0 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
