"""Benchmark harness: timing, memory, machine probe, roofline, result schema and report writer.

Used by the suite in ``benchmarks/`` (``python -m benchmarks``); depends on nothing else in mlcore.
"""

from .memory import peak_memory
from .probe import Probe, describe_machine, probe_machine
from .report import write_report
from .roofline import roofline
from .schema import Context, Goal, Plot, Result, Table
from .suite import SuiteError, discover, run_suite
from .timing import Timing, time_fn

__all__ = [
    "Context",
    "Goal",
    "Plot",
    "Probe",
    "Result",
    "SuiteError",
    "Table",
    "Timing",
    "describe_machine",
    "discover",
    "peak_memory",
    "probe_machine",
    "roofline",
    "run_suite",
    "time_fn",
    "write_report",
]
