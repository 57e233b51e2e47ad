"""``python -m benchmarks [NAMES...] --device auto|cpu|cuda --preset quick|full --out DIR``."""

from __future__ import annotations

import argparse
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
        run_suite(args.names, device=args.device, preset=args.preset, out=args.out)
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
