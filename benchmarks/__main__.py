"""``python -m benchmarks [NAMES...] --device auto|cpu|cuda --preset quick|full --out DIR``.

Exit code 0 when every topic ran, 1 when any failed (the report is written all the same), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlcore.bench import SuiteError, discover, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"topics to run (default: all of {', '.join(discover())})")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    parser.add_argument("--preset", default="quick", help="quick (minutes on 2 CPU cores) or full")
    parser.add_argument("--out", default="reports", type=Path, help="parent folder of the timestamped report")
    args = parser.parse_args(argv)
    try:
        out_dir = run_suite(args.names, device=args.device, preset=args.preset, out=args.out)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # the report is written either way; a failed topic must still fail the command (CI, scripts)
    failed = sorted(json.loads((out_dir / "results.json").read_text())["failures"])
    if failed:
        print(f"error: {len(failed)} benchmark(s) failed: {', '.join(failed)} (see {out_dir / 'REPORT.md'})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
