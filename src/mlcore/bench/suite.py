"""The suite runner behind ``python -m benchmarks``: discover topics, run them, write the report.

A topic is a module ``benchmarks/<name>.py`` with ``run(ctx) -> Iterable[Result]`` and optional
``PLOTS`` (list of ``Plot``), ``TABLES`` (list of ``Table``, how its section is split into narrow tables) and
``DESCRIPTION`` (one line under its heading). A topic that raises (or yields something other than a Result) is
recorded as failed; the others still run.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import traceback
from pathlib import Path
from types import ModuleType

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .probe import probe_machine
from .report import goal_rows, write_report
from .schema import Context, Plot, Result, Table

PRESETS = ("quick", "full")


class SuiteError(Exception):
    """A problem with how the suite was asked to run (reported as one line, exit code 2)."""


def discover(package: str = "benchmarks") -> list[str]:
    """Names of the topic modules in ``package`` (files not starting with an underscore).

    ``roofline`` runs first: it is closest in time to the probe and measures the bare machine before
    other topics have warmed caches or left threads behind.
    """
    pkg = importlib.import_module(package)
    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (n != "roofline", n))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SuiteError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    raise SuiteError(f"--device must be auto, cpu or cuda, got {name!r}")


def prepare_out_dir(base: Path) -> Path:
    """``base/<timestamp>``, created and proven writable before any benchmark runs."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = base / stamp
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe_file = out / ".write-test"
        probe_file.write_text("ok")
        probe_file.unlink()
    except OSError as exc:
        raise SuiteError(f"--out {base} is not writable: {exc.strerror or exc}") from None
    return out


def run_suite(
    names: list[str] | None = None,
    *,
    device: str = "auto",
    preset: str = "quick",
    out: Path = Path("reports"),
    package: str = "benchmarks",
    console: Console | None = None,
) -> Path:
    """Run the named topics (all when empty) and return the report folder."""
    console = console or Console()
    if preset not in PRESETS:
        raise SuiteError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    available = discover(package)
    names = names or available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SuiteError(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}")
    dev = resolve_device(device)
    out_dir = prepare_out_dir(Path(out))
    started = dt.datetime.now().isoformat(timespec="seconds")

    results: list[Result] = []
    failures: dict[str, str] = {}
    plots: dict[str, list[Plot]] = {}
    tables: dict[str, list[Table]] = {}
    descriptions: dict[str, str] = {}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("probing the machine", total=len(names) + 1)
        probe = probe_machine(dev, quick=preset == "quick")
        progress.advance(task)
        ctx = Context(device=dev, preset=preset, probe=probe, out_dir=out_dir)
        for name in names:
            progress.update(task, description=f"[bold]{name}[/bold]")
            try:
                module: ModuleType = importlib.import_module(f"{package}.{name}")
                plots[name] = list(getattr(module, "PLOTS", []))
                tables[name] = list(getattr(module, "TABLES", []))
                descriptions[name] = str(getattr(module, "DESCRIPTION", ""))
                for result in module.run(ctx):
                    if not isinstance(result, Result):  # kept, it would break the report of every topic
                        raise TypeError(f"{name}.run() yielded a {type(result).__name__}, not a Result: {result!r}")
                    results.append(result)
                    progress.update(task, description=f"[bold]{name}[/bold] {result.name} {result.params}")
            except Exception:  # a failing topic is reported, the suite goes on
                failures[name] = traceback.format_exc()
                console.print(f"[red]benchmark {name} failed[/red]: {traceback.format_exc(limit=1).splitlines()[-1]}")
            progress.advance(task)

    meta = {"preset": preset, "device": str(dev), "started": started, "names": names}
    report = write_report(out_dir, probe=probe, results=results, failures=failures, plots=plots, meta=meta,
                          tables=tables, descriptions=descriptions)
    status = f"{len(names) - len(failures)}/{len(names)} benchmarks ok"
    goals = goal_rows(results)
    if goals:
        status += f", {sum(g['met'] is True for g in goals)}/{len(goals)} goals met"
    console.print(f"[bold]{status}[/bold], {len(results)} results; report: {report}")
    return out_dir
